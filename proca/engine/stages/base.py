"""What the training stages share: the release's supervised loss and the step context of a fresh stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from proca.engine.context import RunContext
from proca.engine.hooks import default_hooks
from proca.engine.schedule import BatchPlan
from proca.engine.setup import make_scaler
from proca.engine.trainer import LoopResult, LossTerms, StepContext, Trainer, TrainingStage

__all__ = ["step_context", "supervised_loss", "train_stage"]


def supervised_loss(logits: Tensor, labels: Tensor, lovasz_weight: float) -> LossTerms:
    """The release's supervised loss: CE + ``lovasz_weight`` * Lovasz-softmax, on logits upsampled to the labels.

    Logits are upsampled bilinearly (``align_corners=True``) to the label size and computed in float32.

    Shape:
        logits (B, C, h, w); labels (B, H, W).
    """
    from proca.losses import lovasz_softmax

    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    terms: LossTerms = {"ce": (F.cross_entropy(up, labels, ignore_index=255), 1.0)}
    if lovasz_weight > 0:
        terms["lovasz"] = (lovasz_softmax(F.softmax(up, dim=1), labels, ignore_index=255), lovasz_weight)
    return terms


def step_context(ctx: RunContext, net: nn.Module, model: nn.Module, optimizer: object, plan: BatchPlan) -> StepContext:
    """The step context of a stage with the run's AMP, channels_last and device settings."""
    return StepContext(
        net=net,
        model=model,
        optimizer=optimizer,  # type: ignore[arg-type]
        plan=plan,
        amp=ctx.cfg.amp,
        scaler=make_scaler(ctx),
        channels_last=ctx.cfg.channels_last,
        device=ctx.device,
    )


def train_stage(ctx: RunContext, stage: TrainingStage) -> LoopResult:
    """Run ``stage`` with the default hooks (:func:`proca.engine.hooks.default_hooks`)."""
    return Trainer(ctx, stage, default_hooks(ctx)).train()
