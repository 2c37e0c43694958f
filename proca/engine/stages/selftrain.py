"""Stage 5, self-training: a fresh model trained with cross entropy on the target's pseudo labels."""

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
    uniform_stream,
)
from proca.errors import CheckpointError

__all__ = ["run_ssl_stage", "ssl_train_step"]


def ssl_train_step(sc: StepContext, micro_batches: list[dict[str, Any]]) -> StepResult:
    """One self-training step: cross entropy (ignore 255) against the pseudo labels, nothing else.

    Logits are upsampled bilinearly (``align_corners=True``) to the crop size; the loss is the mean over
    the global batch (gradient accumulation over ``micro_batches``).

    Args:
        sc: step context.
        micro_batches: this rank's micro-batches, ``image`` (B, 3, H, W) and pseudo ``label`` (B, H, W).

    Returns:
        Loss terms ``ce`` and ``total`` (or the skipped term's name).
    """

    def compute(batch: dict[str, Any]) -> dict[str, Any]:
        images = sc.images(batch)
        labels = batch["label"].to(sc.device, non_blocking=True)
        with sc.autocast():
            _, logits = sc.net(images)
        return supervised_loss(logits, labels, 0.0)

    return accumulate_and_step(sc, micro_batches, compute)


def run_ssl_stage(ctx: RunContext) -> LoopResult:
    """Train stage 5 on ``RUN/pseudo_labels`` (``RUN/ssl.safetensors`` at the end)."""
    from proca.data.datasets import PseudoLabelDataset
    from proca.data.transforms import self_training_transform

    cfg = ctx.cfg
    section = cfg.ssl
    labels = ctx.path("pseudo_labels")
    if not labels.is_dir():
        raise CheckpointError(f"{labels} does not exist; run --stage pseudo-label first.")
    init = None if section.init == "imagenet" else ctx.path("proca.safetensors")
    model = build_stage_model(ctx, init, imagenet=True)
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
    )
    transform = self_training_transform(
        section.scale_reference, scale=section.scale, crop=section.input_size, jitter=section.color_jitter
    )
    dataset = PseudoLabelDataset(
        ctx.data_root / "cityscapes", labels, split="train", class_set=ctx.class_set, transform=transform
    )
    fetch = uniform_stream(len(dataset), seed=cfg.seed, stream=STREAM_IDS["ssl"])

    def batches(start: int) -> Any:
        sampler = StepBatchSampler(fetch, plan, start=start, end=section.iters, seed=cfg.seed, stream=STREAM_IDS["ssl"])
        loader = make_loader(dataset, sampler, num_workers=cfg.num_workers, device=ctx.device)
        while True:
            yield [next(loader) for _ in range(plan.accum_steps)]

    return run_training_loop(ctx, stage="ssl", section=section, sc=sc, batches=batches, train_step=ssl_train_step)
