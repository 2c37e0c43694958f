"""The paper's step against hand-computed numbers, its switches, and the Trainer's skipped-step rollback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.config import resolve_config
from proca.engine.context import RunContext
from proca.engine.hooks import default_hooks
from proca.engine.launch import DistInfo
from proca.engine.schedule import plan_batch
from proca.engine.setup import FeaturesForward
from proca.engine.stages.adapt import proca_train_step
from proca.engine.trainer import StepContext, StepResult, Trainer, TrainingStage
from proca.losses import PrototypeContrastiveLoss, lovasz_softmax
from proca.prototypes import PrototypeEstimator

C, A = 3, 4


class Tiny(nn.Module):
    """conv (stride 2) -> ReLU features (A channels) -> 1x1 classifier; a BatchNorm on the input (buffers)."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.backbone = nn.Conv2d(3, A, 3, stride=2, padding=1)
        self.classifier = nn.Conv2d(A, C, 1)
        self.num_classes, self.feature_dim = C, A

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.relu(self.backbone(self.bn(x)))
        return f, self.classifier(f)


def _context(model: nn.Module) -> StepContext:
    return StepContext(
        net=FeaturesForward(model),
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        plan=plan_batch(1, 1, 0),
        amp="none",
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        channels_last=False,
        device=torch.device("cpu"),
    )


def _estimators(seed: int = 3) -> dict[str, PrototypeEstimator]:
    g = torch.Generator().manual_seed(seed)
    out = {"feature": PrototypeEstimator(C, A), "output": PrototypeEstimator(C, C)}
    for est in out.values():
        est.prototypes.copy_(torch.rand(est.prototypes.shape, generator=g))
        est.counts.copy_(torch.tensor([5, 0, 2]))
        est.double()
    return out


def _pair(seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    src = {"image": torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)}
    src["label"] = torch.randint(0, C, (1, 8, 8), generator=g)
    src["label"][0, 0, :3] = 255
    return src, {"image": torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64)}


def _hand_pcl(f: Tensor, labels: Tensor, protos: Tensor, tau: float) -> Tensor:
    """The paper's PCL written out: per labelled pixel, -log softmax(cos(f, p_c) / tau)[label]."""
    pix = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    lab = labels.reshape(-1)
    keep = lab != 255
    pix, lab = pix[keep], lab[keep]
    unit = pix / pix.norm(dim=1, keepdim=True).clamp_min(1e-12)  # a ReLU feature may be all zero
    cos = unit @ (protos / protos.norm(dim=1, keepdim=True).clamp_min(1e-12)).t()
    logp = torch.log_softmax(cos / tau, dim=1)
    return -logp[torch.arange(len(lab)), lab].mean()


def _hand_running_mean(proto: Tensor, count: Tensor, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """proto_c <- (1 - w) proto_c + w mean_c with w = n_c / (n_c + N_c), then N_c += n_c (per class, by loops)."""
    proto, count = proto.clone(), count.clone()
    pix = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    lab = labels.reshape(-1)
    for c in range(C):
        sel = pix[lab == c]
        n = sel.shape[0]
        if n:
            w = n / (n + int(count[c]))
            proto[c] = (1 - w) * proto[c] + w * sel.mean(0)
            count[c] += n
    return proto, count


@pytest.mark.parametrize(
    ("multi_level", "mode", "lambda_feat", "lambda_out", "lovasz"),
    [(True, "logit", 1.0, 1.0, 0.75), (False, "logit", 0.5, 1.0, 0.75), (True, "prob", 0.3, 2.0, 0.0)],
)
def test_proca_step_matches_the_hand_computed_losses_prototypes_and_update(
    multi_level: bool, mode: str, lambda_feat: float, lambda_out: float, lovasz: float
) -> None:
    torch.manual_seed(0)
    model = Tiny().double()
    sc = _context(model)
    threshold = 0.4 if mode == "prob" else 0.1
    cfg = resolve_config(
        overrides=[f"proca.multi_level={str(multi_level).lower()}", f"proca.threshold_mode={mode}",
                   f"proca.threshold={threshold}", f"proca.lambda_feat={lambda_feat}",
                   f"proca.lambda_out={lambda_out}", f"proca.lovasz_weight={lovasz}", "proca.temperature=0.5"]
    ).proca  # fmt: skip
    estimators = _estimators()
    before = {k: (e.prototypes.clone(), e.counts.clone()) for k, e in estimators.items()}
    src, tgt = _pair()
    weights = [p.detach().clone() for p in model.parameters()]

    # by hand, with a copy of the model (the step computes its losses in float32, hence the tolerances)
    ref = Tiny().double()
    ref.load_state_dict(model.state_dict())
    sf, sl = ref.forward_features(src["image"])
    tf, tl = ref.forward_features(tgt["image"])
    up = F.interpolate(sl, size=(8, 8), mode="bilinear", align_corners=True)
    ce = F.cross_entropy(up, src["label"], ignore_index=255)
    lov = lovasz_softmax(F.softmax(up, 1), src["label"], ignore_index=255)
    src_small = src["label"][:, ::2, ::2]  # nearest 8x8 -> 4x4 picks every second pixel from the first
    score = tl.softmax(1) if mode == "prob" else tl
    top, arg = score.max(1)
    tgt_small = torch.where(top >= threshold, arg, torch.full_like(arg, 255))
    levels = [("feature", "feat", sf, tf, lambda_feat)]
    if multi_level:
        levels.append(("output", "out", sl, tl, lambda_out))
    expected_protos = {}
    total = ce + lovasz * lov
    terms = {"ce": ce, "lovasz": lov}
    for level, name, s, t, lam in levels:
        p, n = _hand_running_mean(*before[level], t.detach(), tgt_small)  # target first, then source
        p, n = _hand_running_mean(p, n, s.detach(), src_small)
        expected_protos[level] = (p, n)
        pcl = _hand_pcl(s, src_small, p, 0.5) + _hand_pcl(t, tgt_small, p, 0.5)
        terms[f"pcl_{name}"] = pcl
        total = total + lam * pcl
    total.backward()
    expected_weights = [w - 0.1 * p.grad for w, p in zip(weights, ref.parameters(), strict=True)]

    result = proca_train_step(
        sc, [(src, tgt)], cfg=cfg, estimators=estimators, pcl=PrototypeContrastiveLoss(temperature=0.5)
    )
    assert result.skipped is None
    if lovasz == 0:
        terms.pop("lovasz")
    assert set(result.losses) == {*terms, "total"}
    for name, value in terms.items():
        assert result.losses[name] == pytest.approx(float(value.detach()), rel=1e-5), name
    assert result.losses["total"] == pytest.approx(float(total.detach()), rel=1e-5)
    assert int((tgt_small != 255).sum()) > 0  # the target terms had pixels
    for level, (p, n) in expected_protos.items():
        got = estimators[level].prototypes
        torch.testing.assert_close(got, p.to(got.dtype), rtol=1e-5, atol=1e-6)
        assert torch.equal(estimators[level].counts, n)
    if not multi_level:  # the output prototypes are not touched
        assert torch.equal(estimators["output"].prototypes, before["output"][0])
    for got, want in zip(model.parameters(), expected_weights, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)


class _ProcaLike(TrainingStage):
    """A stage around the real ``proca_train_step`` with a BatchNorm model; the ``nan_at`` steps poison the source."""

    name = "proca"

    def __init__(self, cfg: Any, nan_at: set[int]) -> None:
        self.section = cfg.proca
        self.model = Tiny(bn=True).double()
        self.sc = _context(self.model)
        self.estimators = _estimators()
        self.nan_at = nan_at
        self.calls = 0

    def batches(self, start: int) -> Any:
        while True:
            self.calls += 1
            src, tgt = _pair(self.calls)
            if self.calls in self.nan_at:
                src["image"][0, 0, 0, 0] = float("inf")
            yield [(src, tgt)]

    def train_step(self, micro_batches: Any) -> StepResult:
        pcl = PrototypeContrastiveLoss(temperature=0.1)
        return proca_train_step(self.sc, micro_batches, cfg=self.section, estimators=self.estimators, pcl=pcl)

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return {f"{lv}.{n}": getattr(e, n) for lv, e in self.estimators.items() for n in ("prototypes", "counts")}


def test_a_nan_step_leaves_prototypes_batchnorm_and_weights_untouched(tmp_path: Path) -> None:
    cfg = resolve_config(
        iters=2, overrides=["proca.eval_every=0", "proca.threshold=-100", "log_every=1", "max_nonfinite=5"]
    )
    ctx = RunContext(cfg=cfg, run_dir=tmp_path, data_root=tmp_path, dist=DistInfo(), progress=False)
    hooks = [h for h in default_hooks(ctx) if type(h).__name__ not in ("EvalHook", "CheckpointHook")]
    stage = _ProcaLike(cfg, nan_at={2})
    trainer = Trainer(ctx, stage, hooks)

    snapshots: list[dict[str, Tensor]] = []
    real = stage.train_step

    def recording(micro_batches: Any) -> StepResult:
        snapshots.append({**{k: v.clone() for k, v in stage.checkpoint_tensors().items()},
                          **{f"bn.{k}": v.clone() for k, v in stage.model.bn.state_dict().items()},
                          **{f"w.{k}": v.detach().clone() for k, v in stage.model.named_parameters()}})  # fmt: skip
        return real(micro_batches)

    stage.train_step = recording  # type: ignore[method-assign]
    trainer.train()
    assert trainer.nonfinite_total == 1
    before_nan = snapshots[1]
    after = {**stage.checkpoint_tensors(), **{f"bn.{k}": v for k, v in stage.model.bn.state_dict().items()},
             **{f"w.{k}": v.detach() for k, v in stage.model.named_parameters()}}  # fmt: skip
    for key, value in before_nan.items():
        assert torch.equal(after[key], value), f"{key} changed by the skipped step"
    assert not torch.equal(snapshots[0]["feature.prototypes"], snapshots[1]["feature.prototypes"])  # step 1 did move


def test_a_nan_target_with_finite_losses_is_skipped_and_leaves_batchnorm_untouched(tmp_path: Path) -> None:
    cfg = resolve_config(iters=1, overrides=["proca.eval_every=0", "log_every=1"])
    ctx = RunContext(cfg=cfg, run_dir=tmp_path, data_root=tmp_path, dist=DistInfo(), progress=False)
    stage = _ProcaLike(cfg, nan_at=set())
    src, tgt = _pair(7)
    tgt["image"][0, 0, 0, 0] = float("nan")  # target labels all ignored: every loss term stays finite
    stage.batches = lambda start: iter([[(src, tgt)]])  # type: ignore[method-assign]
    before = {k: v.clone() for k, v in stage.model.bn.state_dict().items()}
    weights = [p.detach().clone() for p in stage.model.parameters()]
    trainer = Trainer(ctx, stage, [h for h in default_hooks(ctx) if type(h).__name__ in ("LRScheduleHook",)])
    trainer.train()
    assert trainer.result is not None and trainer.result.skipped == "state (BatchNorm statistics or prototypes)"
    for key, value in stage.model.bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(a, b) for a, b in zip(weights, stage.model.parameters(), strict=True))


def test_finite_losses_with_a_non_finite_gradient_skip_the_step() -> None:
    from proca.engine.trainer import accumulate_and_step

    model = Tiny()
    sc = _context(model)
    weights = [p.detach().clone() for p in model.parameters()]

    def compute(batch: Tensor) -> dict[str, tuple[Tensor, float]]:
        _, logits = sc.net(batch)
        return {"odd": (torch.sqrt(logits.sum() * 0.0), 1.0)}  # value 0, gradient 0 * inf = NaN

    result = accumulate_and_step(sc, [torch.randn(1, 3, 8, 8)], compute)
    assert result.skipped == "gradient"
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
