"""Training engine: schedule, batch split, gradient accumulation, AMP, non-finite losses, the whole recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from proca.config import resolve_config
from proca.engine.context import RunContext
from proca.engine.hooks import default_hooks
from proca.engine.launch import DistInfo
from proca.engine.schedule import plan_batch, poly_lr, set_lr
from proca.engine.stages.base import supervised_loss
from proca.engine.stages.source import source_train_step
from proca.engine.trainer import StepContext, StepResult, Trainer, TrainingStage
from proca.errors import ConfigError, ProcaError

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

TINY = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "2", "--batch-size", "2"]
TINY_SET = ["--set", "num_workers=0", "--set", "log_every=1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """One thread: on a shared 2-core machine, oversubscribed threads make tiny convolutions 3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """A BatchNorm-free two-conv segmenter with the DeepLabV2 interface (for exact gradient checks)."""

    def __init__(self, num_classes: int = 4, feature_dim: int = 6) -> None:
        super().__init__()
        self.backbone = nn.Conv2d(3, feature_dim, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(feature_dim, num_classes, 1)
        self.num_classes, self.feature_dim = num_classes, feature_dim

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.relu(self.backbone(x))
        return f, self.classifier(f)

    def param_groups(self, lr: float, *, head_lr_mult: float = 10.0, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        return [
            {"params": list(self.backbone.parameters()), "lr": lr, "lr_mult": 1.0},
            {"params": list(self.classifier.parameters()), "lr": lr * head_lr_mult, "lr_mult": head_lr_mult},
        ]


def _step_context(model: nn.Module, plan: Any, amp: str = "none") -> StepContext:
    from proca.engine.setup import FeaturesForward

    opt = torch.optim.SGD(model.param_groups(0.1), lr=0.1)  # type: ignore[operator]
    return StepContext(
        net=FeaturesForward(model),
        model=model,
        optimizer=opt,
        plan=plan,
        amp=amp,
        scaler=torch.amp.GradScaler("cpu", enabled=amp == "fp16"),
        channels_last=False,
        device=torch.device("cpu"),
    )


def test_poly_schedule_and_head_rate() -> None:
    assert poly_lr(5e-4, 0, 31_250) == 5e-4
    assert poly_lr(5e-4, 20_000, 31_250) == pytest.approx(5e-4 * (1 - 20_000 / 31_250) ** 0.9)
    opt = torch.optim.SGD(TinyNet().param_groups(1.0), lr=1.0)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 5.0]


def test_batch_plan_keeps_the_global_batch() -> None:
    for world in (1, 2, 3, 4):
        for per_device in (None, 1, 2):
            try:
                plans = [plan_batch(8, world, r, per_device) for r in range(world)]
            except ConfigError:
                continue
            seen = sorted(j for p in plans for m in p.micro_batches for j in m)
            assert seen == list(range(8))
            assert len({p.accum_steps for p in plans}) == 1
            assert sum(p.weight(k) for p in plans for k in range(p.accum_steps)) == pytest.approx(world)
    assert plan_batch(8, 3, 2).micro_batches == ((2, 5),)
    with pytest.raises(ConfigError, match="smaller than"):
        plan_batch(2, 4, 0)


def test_gradient_accumulation_equals_the_big_batch() -> None:
    torch.manual_seed(0)
    images = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 4, (4, 8, 8))
    weights = []
    for per_device in (None, 1, 2):
        torch.manual_seed(1)
        model = TinyNet().double()
        sc = _step_context(model, plan_batch(4, 1, 0, per_device))
        micro = [{"image": images[list(m)], "label": labels[list(m)]} for m in sc.plan.micro_batches]
        result = source_train_step(sc, micro, lovasz_weight=0.0)
        assert result.skipped is None
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(weights[2], weights[0], rtol=0, atol=1e-12)


def test_bf16_autocast_and_fp16_scaler_paths_run_on_cpu() -> None:
    model = TinyNet(num_classes=19)
    batch = {"image": torch.randn(1, 3, 16, 16), "label": torch.randint(0, 19, (1, 16, 16))}
    for amp in ("bf16", "fp16"):
        sc = _step_context(model, plan_batch(1, 1, 0), amp=amp)
        with sc.autocast():
            _, logits = sc.net(batch["image"])
        assert logits.dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
        result = source_train_step(sc, [batch], lovasz_weight=0.0)
        assert result.skipped is None and all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())
    terms = supervised_loss(torch.randn(1, 19, 4, 4, dtype=torch.bfloat16), batch["label"], 0.75)
    assert terms["ce"][0].dtype == torch.float32 and terms["lovasz"][1] == 0.75


def test_nonfinite_losses_skip_then_stop(tmp_path: Path) -> None:
    model = TinyNet()
    sc = _step_context(model, plan_batch(1, 1, 0))
    bad = {"image": torch.full((1, 3, 8, 8), float("nan")), "label": torch.zeros(1, 8, 8, dtype=torch.long)}
    before = [p.detach().clone() for p in model.parameters()]
    assert source_train_step(sc, [bad], lovasz_weight=0.0).skipped == "ce"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    cfg = resolve_config(iters=10, overrides=["max_nonfinite=3", "log_every=1"])
    ctx = RunContext(cfg=cfg, run_dir=tmp_path, data_root=tmp_path, dist=DistInfo(), progress=False)

    class AlwaysNaN(TrainingStage):
        name, section = "source", cfg.source

        def __init__(self) -> None:
            self.sc = sc

        def batches(self, start: int) -> Any:
            while True:
                yield None

        def train_step(self, micro_batches: Any) -> StepResult:
            return StepResult({}, skipped="pcl_feat")

    with pytest.raises(ProcaError, match=r"'pcl_feat'.*3 steps in a row.*iteration 3"):
        Trainer(ctx, AlwaysNaN(), default_hooks(ctx)).train()
    records = [json.loads(line) for line in (tmp_path / "source.log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["nonfinite"] * 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path_factory.mktemp("synth")
    write_synthetic_datasets(root, seed=0, num_train=4, num_val=2, size=(32, 64), force=True, progress=False)
    return root


@pytest.mark.slow
def test_whole_recipe_through_the_cli(synth: Path, tmp_path: Path) -> None:
    from proca.cli import app
    from proca.models import load_model

    run = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--data-root", str(synth), "--out", str(run), *TINY, *TINY_SET, "--checkpoint-every", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("source", "prototypes", "proca", "ssl"):
        assert (run / f"{name}.safetensors").is_file()
    assert (run / "pseudo_labels" / "thresholds.json").is_file()
    assert not (run / "state" / "source.safetensors").exists()  # state removed once the stage finished
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "deeplabv2_resnet18" and config["proca"]["iters"] == 2
    ckpt = load_model(run / "proca.safetensors")
    assert ckpt.metadata["stage"] == "proca" and ckpt.metadata["config"] == config
    assert set(ckpt.prototypes) == {f"{lv}.{n}" for lv in ("feature", "output") for n in ("prototypes", "counts")}
    steps = [json.loads(x) for x in (run / "proca.log.jsonl").read_text().splitlines()]
    first = steps[0]
    assert {"iteration", "ce", "lovasz", "pcl_feat", "pcl_out", "total", "lr", "sec_per_iter"} <= set(first)
    assert steps[-1]["event"] == "eval" and 0 <= steps[-1]["miou"] <= 100
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"source", "prototypes", "proca", "pseudo-label", "ssl"}
    assert "stage 5/5 ssl" in result.output and "all 5 stages done" in result.output  # the whole-run line
    # proca pseudo-label into the recipe's folder: the checkpoint it used -> up to date; other settings -> refused
    used = run / str(results["pseudo-label"]["checkpoint"])
    label = ["pseudo-label", str(used), "--data-root", str(synth), "--out", str(run / "pseudo_labels")]
    label += ["--device", "cpu"]
    same = runner.invoke(app, label)
    assert same.exit_code == 0 and "up to date" in same.output, same.output
    other = runner.invoke(app, [*label, "--percent", "0.5"])
    assert other.exit_code == 2 and "--force" in other.output, other.output

    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    skipped = runner.invoke(app, [*args, "--resume"])
    assert skipped.exit_code == 0 and skipped.output.count("skipped") == 5
    changed = runner.invoke(app, [*args, "--resume", "--set", "proca.temperature=0.1"])
    assert changed.exit_code == 2 and "proca.temperature" in changed.output
    (run / "notes.txt").write_text("mine")
    forced = runner.invoke(app, [*args, "--force", "--stage", "source"])
    assert forced.exit_code == 0, forced.output
    assert (run / "source.safetensors").is_file() and not (run / "proca.safetensors").exists()
    assert not (run / "pseudo_labels").exists() and (run / "notes.txt").read_text() == "mine"  # only proca's files go
