"""Stage 1, source only: supervised training on the labelled source with class-balanced sampling."""

from __future__ import annotations

from typing import Any

from proca.engine.stages.common import (
    STREAM_IDS,
    LoopResult,
    RunContext,
    StepBatchSampler,
    StepContext,
    StepResult,
    accumulate_and_step,
    build_optimizer,
    build_stage_model,
    make_loader,
    make_plan,
    make_scaler,
    prepare_for_training,
    run_training_loop,
    supervised_loss,
)
from proca.engine.stages.sources import source_training_data

__all__ = ["run_source_stage", "source_train_step"]


def source_train_step(sc: StepContext, micro_batches: list[dict[str, Any]]) -> StepResult:
    """One source-only step: CE + ``lovasz_weight`` x Lovasz-softmax on the source batch.

    The network runs in train mode; its logits (stride 8) are upsampled bilinearly
    (``align_corners=True``) to the input size for both terms; the loss is the mean over the global batch
    (gradient accumulation over ``micro_batches``).

    Args:
        sc: step context; ``sc.extra["lovasz_weight"]`` weighs the Lovasz term.
        micro_batches: this rank's micro-batches, dicts with ``image`` (B, 3, H, W) and ``label`` (B, H, W).

    Returns:
        Loss terms ``ce``, ``lovasz``, ``total`` (or the skipped term's name).
    """
    weight = float(sc.extra["lovasz_weight"])

    def compute(batch: dict[str, Any]) -> dict[str, Any]:
        images = sc.images(batch)
        labels = batch["label"].to(sc.device, non_blocking=True)
        with sc.autocast():
            _, logits = sc.net(images)
        return supervised_loss(logits, labels, weight)

    return accumulate_and_step(sc, micro_batches, compute)


def run_source_stage(ctx: RunContext) -> LoopResult:
    """Train stage 1 from ImageNet weights (``RUN/source.safetensors`` at the end)."""
    cfg = ctx.cfg
    section = cfg.source
    model = build_stage_model(ctx, None, imagenet=True)
    net = prepare_for_training(ctx, model)
    plan = make_plan(ctx, section.batch_size, section.per_device_batch)
    sc = StepContext(
        net=net,
        model=model,
        optimizer=build_optimizer(model, section),
        plan=plan,
        amp=cfg.amp,
        scaler=make_scaler(ctx),
        channels_last=cfg.channels_last,
        device=ctx.device,
        extra={"lovasz_weight": section.lovasz_weight},
    )
    dataset, fetch = source_training_data(
        ctx,
        size=section.input_size,
        jitter=section.color_jitter,
        class_balanced=section.class_balanced,
        total=section.iters * plan.global_batch,
        seed_stream=STREAM_IDS["source"],
    )

    def batches(start: int) -> Any:
        sampler = StepBatchSampler(
            fetch, plan, start=start, end=section.iters, seed=cfg.seed, stream=STREAM_IDS["source"]
        )
        loader = make_loader(dataset, sampler, num_workers=cfg.num_workers, device=ctx.device)
        while True:
            yield [next(loader) for _ in range(plan.accum_steps)]

    return run_training_loop(ctx, stage="source", section=section, sc=sc, batches=batches, train_step=source_train_step)
