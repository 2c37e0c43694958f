"""Stage 3, ProCA: supervised source loss + prototype contrast at the feature and output level."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from proca.engine.stages.common import (
    STREAM_IDS,
    LoopResult,
    LossTerms,
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
from proca.engine.stages.prototypes import PROTOTYPE_LEVELS, load_prototypes
from proca.engine.stages.sources import source_training_data, target_dataset
from proca.errors import CheckpointError

__all__ = ["adaptation_batches", "proca_train_step", "run_proca_stage", "source_init_checkpoint"]


def proca_train_step(sc: StepContext, micro_batches: list[tuple[dict[str, Any], dict[str, Any]]]) -> StepResult:
    """One ProCA step, exactly as the release.

    For each (source, target) micro-batch:

    1. source and target go through the network in two separate forward passes in train mode
       (BatchNorm normalises each domain on its own), each giving features (stride 8) and logits;
    2. supervised loss on the source: CE + ``lovasz_weight`` x Lovasz on logits upsampled to the input;
    3. labels per feature pixel: source ground truth downsampled (nearest); target argmax kept where the
       maximum raw logit is >= ``threshold`` (``threshold_mode="logit"``, the release), else 255;
    4. both prototype sets (feature level A = feature_dim, output level A = C) are updated with the
       detached target pixels, then the source pixels (all-reduced across processes), BEFORE the losses;
    5. loss = sup + lambda_feat (PCL(src feat) + PCL(tgt feat)) + lambda_out (PCL(src logits) + PCL(tgt logits)),
       the contrastive terms in float32 against the detached prototypes.

    Args:
        sc: step context; ``sc.extra`` holds ``estimators`` ({"feature", "output"}), ``pcl`` (the loss module)
            and the stage's config section ``cfg``.
        micro_batches: this rank's (source, target) micro-batch pairs.

    Returns:
        Loss terms ``ce``, ``lovasz``, ``pcl_feat``, ``pcl_out``, ``total`` (or the skipped term's name).

    Shape:
        source image (B, 3, Hs, Ws), label (B, Hs, Ws); target image (B, 3, Ht, Wt).
    """
    from proca.prototypes import confident_labels, downsample_labels

    cfg = sc.extra["cfg"]
    estimators = sc.extra["estimators"]
    pcl = sc.extra["pcl"]

    def compute(pair: tuple[dict[str, Any], dict[str, Any]]) -> LossTerms:
        src, tgt = pair
        src_images, tgt_images = sc.images(src), sc.images(tgt)
        src_labels = src["label"].to(sc.device, non_blocking=True)
        with sc.autocast():
            src_feat, src_logits = sc.net(src_images)
            tgt_feat, tgt_logits = sc.net(tgt_images)
        src_feat, src_logits = src_feat.float(), src_logits.float()
        tgt_feat, tgt_logits = tgt_feat.float(), tgt_logits.float()
        terms = supervised_loss(src_logits, src_labels, cfg.lovasz_weight)
        src_small = downsample_labels(src_labels, src_feat.shape[-2:])
        tgt_small = confident_labels(tgt_logits.detach(), cfg.threshold, mode=cfg.threshold_mode)
        levels: list[tuple[str, Tensor, Tensor, float]] = [("feat", src_feat, tgt_feat, cfg.lambda_feat)]
        if cfg.multi_level:
            levels.append(("out", src_logits, tgt_logits, cfg.lambda_out))
        for name, src_x, tgt_x, _ in levels:
            est = estimators["feature" if name == "feat" else "output"]
            est.update(tgt_x.detach(), tgt_small)
            est.update(src_x.detach(), src_small)
        for name, src_x, tgt_x, weight in levels:
            protos = estimators["feature" if name == "feat" else "output"].prototypes.detach()
            loss = pcl(features=src_x, labels=src_small, prototypes=protos) + pcl(
                features=tgt_x, labels=tgt_small, prototypes=protos
            )
            terms[f"pcl_{name}"] = (loss, weight)
        return terms

    return accumulate_and_step(sc, micro_batches, compute)


def source_init_checkpoint(ctx: RunContext) -> Path:
    """The stage-1 checkpoint the adaptation starts from (``proca.init_from``).

    Raises:
        CheckpointError: the file does not exist.
    """
    init = ctx.path("source.safetensors" if ctx.cfg.proca.init_from == "last" else "source.best.safetensors")
    if not init.is_file():
        raise CheckpointError(f"{init} does not exist; run --stage source first (or set proca.init_from).")
    return init


def adaptation_batches(ctx: RunContext, plan: Any) -> Callable[[int], Iterator[list[tuple[Any, Any]]]]:
    """``batches(start)`` for the adaptation stage: per step, this rank's (source, target) micro-batch pairs.

    The source stream (class-balanced or uniform, colour-augmented) and the target stream (uniform) are
    addressed by position, so step ``t``'s data is the same whatever the method, resume or world size.
    """
    cfg = ctx.cfg
    section = cfg.proca
    half = section.batch_size // 2
    src_data, src_fetch = source_training_data(
        ctx,
        size=section.source_size,
        jitter=section.color_jitter,
        class_balanced=section.class_balanced,
        total=section.iters * half,
        seed_stream=STREAM_IDS["proca_source"],
    )
    tgt_data = target_dataset(ctx, size=section.target_size)
    tgt_fetch = uniform_stream(len(tgt_data), seed=cfg.seed, stream=STREAM_IDS["proca_target"])  # type: ignore[arg-type]

    def batches(start: int) -> Iterator[list[tuple[Any, Any]]]:
        common = {"start": start, "end": section.iters, "seed": cfg.seed}
        src_it = make_loader(
            src_data,
            StepBatchSampler(src_fetch, plan, stream=STREAM_IDS["proca_source"], **common),
            num_workers=cfg.num_workers,
            device=ctx.device,
        )
        tgt_it = make_loader(
            tgt_data,
            StepBatchSampler(tgt_fetch, plan, stream=STREAM_IDS["proca_target"], **common),
            num_workers=cfg.num_workers,
            device=ctx.device,
        )
        while True:
            yield [(next(src_it), next(tgt_it)) for _ in range(plan.accum_steps)]

    return batches


def run_proca_stage(ctx: RunContext) -> LoopResult:
    """Train stage 3 from the source checkpoint and the init prototypes (``RUN/proca.safetensors`` at the end).

    With ``method = "memory-bank"`` the stage trains the memory-bank variant instead
    (:func:`proca.engine.stages.memory_bank.run_memory_bank_stage`; no init prototypes needed).
    """
    from proca.losses import PrototypeContrastiveLoss
    from proca.prototypes import PrototypeEstimator

    cfg = ctx.cfg
    if cfg.method == "memory-bank":
        from proca.engine.stages.memory_bank import run_memory_bank_stage

        return run_memory_bank_stage(ctx)
    section = cfg.proca
    model = build_stage_model(ctx, source_init_checkpoint(ctx))
    saved = load_prototypes(ctx.path("prototypes.safetensors"))
    dims = {"feature": model.feature_dim, "output": cfg.num_classes}
    estimators = {
        level: PrototypeEstimator(cfg.num_classes, dims[level], momentum=section.prototype_momentum)
        for level in PROTOTYPE_LEVELS
    }
    for level, est in estimators.items():
        protos = saved[f"{level}.prototypes"]
        if tuple(protos.shape) != (cfg.num_classes, dims[level]):
            raise CheckpointError(
                f"prototypes.safetensors holds {level} prototypes of shape {tuple(protos.shape)}, expected "
                f"{(cfg.num_classes, dims[level])}; rerun --stage prototypes (or --force)."
            )
        est.prototypes.copy_(protos)
        est.counts.copy_(saved[f"{level}.counts"])
        est.to(ctx.device)
    net = prepare_for_training(ctx, model)
    half = section.batch_size // 2
    per_device = None if section.per_device_batch is None else max(1, section.per_device_batch // 2)
    plan = make_plan(ctx, half, per_device)
    sc = StepContext(
        net=net,
        model=model,
        optimizer=build_optimizer(model, section),
        plan=plan,
        amp=cfg.amp,
        scaler=make_scaler(ctx),
        channels_last=cfg.channels_last,
        device=ctx.device,
        extra={
            "cfg": section,
            "estimators": estimators,
            "pcl": PrototypeContrastiveLoss(temperature=section.temperature),
        },
    )
    batches = adaptation_batches(ctx, plan)

    def prototypes() -> dict[str, Tensor]:
        return {f"{lv}.{n}": getattr(est, n) for lv, est in estimators.items() for n in ("prototypes", "counts")}

    def load_extra(extra: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for lv, est in estimators.items():
                est.prototypes.copy_(extra[f"{lv}.prototypes"])
                est.counts.copy_(extra[f"{lv}.counts"])

    return run_training_loop(
        ctx,
        stage="proca",
        section=section,
        sc=sc,
        batches=batches,
        train_step=proca_train_step,
        prototypes=prototypes,
        load_extra=load_extra,
    )
