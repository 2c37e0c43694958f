"""``proca train --method memory-bank``: config, the stage, AMP, exact resume after SIGKILL, and ``--nproc 2``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from proca.cli import app
from proca.config import TrainConfig, resolve_config
from proca.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

CONFIG = """
num_workers = 0
log_every = 1
checkpoint_every = 2
[source]
iters = 2
poly_iters = 2
[proca]
iters = 4
poly_iters = 4
[eval]
max_images = 1
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One thread: the subprocesses run with OMP_NUM_THREADS=1 (the same kernels, the same sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny synthetic data and a run folder whose source stage is done (2 iterations)."""
    from proca.data.synthetic import write_synthetic_datasets
    from tests.engine._train import train as run_train

    root = tmp_path_factory.mktemp("mb")
    synth = root / "synth"
    write_synthetic_datasets(synth, seed=0, size=(32, 64), num_train=8, num_val=4, progress=False)
    config = root / "tiny.toml"
    config.write_text(CONFIG)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_train(stage="source", **_kwargs(synth, root / "base", config))
    finally:
        torch.set_num_threads(threads)
    return {"synth": synth, "config": config, "run": root / "base"}


def _kwargs(synth: Path, out: Path, config: Path) -> dict[str, Any]:
    return {
        "data_root": synth, "out": out, "arch": "deeplabv2_resnet18", "input_size": (32, 64), "batch_size": 2,
        "device": "cpu", "config": config, "progress": False,
    }  # fmt: skip


def _cli_args(base: dict[str, Path], run: Path, *extra: str) -> list[str]:
    return [
        "train", "--data-root", str(base["synth"]), "--out", str(run), "--arch", "deeplabv2_resnet18",
        "--input-size", "32x64", "--batch-size", "2", "--device", "cpu", "--config", str(base["config"]), *extra,
    ]  # fmt: skip


def _copy_base(base: dict[str, Path], dst: Path) -> Path:
    shutil.copytree(base["run"], dst)
    return dst


def _steps(run: Path) -> list[dict[str, Any]]:
    return [r for r in (json.loads(x) for x in (run / "proca.log.jsonl").read_text().splitlines()) if "event" not in r]


def test_config_section_defaults_validation_and_resume_refuses_another_method(tmp_path: Path) -> None:
    from proca.engine.runfolder import check_resume_config as _check_resume_config

    cfg = resolve_config(method="memory-bank", overrides=["proca.memory_bank.temperature=0.2"])
    mb = cfg.proca.memory_bank
    assert cfg.method == "memory-bank" and mb.temperature == 0.2
    assert (mb.pixel_queue_size, mb.prototype_queue_size, mb.pixels_per_class) == (1000, 1000, 10)
    assert (mb.max_anchors_per_class, mb.min_pixels_per_class, mb.embedding_dim, mb.hidden_dim) == (10, 11, 256, 2048)
    assert (mb.denominator, mb.base_temperature, mb.lambda_source, mb.lambda_target) == ("all", None, 1.0, 1.0)
    assert TrainConfig().proca.memory_bank == resolve_config().proca.memory_bank  # preset == model defaults
    assert resolve_config().method == "prototype"
    with pytest.raises(ConfigError, match=r"did you mean 'proca\.memory_bank\.temperature'"):
        resolve_config(overrides=["proca.memory_bank.temprature=0.2"])
    with pytest.raises(ConfigError, match=r"proca\.memory_bank\.pixel_queue_size"):
        resolve_config(overrides=["proca.memory_bank.pixel_queue_size=0"])
    with pytest.raises(ConfigError, match="method"):
        resolve_config(method="memory_bank")
    (tmp_path / "config.json").write_text(json.dumps(resolve_config().model_dump(mode="json")))
    with pytest.raises(ConfigError, match="changed: method"):
        _check_resume_config(tmp_path, resolve_config(method="memory-bank"))


def test_losses_export_the_memory_bank_names() -> None:
    import proca.losses as losses

    for name in ("MemoryBank", "MemoryBankContrastiveLoss", "ProjectionHead", "memory_bank_contrastive_loss",
                 "sample_anchors"):  # fmt: skip
        assert name in losses.__all__ and getattr(losses, name) is not None


class TinyNet(nn.Module):
    """A two-conv segmenter with the DeepLabV2 interface."""

    def __init__(self, num_classes: int = 4, feature_dim: int = 6) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, feature_dim, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.relu(self.backbone(x))
        return f, self.classifier(f)


def test_step_runs_under_bf16_autocast_and_fills_the_bank() -> None:
    from proca.engine.schedule import plan_batch
    from proca.engine.setup import FeaturesForward
    from proca.engine.stages.memory_bank import memory_bank_train_step
    from proca.engine.trainer import StepContext
    from proca.losses import MemoryBank, MemoryBankContrastiveLoss, ProjectionHead

    torch.manual_seed(0)
    model, head = TinyNet(), ProjectionHead(6, 8, 4)
    bank = MemoryBank(4, 4, pixel_queue_size=50, prototype_queue_size=5, pixels_per_class=3)
    section = resolve_config(method="memory-bank", overrides=["proca.memory_bank.min_pixels_per_class=2"]).proca
    params = list(model.parameters()) + list(head.parameters())
    sc = StepContext(
        net=FeaturesForward(model, head),
        model=model,
        optimizer=torch.optim.SGD(params, lr=0.01),
        plan=plan_batch(2, 1, 0, 1),  # two micro-batches: the enqueue happens once, after the step
        amp="bf16",
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        channels_last=False,
        device=torch.device("cpu"),
    )
    deps = {"cfg": section, "bank": bank, "criterion": MemoryBankContrastiveLoss(0.1, min_pixels_per_class=2),
            "generator": torch.Generator(), "step": torch.zeros(1, dtype=torch.long), "seed": 0}  # fmt: skip
    with sc.autocast():
        _, logits, emb = sc.net(torch.randn(1, 3, 16, 16))
    assert logits.dtype == torch.bfloat16 and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1, 8, 8))

    def pair() -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        src = {"image": torch.randn(1, 3, 16, 16), "label": torch.randint(0, 4, (1, 16, 16))}
        return src, {"image": torch.randn(1, 3, 16, 16)}

    before = [p.detach().clone() for p in head.parameters()]
    for _ in range(3):
        result = memory_bank_train_step(sc, [pair(), pair()], **deps)
        assert result.skipped is None and set(result.losses) >= {"ce", "lovasz", "mb_src", "mb_tgt", "total"}
        assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    assert int(deps["step"]) == 3 and int(bank.pixel_filled.sum()) > 0
    assert result.losses["mb_src"] > 0  # the bank holds entries from the first step on
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))  # the head trains


def test_memory_bank_stage_through_the_cli(base: dict[str, Path], tmp_path: Path) -> None:
    from proca.models import load_model

    run = _copy_base(base, tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(app, _cli_args(base, run, "--stage", "prototypes", "--method", "memory-bank"))
    assert result.exit_code == 0 and "not needed" in result.output, result.output
    assert not (run / "prototypes.safetensors").exists()
    result = runner.invoke(app, _cli_args(base, run, "--stage", "proca", "--method", "memory-bank"))
    assert result.exit_code == 0, result.output
    ckpt = load_model(run / "proca.safetensors")  # the segmentation model only: head and bank are training state
    assert ckpt.prototypes == {} and ckpt.metadata["config"]["method"] == "memory-bank"
    assert not any(k.startswith(("head.", "projection")) for k in ckpt.model.state_dict())
    steps = _steps(run)
    assert [r["iteration"] for r in steps] == [1, 2, 3, 4]
    assert {"ce", "lovasz", "mb_src", "mb_tgt", "total"} <= set(steps[0]) and steps[-1]["mb_tgt"] > 0
    results = json.loads((run / "results.json").read_text())
    assert results["prototypes"] == {"skipped": "not needed by method memory-bank"}
    # --resume continues with the run's own method; asking for another one is refused, naming the key
    changed = runner.invoke(app, _cli_args(base, run, "--stage", "proca", "--method", "proca", "--resume"))
    assert changed.exit_code == 2 and "method" in changed.output


def _proca(base: dict[str, Path], run: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "proca.cli", *_cli_args(base, run, "--stage", "proca", "--method", "memory-bank"),
           *extra]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_after_first_state(proc: subprocess.Popen[bytes], state: Path) -> None:
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode(errors="replace")[-2000:]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(base: dict[str, Path], tmp_path: Path) -> None:
    from proca.engine.state import load_training_state
    from proca.models import load_model
    from tests.engine._train import train as run_train

    ref, killed = _copy_base(base, tmp_path / "ref"), _copy_base(base, tmp_path / "killed")
    state = killed / "state" / "proca.safetensors"
    victim = _proca(base, killed)
    killer = threading.Thread(target=_kill_after_first_state, args=(victim, state))
    killer.start()
    run_train(stage="proca", method="memory-bank", **_kwargs(base["synth"], ref, base["config"]))  # meanwhile
    killer.join()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it was killed: " + _tail(victim)
    saved = load_training_state(state)
    assert saved.info["iteration"] == 2 and int(saved.extra["memory_bank.step"]) == 2
    assert int(saved.extra["memory_bank.pixel_filled"].sum()) > 0 and "projection_head.proj.0.weight" in saved.extra
    assert len(saved.optimizer["param_groups"]) == 3 and saved.optimizer["param_groups"][2]["name"] == "projection_head"

    run_train(stage="proca", method="memory-bank", resume=True, **_kwargs(base["synth"], killed, base["config"]))
    a, b = load_model(ref / "proca.safetensors"), load_model(killed / "proca.safetensors")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=name)
    ref_steps, got_steps = _steps(ref), _steps(killed)
    assert [r["iteration"] for r in got_steps] == [1, 2, 3, 4]
    assert ref_steps[-1]["mb_tgt"] > 0  # the contrast took part in the steps after the resume
    for r, g in zip(ref_steps, got_steps, strict=True):
        for key in ("ce", "mb_src", "mb_tgt", "total"):
            assert g[key] == pytest.approx(r[key], abs=1e-6), (r["iteration"], key)


@pytest.mark.slow
@pytest.mark.distributed
def test_nproc_2_keeps_the_banks_identical(base: dict[str, Path], tmp_path: Path) -> None:
    from proca.models import load_model

    run = _copy_base(base, tmp_path / "ddp")
    args = [*_cli_args(base, run, "--stage", "proca", "--method", "memory-bank"), "--nproc", "2"]
    args[args.index("--batch-size") + 1] = "4"  # 1 source + 1 target image per process
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    events = [json.loads(x) for x in (run / "proca.log.jsonl").read_text().splitlines()]
    assert {"event": "memory_bank_synced", "iteration": 4, "identical": True} in events
    assert load_model(run / "proca.safetensors").metadata["config"]["method"] == "memory-bank"
