"""Run-folder lock, --force of one stage, non-finite state never written or used, node ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from proca.cli import app
from proca.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path_factory.mktemp("r2") / "data"
    write_synthetic_datasets(root, seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    return root


def _train(data: Path, out: Path, *extra: str) -> Any:
    args = ["train", "--data-root", str(data), "--out", str(out), "--arch", "deeplabv2_resnet18"]
    args += ["--input-size", "32x64", "--iters", "1", "--batch-size", "2", "--device", "cpu"]
    args += ["--set", "num_workers=0", "--set", "source.class_balanced=false", "--set", "proca.class_balanced=false"]
    return CliRunner().invoke(app, [*args, *extra])


def test_a_live_run_folder_is_refused_and_a_stale_lock_taken_over(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / ".proca.lock").write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        for extra in ((), ("--resume",), ("--force",)):
            result = _train(data, out, "--stage", "source", *extra)
            assert result.exit_code == 2 and f"in use by process {owner.pid}" in result.output, result.output
        assert not (out / "source.safetensors").exists()
    finally:
        owner.kill()
        owner.wait()
    result = _train(data, out, "--stage", "source")  # the owner is gone: its lock is stale
    assert result.exit_code == 0, result.output
    assert (out / "source.safetensors").is_file() and not (out / ".proca.lock").exists()


def test_a_failed_start_leaves_no_folder(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "new"
    result = _train(data, out, "--set", "proca.temperature=-1")
    assert result.exit_code == 2 and not out.exists()


def test_force_of_one_stage_keeps_what_it_reads(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _train(data, out).exit_code == 0
    before = (out / "source.safetensors").stat().st_mtime_ns
    result = _train(data, out, "--stage", "proca", "--force")
    assert result.exit_code == 0, result.output
    assert (out / "source.safetensors").stat().st_mtime_ns == before  # the input of the stage is kept
    assert (out / "prototypes.safetensors").is_file() and (out / "proca.safetensors").is_file()
    assert not (out / "pseudo_labels").exists() and not (out / "ssl.safetensors").exists()  # later stages cleared
    assert set(json.loads((out / "results.json").read_text())) == {"source", "prototypes", "proca"}


def test_non_finite_weights_are_never_written_nor_used(tmp_path: Path, data: Path) -> None:
    from safetensors.torch import save_file

    from proca.engine.state import save_training_state
    from proca.models import build_model, save_model

    model = build_model("deeplabv2_resnet18", num_classes=19)
    good = tmp_path / "good.safetensors"
    save_model(model, good, metadata={"class_set": "cityscapes19", "eval_input_size": [32, 64]})
    with torch.no_grad():
        model.classifier.conv2d_list[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_model(model, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(CheckpointError, match="non-finite"):
        save_training_state(tmp_path / "s.safetensors", model=model, optimizer=torch.optim.SGD(model.parameters()),
                            info={"iteration": 1})  # fmt: skip
    assert not (tmp_path / "s.safetensors").exists()
    # a file holding NaN written by other means is refused for prediction
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        meta = handle.metadata()
    key = next(k for k in tensors if k.endswith("conv2d_list.0.weight"))
    tensors[key][0, 0, 0, 0] = float("inf")
    poisoned = tmp_path / "poisoned.safetensors"
    save_file(tensors, str(poisoned), metadata=meta)
    result = CliRunner().invoke(app, ["eval", str(poisoned), "--data-root", str(data), "--device", "cpu"])
    assert result.exit_code == 2 and "NaN or infinite" in result.output, result.output


def test_node_rank_must_fit_the_node_count() -> None:
    from proca.engine.launch import torchrun_command

    with pytest.raises(ConfigError, match=r"node ranks are 0 \.\. 1"):
        torchrun_command(["{}"], nproc_per_node=1, nnodes=2, node_rank=2, rdzv_endpoint="h:1")


def test_a_missing_weights_file_is_refused_before_anything_is_written(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(data, out, "--backbone-weights", str(tmp_path / "resnet18-missing.pth"))
    assert result.exit_code == 2 and "no such file" in result.output
    assert not out.exists()  # the retry is not refused by a config.json left behind
