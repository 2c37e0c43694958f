"""The MiT networks in the classic recipe: AdamW by architecture family, warm-up + poly, all five stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from proca.config import resolve_config
from proca.engine.context import RunContext
from proca.engine.schedule import LRSchedule
from proca.engine.setup import build_solver

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")


def test_the_family_picks_adamw_for_mit_and_sgd_for_deeplab(tmp_path: Path) -> None:
    from proca.models import build_model

    mit = build_model("daformer_mit_b0", num_classes=19)
    ctx = RunContext(cfg=resolve_config(arch="daformer_mit_b0"), run_dir=tmp_path, data_root=tmp_path)
    optimizer, schedule = build_solver(ctx, mit, ctx.cfg.source)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert schedule == LRSchedule(6e-5, ctx.cfg.source.schedule_length, 1.0, 1500, 1e-6)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["head"]["lr_mult"] == 10.0 and by_name["backbone"]["weight_decay"] == 0.01
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["head_no_decay"]["weight_decay"] == 0.0
    sgd_ctx = RunContext(cfg=resolve_config(arch="daformer_mit_b0", overrides=["optimizer=sgd"]), run_dir=tmp_path,
                         data_root=tmp_path)  # fmt: skip
    assert isinstance(build_solver(sgd_ctx, mit, sgd_ctx.cfg.source)[0], torch.optim.SGD)
    deeplab = build_model("deeplabv2_resnet18", num_classes=19)
    plain = RunContext(cfg=resolve_config(), run_dir=tmp_path, data_root=tmp_path)
    optimizer, schedule = build_solver(plain, deeplab, plain.cfg.proca)
    assert isinstance(optimizer, torch.optim.SGD) and schedule == LRSchedule(2.5e-4, 90_000, 0.9)


def test_linear_warmup_then_poly() -> None:
    s = LRSchedule(6e-5, 100, 1.0, warmup_iters=10, warmup_ratio=1e-6)
    assert s(0) == pytest.approx(6e-5 * 1e-6)
    assert s(5) == pytest.approx(6e-5 * 0.95 * (1 - 0.5 * (1 - 1e-6)))
    assert s(10) == pytest.approx(6e-5 * 0.9) and s(50) == pytest.approx(3e-5)
    assert LRSchedule(1.0, 10)(5) == pytest.approx(0.5**0.9)


@pytest.mark.slow
def test_daformer_mit_b0_runs_the_five_stages_and_its_checkpoint_evaluates(tmp_path: Path) -> None:
    from proca.cli import app
    from proca.data.synthetic import write_synthetic_datasets
    from proca.models import load_model

    data = tmp_path / "data"
    write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    run = tmp_path / "run"
    args = ["train", "--data-root", str(data), "--out", str(run), "--arch", "daformer_mit_b0", "--input-size", "32x64"]
    args += ["--iters", "2", "--batch-size", "2", "--device", "cpu", "--set", "num_workers=0"]
    args += ["--set", "adamw.warmup_iters=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("source", "proca", "ssl"):
        assert load_model(run / f"{name}.safetensors").model.arch == "daformer_mit_b0"
    assert set(load_model(run / "proca.safetensors").prototypes) >= {"feature.prototypes", "output.prototypes"}
    evaluated = CliRunner().invoke(
        app, ["eval", str(run / "ssl.safetensors"), "--data-root", str(data), "--device", "cpu"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "mIoU" in evaluated.output
