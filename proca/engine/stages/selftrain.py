"""Stage 5, self-training: a fresh model trained with cross entropy on the target's pseudo labels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from proca.config import SelfTrainingStageConfig
from proca.engine.context import RunContext
from proca.engine.setup import build_solver, build_stage_model, make_plan, prepare_for_training
from proca.engine.stages.base import step_context, supervised_loss
from proca.engine.streams import STREAM_IDS, Stream, step_batches, training_workers, uniform_stream
from proca.engine.trainer import LossTerms, StepContext, StepResult, TrainingStage, accumulate_and_step
from proca.errors import CheckpointError

__all__ = ["SelfTrainingStage", "ssl_train_step"]


def ssl_train_step(sc: StepContext, micro_batches: list[dict[str, Any]]) -> StepResult:
    """One self-training step: cross entropy (ignore 255) against the pseudo labels, nothing else.

    Logits are upsampled bilinearly (``align_corners=True``) to the crop size; the loss is the mean over
    the global batch (gradient accumulation over ``micro_batches``).

    Returns:
        Loss terms ``ce`` and ``total`` (or the skipped term's name).
    """

    def compute(batch: dict[str, Any]) -> LossTerms:
        images, labels = sc.images(batch), sc.labels(batch)
        with sc.autocast():
            _, logits = sc.net(images)
        return supervised_loss(logits, labels, 0.0)

    return accumulate_and_step(sc, micro_batches, compute)


class SelfTrainingStage(TrainingStage):
    """Stage 5 on ``RUN/pseudo_labels`` (``RUN/ssl.safetensors`` at the end)."""

    name = "ssl"

    def __init__(self, ctx: RunContext) -> None:
        from proca.data.registry import open_pseudo_labelled
        from proca.data.transforms import self_training_transform

        self.ctx = ctx
        self.section: SelfTrainingStageConfig = ctx.cfg.ssl
        section = self.section
        labels = ctx.path("pseudo_labels")
        if not labels.is_dir():
            raise CheckpointError(f"{labels} does not exist; run --stage pseudo-label first.")
        init = None if section.init == "imagenet" else ctx.path("proca.safetensors")
        model = build_stage_model(ctx, init, imagenet=True)
        plan = make_plan(ctx, section.batch_size, section.per_device_batch)
        optimizer, self.schedule = build_solver(ctx, model, section)
        self.sc = step_context(ctx, prepare_for_training(ctx, model), model, optimizer, plan)
        transform = self_training_transform(
            section.scale_reference, scale=section.scale, crop=section.input_size, jitter=section.color_jitter
        )
        dataset = open_pseudo_labelled(ctx.cfg.tgt, ctx.data_root, labels, class_set=ctx.class_set, transform=transform)
        fetch = uniform_stream(len(dataset), seed=ctx.cfg.seed, stream=STREAM_IDS["ssl"])
        self.stream = Stream(dataset, fetch, STREAM_IDS["ssl"])

    def batches(self, start: int) -> Iterator[Any]:
        workers = training_workers(self.ctx, announce=start == 0)
        return step_batches(
            self.ctx, self.sc.plan, [self.stream], start=start, end=self.section.iters, num_workers=workers
        )

    def train_step(self, micro_batches: list[dict[str, Any]]) -> StepResult:
        return ssl_train_step(self.sc, micro_batches)
