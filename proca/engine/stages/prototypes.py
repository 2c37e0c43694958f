"""Stage 2, prototype init: class means of the source model's features and logits over the source set."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from proca.engine.context import RunContext
from proca.engine.progress import ProgressBar
from proca.engine.prototype_io import PROTOTYPE_LEVELS, load_prototypes, save_prototypes
from proca.engine.setup import build_stage_model, stage_checkpoint
from proca.engine.streams import source_dataset
from proca.prototypes import PrototypeEstimator

__all__ = ["PROTOTYPE_LEVELS", "init_prototypes", "load_prototypes", "run_prototype_stage", "save_prototypes"]


@torch.no_grad()
def init_prototypes(ctx: RunContext, model: Any) -> dict[str, PrototypeEstimator]:
    """One eval-mode pass over the source train set: exact class means at both levels.

    Every process handles its share of the images; the per-class sums and counts are then
    all-reduced, so every process holds the means over the whole set.

    Shape:
        features (B, A, h, w) and logits (B, C, h, w) against labels downsampled to (B, h, w).
    """
    from proca.prototypes import downsample_labels

    cfg = ctx.cfg
    section = cfg.prototypes
    dataset = source_dataset(ctx, size=section.input_size, jitter=False, train=False)
    count = len(dataset)  # type: ignore[arg-type]
    if section.max_images is not None:
        count = min(count, section.max_images)
    indices = list(range(ctx.dist.rank, count, ctx.dist.world_size))
    model.to(ctx.device).eval()
    C = cfg.num_classes
    estimators = {
        "feature": PrototypeEstimator(C, model.feature_dim, sync=False).to(ctx.device),
        "output": PrototypeEstimator(C, C, sync=False).to(ctx.device),
    }
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=section.batch_size,
        num_workers=0 if ctx.device.type == "cpu" else min(4, cfg.num_workers),
    )
    with ProgressBar(len(indices), "prototypes", enabled=ctx.progress and ctx.is_main) as bar:
        for batch in loader:
            images = batch["image"].as_subclass(Tensor).to(ctx.device)
            labels = batch["label"].as_subclass(Tensor).long().to(ctx.device)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            features, logits = model.forward_features(images)
            small = downsample_labels(labels, features.shape[-2:])
            estimators["feature"].update(features.float(), small)
            estimators["output"].update(logits.float(), small)
            bar.advance(len(images))
    if ctx.dist.distributed and dist.is_initialized():
        for est in estimators.values():
            sums = est.prototypes.double() * est.counts.double().unsqueeze(1)
            counts = est.counts.clone()
            dist.all_reduce(sums)
            dist.all_reduce(counts)
            est.prototypes.copy_((sums / counts.clamp_min(1).double().unsqueeze(1)).float())
            est.counts.copy_(counts)
    return estimators


def run_prototype_stage(ctx: RunContext) -> dict[str, Any]:
    """Stage 2: from the source checkpoint (``prototypes.init_from``) write ``RUN/prototypes.safetensors``."""
    section = ctx.cfg.prototypes
    init = stage_checkpoint(ctx, "source", section.init_from, key="prototypes.init_from")
    model = build_stage_model(ctx, init)
    estimators = init_prototypes(ctx, model)
    counts = estimators["feature"].counts
    missing = [ctx.class_set.classes[c] for c in range(len(counts)) if int(counts[c]) == 0]
    if missing:
        ctx.say(f"[yellow]warning:[/] no source pixel of {', '.join(missing)}: their prototypes stay zero")
    if ctx.is_main:
        meta = {"stage": "prototypes", "source_checkpoint": init.name, "pixels": int(counts.sum())}
        save_prototypes(ctx.path("prototypes.safetensors"), estimators, meta)
    return {"pixels": int(counts.sum()), "classes_without_pixels": missing}
