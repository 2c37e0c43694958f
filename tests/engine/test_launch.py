"""torchrun self-launch: the command line, its errors, and the whole recipe under ``--nproc 2`` on CPU (gloo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from proca.cli import app
from proca.engine.launch import in_torchrun, torchrun_command
from proca.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")


def test_torchrun_command_single_and_multi_node() -> None:
    cmd = torchrun_command(["{}"], nproc_per_node=4, python="python")
    assert cmd[:5] == ["python", "-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone"]
    assert cmd[-3:] == ["-m", "proca.engine.worker", "{}"]
    multi = torchrun_command([], nproc_per_node=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500", python="py")
    assert "--nnodes=2" in multi and "--node-rank=1" in multi and "--master-addr=node0" in multi
    assert "--master-port=29500" in multi and "--standalone" not in multi
    with pytest.raises(ConfigError, match="rdzv-endpoint"):
        torchrun_command([], nproc_per_node=1, nnodes=2)
    with pytest.raises(ConfigError, match="host:port"):
        torchrun_command([], nproc_per_node=1, nnodes=2, rdzv_endpoint="node0")


def test_workers_get_the_run_options_not_a_rebuilt_command_line(tmp_path: Path) -> None:
    from proca.engine.train import RunOptions

    run = RunOptions(data_root=Path("d"), out=Path("o"), stage="proca", backbone_weights=None, resume=True)
    assert RunOptions.from_json(run.to_json()) == run
    cmd = torchrun_command([run.to_json()], nproc_per_node=2, python="python")
    assert cmd[-3:-1] == ["-m", "proca.engine.worker"] and json.loads(cmd[-1])["resume"] is True
    assert not any(part.startswith("--set") or part == "--seed" for part in cmd)
    assert not in_torchrun() or "LOCAL_RANK" in os.environ


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_gpus_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--gpus", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
    both = CliRunner().invoke(app, ["train", "--gpus", "1", "--nproc", "2", "--out", str(tmp_path / "r")])
    assert both.exit_code == 2 and "exclude each other" in both.output


@pytest.mark.slow
@pytest.mark.distributed
def test_whole_recipe_with_nproc_2_on_cpu_and_the_result_evaluates(tmp_path: Path) -> None:
    from proca.data.synthetic import write_synthetic_datasets

    synth = tmp_path / "synth"
    write_synthetic_datasets(synth, seed=2, num_train=4, num_val=2, size=(32, 64), progress=False)
    run = tmp_path / "run"
    args = [
        "train", "--nproc", "2", "--data-root", str(synth), "--out", str(run), "--arch", "deeplabv2_resnet18",
        "--input-size", "32x64", "--iters", "2", "--batch-size", "4", "--set", "num_workers=0",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("source", "prototypes", "proca", "ssl"):
        assert (run / f"{name}.safetensors").is_file()
    events = [json.loads(x) for x in (run / "proca.log.jsonl").read_text().splitlines()]
    assert {"event": "prototypes_synced", "iteration": 2, "identical": True} in events
    report = tmp_path / "eval.json"
    evaluated = CliRunner().invoke(
        app,
        ["eval", str(run / "ssl.safetensors"), "--data-root", str(synth / "cityscapes"), "--device", "cpu",
         "--input-size", "32x64", "--json", str(report)],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert 0 <= json.loads(report.read_text())["miou"] <= 100
