"""Stage 1, source only: supervised training on the labelled source with class-balanced sampling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proca.config import SourceStageConfig
from proca.engine.context import RunContext
from proca.engine.setup import build_solver, build_stage_model, make_plan, prepare_for_training
from proca.engine.stages.base import step_context, supervised_loss
from proca.engine.streams import STREAM_IDS, Stream, source_stream, step_batches, training_workers
from proca.engine.trainer import LossTerms, StepContext, StepResult, TrainingStage, accumulate_and_step

__all__ = ["SourceStage", "source_train_step"]


def source_train_step(sc: StepContext, micro_batches: list[dict[str, Any]], *, lovasz_weight: float) -> StepResult:
    """One source-only step: CE + ``lovasz_weight`` x Lovasz-softmax on the source batch.

    The network runs in train mode; its logits (stride 8) are upsampled bilinearly
    (``align_corners=True``) to the input size for both terms; the loss is the mean over the global batch
    (gradient accumulation over ``micro_batches``).

    Args:
        sc: step context.
        micro_batches: this rank's micro-batches, dicts with ``image`` (B, 3, H, W) and ``label`` (B, H, W).
        lovasz_weight: weight of the Lovasz term (0: cross entropy only, the self-training loss).

    Returns:
        Loss terms ``ce``, ``lovasz``, ``total`` (or the skipped term's name).
    """

    def compute(batch: dict[str, Any]) -> LossTerms:
        images, labels = sc.images(batch), sc.labels(batch)
        with sc.autocast():
            _, logits = sc.net(images)
        return supervised_loss(logits, labels, lovasz_weight)

    return accumulate_and_step(sc, micro_batches, compute)


class SourceStage(TrainingStage):
    """Stage 1 from ImageNet weights (``RUN/source.safetensors`` at the end).

    Args:
        ctx: run context (``cfg.source`` is the section).
    """

    name = "source"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.section: SourceStageConfig = ctx.cfg.source
        model = build_stage_model(ctx, None, imagenet=True)
        plan = make_plan(ctx, self.section.batch_size, self.section.per_device_batch)
        optimizer, self.schedule = build_solver(ctx, model, self.section)
        self.sc = step_context(ctx, prepare_for_training(ctx, model), model, optimizer, plan)
        self.stream: Stream = source_stream(
            ctx,
            size=self.section.input_size,
            jitter=self.section.color_jitter,
            class_balanced=self.section.class_balanced,
            total=self.section.iters * plan.global_batch,
            stream_id=STREAM_IDS["source"],
        )

    def batches(self, start: int) -> Iterator[Any]:
        workers = training_workers(self.ctx, announce=start == 0)
        return step_batches(
            self.ctx, self.sc.plan, [self.stream], start=start, end=self.section.iters, num_workers=workers
        )

    def train_step(self, micro_batches: list[dict[str, Any]]) -> StepResult:
        return source_train_step(self.sc, micro_batches, lovasz_weight=self.section.lovasz_weight)
