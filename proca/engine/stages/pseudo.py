"""Stage 4, pseudo labels: the adapted model labels the target train set with per-class percentile thresholds."""

from __future__ import annotations

import shutil
from typing import Any

from proca.engine.context import RunContext
from proca.engine.launch import barrier
from proca.engine.setup import build_stage_model, stage_checkpoint

__all__ = ["run_pseudo_label_stage"]


def run_pseudo_label_stage(ctx: RunContext) -> dict[str, Any]:
    """Write ``RUN/pseudo_labels/`` from the ProCA checkpoint (``pseudo_label.init_from``; release: best).

    Every process labels its share of the images; the per-class confidence histograms are all-reduced,
    so the thresholds cover the whole split. The labels are written into ``RUN/pseudo_labels.partial``
    and renamed when complete, so an interrupted stage leaves no folder that looks finished.
    """
    from proca.data.registry import open_target_images
    from proca.data.targets import canonical_spec
    from proca.engine.pseudo_label import generate_pseudo_labels, label_manifest

    section = ctx.cfg.pseudo_label
    init = stage_checkpoint(ctx, "proca", section.init_from, key="pseudo_label.init_from")
    final = ctx.path("pseudo_labels")
    partial = ctx.path("pseudo_labels.partial")
    if ctx.is_main and partial.exists():
        shutil.rmtree(partial)
    barrier()
    model = build_stage_model(ctx, init).to(ctx.device).eval()
    dataset = open_target_images(ctx.cfg.tgt, ctx.data_root, class_set=ctx.class_set)
    manifest = None
    if ctx.is_main:  # what ``proca pseudo-label`` compares before labelling into this folder again
        manifest = label_manifest(
            init,
            split="train",
            target=canonical_spec(ctx.cfg.tgt),
            num_images=len(dataset),
            class_set=ctx.class_set.name,
            percent=section.percent,
            cap=section.cap,
            input_size=section.input_size,
        )
    stats = generate_pseudo_labels(
        model,
        dataset,
        partial,
        class_set=ctx.class_set,
        percent=section.percent,
        cap=section.cap,
        input_size=section.input_size,
        device=ctx.device,
        batch_size=section.batch_size,
        progress=ctx.progress and ctx.is_main,
        num_workers=0 if ctx.device.type == "cpu" else None,
        distributed=ctx.dist.distributed,
        manifest=manifest,
    )
    barrier()
    if ctx.is_main:
        partial.rename(final)
    barrier()
    kept, pixels = sum(stats.kept), sum(stats.pixels)
    return {
        "checkpoint": init.name,
        "num_images": stats.num_images,
        "kept_fraction": kept / pixels if pixels else 0.0,
        "thresholds": [round(float(t), 4) for t in stats.thresholds],
    }
