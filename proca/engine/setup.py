"""Model and optimiser set-up of a training stage: checkpoints to start from, DDP/SyncBN, SGD, AMP scaler."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from proca.engine.context import RunContext
from proca.engine.schedule import BatchPlan, LRSchedule, plan_batch
from proca.errors import CheckpointError
from proca.models.builders import SegmentationModel

__all__ = [
    "CHECKPOINT_FILES",
    "FeaturesForward",
    "build_solver",
    "build_stage_model",
    "make_plan",
    "make_scaler",
    "optimizer_family",
    "prepare_for_training",
    "stage_checkpoint",
    "wants_release_checkpoint",
]


class FeaturesForward(nn.Module):
    """``forward(x) = model.forward_features(x)``, so DDP (which wraps ``forward``) sees both outputs.

    With a ``head`` (the memory-bank variant's projection head) the output is ``(features, logits,
    head(features))``, so the head trains inside the same DDP module.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features, logits = self.model.forward_features(x)  # type: ignore[operator]
        if self.head is None:
            return features, logits
        return features, logits, self.head(features)


CHECKPOINT_FILES = {
    "last": "{stage}.safetensors",
    "best": "{stage}.best.safetensors",
    "release": "{stage}.current.safetensors",
}
"""The file of each ``init_from`` choice. ``release`` is the release's ``model_current.pth``: written at every
validation that did not beat the best so far, so it is the newest such checkpoint (not the last one)."""


def stage_checkpoint(ctx: RunContext, stage: str, choice: str, *, key: str) -> Path:
    """The checkpoint of an earlier ``stage`` a later stage starts from (:data:`CHECKPOINT_FILES`).

    Args:
        ctx: run context.
        stage: the earlier stage (``source``, ``proca``).
        choice: ``"last"``, ``"best"`` or ``"release"``.
        key: the config key that chose it (named in the error).

    Raises:
        CheckpointError: the file does not exist.
    """
    if choice == "best" and not ctx.validates:
        # no labelled target data: no validation, so no best; the stage's last checkpoint stands in
        path = ctx.path(CHECKPOINT_FILES["last"].format(stage=stage))
        if path.is_file():
            ctx.say(f"{key}: best -> last ({path.name}): the target has no labels to pick a best by")
            return path
        raise CheckpointError(f"{path} does not exist; run --stage {stage} first.")
    path = ctx.path(CHECKPOINT_FILES[choice].format(stage=stage))
    if path.is_file():
        return path
    if choice == "release" and ctx.path(f"{stage}.safetensors").is_file():
        raise CheckpointError(
            f"{path} does not exist: every validation of stage {stage!r} beat the best before it, so the release "
            f"would have no model_current.pth either; set {key} to last or best."
        )
    raise CheckpointError(f"{path} does not exist; run --stage {stage} first (or set {key}).")


def wants_release_checkpoint(ctx: RunContext, stage: str) -> bool:
    """True when a later stage starts from ``stage``'s ``release`` checkpoint (so the eval hook writes it)."""
    cfg = ctx.cfg
    users = {"source": (cfg.prototypes.init_from, cfg.proca.init_from), "proca": (cfg.pseudo_label.init_from,)}
    return "release" in users.get(stage, ())


def build_stage_model(ctx: RunContext, init: Path | None, *, imagenet: bool = True) -> SegmentationModel:
    """A model for a stage: loaded from a previous stage's checkpoint, or freshly built.

    Args:
        ctx: run context (architecture, classes, backbone weights).
        init: checkpoint to start from (None: a fresh model).
        imagenet: for a fresh model, load ``ctx.backbone_weights`` (random init with a notice when None).
    """
    from proca.models import build_model, load_model

    cfg = ctx.cfg
    if init is not None:
        model = load_model(init).model
        if model.arch != cfg.arch or model.num_classes != cfg.num_classes:
            raise CheckpointError(
                f"{init} holds {model.arch} with {model.num_classes} classes but the run is {cfg.arch} with "
                f"{cfg.num_classes}; use --force to start the run over."
            )
        return model
    weights = ctx.backbone_weights if imagenet else None
    if weights is None and imagenet and ctx.is_main:
        from proca.models.backbones import IMAGENET_FILES

        backbone = cfg.arch.split("_", 1)[-1]
        example = IMAGENET_FILES.get(backbone, ("the backbone's ImageNet file",))[0]
        warnings.warn(
            f"no --backbone-weights: {cfg.arch} starts from random weights; the published numbers need the "
            f"ImageNet weights (e.g. {example}).",
            stacklevel=2,
        )
    return build_model(cfg.arch, num_classes=cfg.num_classes, backbone_weights=weights, norm=cfg.norm)


def prepare_for_training(
    ctx: RunContext, model: nn.Module, head: nn.Module | None = None, *, forward: nn.Module | None = None
) -> nn.Module:
    """Move to the device, train mode, channels_last, SyncBatchNorm + DDP under several processes.

    ``forward``: a module holding ``model`` whose ``forward`` the train step calls instead of
    :class:`FeaturesForward` (the DAFormer stage's also returns the encoder's last map).

    Returns:
        The network to call in train steps: ``net(x) -> (features, logits)`` (``(features, logits,
        embeddings)`` with a ``head``). ``model`` stays the unwrapped module to save and evaluate.
    """
    modules = [model] if head is None else [model, head]
    for module in modules:
        module.to(ctx.device)
        if ctx.cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        module.train()
    net: nn.Module = FeaturesForward(model, head) if forward is None else forward
    if ctx.dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        if ctx.device.type != "cpu":
            # SyncBatchNorm needs an accelerator; on CPU (gloo) each process normalises its own share.
            # A frozen-norm model keeps its BatchNorm; the head's BatchNorm always trains.
            for module in modules if ctx.cfg.norm != "frozen" else modules[1:]:
                converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
                assert converted is module
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Each step runs two forward passes (source, target) before one backward. On CUDA, cuDNN's
        # batch norm saves the running statistics for backward, and DDP's buffer broadcast at the
        # second forward modifies them in place: autograd then fails ("modified by an inplace
        # operation", measured on an H100 with NCCL). SyncBatchNorm keeps the statistics equal on
        # every rank there anyway, so buffers are broadcast only on CPU (gloo, no SyncBatchNorm).
        net = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=ctx.device.type == "cpu")
    return net


def optimizer_family(ctx: RunContext, model: nn.Module) -> str:
    """``sgd`` or ``adamw``: the config's ``optimizer``, or with ``auto`` the model's ``optimizer_family``."""
    if ctx.cfg.optimizer != "auto":
        return ctx.cfg.optimizer
    return str(getattr(model, "optimizer_family", "sgd"))


def build_solver(
    ctx: RunContext, model: nn.Module, section: Any, extra_groups: list[dict[str, Any]] | None = None
) -> tuple[torch.optim.Optimizer, LRSchedule]:
    """The stage's optimiser and learning-rate schedule.

    SGD (DeepLabV2, the release): the section's lr, head at ``head_lr_mult``, momentum, weight decay, poly
    decay. AdamW (MiT networks, DAFormer): ``cfg.adamw`` (lr, head multiplier, weight decay without norms,
    betas), linear warm-up then poly. Both decay over the section's ``schedule_length``.

    Args:
        ctx: run context.
        model: the model (its ``param_groups``).
        section: the stage's config section.
        extra_groups: more parameter groups (with ``lr_mult``), e.g. the memory bank's projection head.
    """
    groups_of: Callable[..., list[dict[str, Any]]] = model.param_groups  # type: ignore[assignment]
    if optimizer_family(ctx, model) == "adamw":
        opt = ctx.cfg.adamw
        groups = groups_of(opt.lr, head_lr_mult=opt.head_lr_mult, weight_decay=opt.weight_decay)
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            groups + (extra_groups or []), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        schedule = LRSchedule(opt.lr, section.schedule_length, opt.poly_power, opt.warmup_iters, opt.warmup_ratio)
        return optimizer, schedule
    groups = groups_of(section.lr, head_lr_mult=section.head_lr_mult, weight_decay=section.weight_decay)
    optimizer = torch.optim.SGD(
        groups + (extra_groups or []), lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay
    )
    return optimizer, LRSchedule(section.lr, section.schedule_length, section.poly_power)


def make_plan(ctx: RunContext, global_batch: int, per_device: int | None) -> BatchPlan:
    """This rank's share of a global batch."""
    return plan_batch(global_batch, ctx.dist.world_size, ctx.dist.rank, per_device)


def make_scaler(ctx: RunContext) -> torch.amp.GradScaler:
    """The fp16 gradient scaler (disabled for fp32 and bf16)."""
    return torch.amp.GradScaler(ctx.device.type, enabled=ctx.cfg.amp == "fp16")
