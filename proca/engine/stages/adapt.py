"""Stage 3, ProCA: supervised source loss + prototype contrast at the feature and output level."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from proca.config import ProcaStageConfig
from proca.engine.context import RunContext
from proca.engine.prototype_io import PROTOTYPE_LEVELS, load_prototypes
from proca.engine.setup import build_solver, build_stage_model, prepare_for_training, stage_checkpoint
from proca.engine.stages.base import step_context, supervised_loss
from proca.engine.streams import adaptation_plan, adaptation_streams, step_batches, training_workers
from proca.engine.trainer import LossTerms, StepContext, StepResult, TrainingStage, accumulate_and_step
from proca.errors import CheckpointError

__all__ = ["ProcaStage", "proca_train_step"]

Pair = tuple[dict[str, Any], dict[str, Any]]


def proca_train_step(
    sc: StepContext,
    micro_batches: list[Pair],
    *,
    cfg: ProcaStageConfig,
    estimators: Mapping[str, Any],
    pcl: nn.Module,
) -> StepResult:
    """One ProCA step, exactly as the release.

    For each (source, target) micro-batch:

    1. source and target go through the network in two separate forward passes in train mode
       (BatchNorm normalises each domain on its own), each giving features (stride 8) and logits;
    2. supervised loss on the source: CE + ``lovasz_weight`` x Lovasz on logits upsampled to the input;
    3. labels per feature pixel: source ground truth downsampled (nearest); target argmax kept where the
       maximum raw logit is >= ``threshold`` (``threshold_mode="logit"``, the release), else 255;
    4. both prototype sets (feature level A = feature_dim, output level A = C; only the feature level
       with ``multi_level = false``) are updated with the detached target pixels, then the source pixels
       (all-reduced across processes), BEFORE the losses;
    5. loss = sup + lambda_feat (PCL(src feat) + PCL(tgt feat)) + lambda_out (PCL(src logits) + PCL(tgt logits)),
       the contrastive terms in float32 against the detached prototypes.

    A skipped (non-finite) step's prototype updates are undone by the :class:`~proca.engine.trainer.Trainer`
    (the estimators' buffers are in the stage's ``step_state``).

    Args:
        sc: step context.
        micro_batches: this rank's (source, target) micro-batch pairs.
        cfg: the stage's config section (weights, threshold, levels).
        estimators: ``{"feature": PrototypeEstimator, "output": PrototypeEstimator}``.
        pcl: the prototype contrastive loss, ``pcl(features=, labels=, prototypes=)``.

    Returns:
        Loss terms ``ce``, ``lovasz``, ``pcl_feat``, ``pcl_out``, ``total`` (or the skipped term's name).

    Shape:
        source image (B, 3, Hs, Ws), label (B, Hs, Ws); target image (B, 3, Ht, Wt).
    """
    from proca.prototypes import confident_labels, downsample_labels

    def compute(pair: Pair) -> LossTerms:
        src, tgt = pair
        src_images, tgt_images, src_labels = sc.images(src), sc.images(tgt), sc.labels(src)
        with sc.autocast():
            src_feat, src_logits = sc.net(src_images)
            tgt_feat, tgt_logits = sc.net(tgt_images)
        src_feat, src_logits = src_feat.float(), src_logits.float()
        tgt_feat, tgt_logits = tgt_feat.float(), tgt_logits.float()
        terms = supervised_loss(src_logits, src_labels, cfg.lovasz_weight)
        src_small = downsample_labels(src_labels, src_feat.shape[-2:])
        tgt_small = confident_labels(tgt_logits.detach(), cfg.threshold, mode=cfg.threshold_mode)
        levels: list[tuple[str, str, Tensor, Tensor, float]] = [
            ("feat", "feature", src_feat, tgt_feat, cfg.lambda_feat)
        ]
        if cfg.multi_level:
            levels.append(("out", "output", src_logits, tgt_logits, cfg.lambda_out))
        for _, level, src_x, tgt_x, _ in levels:
            estimators[level].update(tgt_x.detach(), tgt_small)
            estimators[level].update(src_x.detach(), src_small)
        for name, level, src_x, tgt_x, weight in levels:
            protos = estimators[level].prototypes.detach()
            loss = pcl(features=src_x, labels=src_small, prototypes=protos) + pcl(
                features=tgt_x, labels=tgt_small, prototypes=protos
            )
            terms[f"pcl_{name}"] = (loss, weight)
        return terms

    return accumulate_and_step(sc, micro_batches, compute)


class ProcaStage(TrainingStage):
    """Stage 3 from the source checkpoint (``proca.init_from``) and ``RUN/prototypes.safetensors``.

    Writes ``RUN/proca.safetensors`` (with both prototype sets) at the end.
    """

    name = "proca"

    def __init__(self, ctx: RunContext) -> None:
        from proca.losses import PrototypeContrastiveLoss
        from proca.prototypes import PrototypeEstimator

        self.ctx = ctx
        cfg = ctx.cfg
        self.section: ProcaStageConfig = cfg.proca
        model = build_stage_model(ctx, stage_checkpoint(ctx, "source", self.section.init_from, key="proca.init_from"))
        saved = load_prototypes(ctx.path("prototypes.safetensors"))
        dims = {"feature": model.feature_dim, "output": cfg.num_classes}
        self.estimators = {
            level: PrototypeEstimator(cfg.num_classes, dims[level], momentum=self.section.prototype_momentum)
            for level in PROTOTYPE_LEVELS
        }
        for level, est in self.estimators.items():
            protos = saved[f"{level}.prototypes"]
            if tuple(protos.shape) != (cfg.num_classes, dims[level]):
                raise CheckpointError(
                    f"prototypes.safetensors holds {level} prototypes of shape {tuple(protos.shape)}, expected "
                    f"{(cfg.num_classes, dims[level])}; rerun --stage prototypes (or --force)."
                )
            est.prototypes.copy_(protos)
            est.counts.copy_(saved[f"{level}.counts"])
            est.to(ctx.device)
        self.pcl = PrototypeContrastiveLoss(temperature=self.section.temperature)
        plan = adaptation_plan(ctx)
        optimizer, self.schedule = build_solver(ctx, model, self.section)
        self.sc = step_context(ctx, prepare_for_training(ctx, model), model, optimizer, plan)
        self.streams = adaptation_streams(ctx, plan)

    def batches(self, start: int) -> Iterator[Any]:
        workers = training_workers(self.ctx, announce=start == 0)
        return step_batches(
            self.ctx, self.sc.plan, self.streams, start=start, end=self.section.iters, num_workers=workers
        )

    def train_step(self, micro_batches: list[Pair]) -> StepResult:
        return proca_train_step(self.sc, micro_batches, cfg=self.section, estimators=self.estimators, pcl=self.pcl)

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        return {
            f"{level}.{n}": getattr(est, n) for level, est in self.estimators.items() for n in ("prototypes", "counts")
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for level, est in self.estimators.items():
                est.prototypes.copy_(tensors[f"{level}.prototypes"])
                est.counts.copy_(tensors[f"{level}.counts"])
