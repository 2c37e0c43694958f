"""Stage 3, memory-bank variant (``--method memory-bank``): supervised source loss + memory-bank contrast.

Instead of one prototype per class, a projection head embeds the backbone features and per-class queues
of stored pixel embeddings and class means (:class:`proca.losses.memory_bank.MemoryBank`) serve as the
contrast set. The projection head trains with the model (inside the same DDP module, its own optimiser
group) but is not part of the exported checkpoint; it and the bank live in the resumable state only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from proca.engine.stages.adapt import adaptation_batches, source_init_checkpoint
from proca.engine.stages.common import (
    STREAM_IDS,
    LoopResult,
    LossTerms,
    RunContext,
    StepContext,
    StepResult,
    accumulate_and_step,
    build_stage_model,
    make_plan,
    make_scaler,
    prepare_for_training,
    run_training_loop,
    sample_seed,
    supervised_loss,
)
from proca.errors import CheckpointError

__all__ = ["memory_bank_train_step", "run_memory_bank_stage"]

_HEAD = "projection_head."
_BANK = "memory_bank."
_STEP = "memory_bank.step"


def memory_bank_train_step(sc: StepContext, micro_batches: list[tuple[dict[str, Any], dict[str, Any]]]) -> StepResult:
    """One step of the memory-bank variant.

    For each (source, target) micro-batch:

    1. source and target go through the network (model + projection head) in two forward passes in
       train mode, each giving features, logits (stride 8) and unit-norm embeddings (B, D, h, w);
    2. supervised loss on the source: CE + ``lovasz_weight`` x Lovasz, as in the prototype variant;
    3. labels per embedding pixel: source ground truth downsampled (nearest), target argmax where the
       maximum score passes ``proca.threshold`` (``threshold_mode``), else 255;
    4. loss = sup + lambda_source MB(src anchors, half mispredicted) + lambda_target MB(tgt anchors),
       each contrasted against the bank's stored entries (read only).

    After the optimiser step (not for a skipped step) the step's detached source embeddings, then target
    embeddings (all micro-batches of this rank together) are enqueued; under DDP the bank gathers every
    rank's entries, so the banks stay identical. Random choices draw from a generator seeded by
    ``(seed, step, rank)``, so a resumed run repeats them exactly.

    Args:
        sc: step context; ``sc.extra`` holds ``cfg`` (the proca section), ``bank``, ``criterion``,
            ``generator``, ``step`` (a one-element int64 tensor counting steps) and ``seed``.
        micro_batches: this rank's (source, target) micro-batch pairs.

    Returns:
        Loss terms ``ce``, ``lovasz``, ``mb_src``, ``mb_tgt``, ``total`` (or the skipped term's name).

    Shape:
        source image (B, 3, Hs, Ws), label (B, Hs, Ws); target image (B, 3, Ht, Wt); embeddings (B, D, h, w).
    """
    from proca.prototypes import confident_labels, downsample_labels

    cfg = sc.extra["cfg"]
    mb = cfg.memory_bank
    bank = sc.extra["bank"]
    criterion = sc.extra["criterion"]
    generator: torch.Generator = sc.extra["generator"]
    step = int(sc.extra["step"].item())
    position = step * sc.plan.world_size + sc.plan.rank
    generator.manual_seed(sample_seed(sc.extra["seed"], STREAM_IDS["memory_bank"], position))
    stored: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def compute(pair: tuple[dict[str, Any], dict[str, Any]]) -> LossTerms:
        src, tgt = pair
        src_images, tgt_images = sc.images(src), sc.images(tgt)
        src_labels = src["label"].to(sc.device, non_blocking=True)
        with sc.autocast():
            _, src_logits, src_emb = sc.net(src_images)
            _, tgt_logits, tgt_emb = sc.net(tgt_images)
        src_logits, tgt_logits = src_logits.float(), tgt_logits.float()
        terms = supervised_loss(src_logits, src_labels, cfg.lovasz_weight)
        src_small = downsample_labels(src_labels, src_emb.shape[-2:])
        tgt_small = confident_labels(tgt_logits.detach(), cfg.threshold, mode=cfg.threshold_mode)
        src_pred = src_logits.detach().argmax(1)
        terms["mb_src"] = (criterion(src_emb, src_small, bank, src_pred, generator=generator), mb.lambda_source)
        terms["mb_tgt"] = (criterion(tgt_emb, tgt_small, bank, generator=generator), mb.lambda_target)
        stored.append((src_emb.detach(), src_small, tgt_emb.detach(), tgt_small))
        return terms

    result = accumulate_and_step(sc, micro_batches, compute)
    sc.extra["step"] += 1
    if result.skipped is None:  # every rank skips together, so the collective enqueue stays in step
        bank.enqueue(torch.cat([s[0] for s in stored]), torch.cat([s[1] for s in stored]), generator=generator)
        bank.enqueue(torch.cat([s[2] for s in stored]), torch.cat([s[3] for s in stored]), generator=generator)
    return result


def run_memory_bank_stage(ctx: RunContext) -> LoopResult:
    """Train stage 3 with the memory-bank loss from the source checkpoint (``RUN/proca.safetensors`` at the end).

    Needs no ``prototypes.safetensors``. The exported checkpoints hold the segmentation model only; the
    projection head, its optimiser group, the bank's queues and the step counter are in the resumable
    state ``RUN/state/proca.safetensors`` (``projection_head.*``, ``memory_bank.*``).
    """
    from proca.losses.memory_bank import MemoryBank, MemoryBankContrastiveLoss, ProjectionHead

    cfg = ctx.cfg
    section = cfg.proca
    mb = section.memory_bank
    with torch.random.fork_rng(devices=[]):  # the head's init depends on the seed only, not on earlier stages
        torch.manual_seed(cfg.seed)
        model = build_stage_model(ctx, source_init_checkpoint(ctx))
        head = ProjectionHead(model.feature_dim, mb.hidden_dim, mb.embedding_dim)
    bank = MemoryBank(
        cfg.num_classes,
        mb.embedding_dim,
        pixel_queue_size=mb.pixel_queue_size,
        prototype_queue_size=mb.prototype_queue_size,
        pixels_per_class=mb.pixels_per_class,
    ).to(ctx.device)
    criterion = MemoryBankContrastiveLoss(
        mb.temperature,
        base_temperature=mb.base_temperature,
        max_anchors_per_class=mb.max_anchors_per_class,
        min_pixels_per_class=mb.min_pixels_per_class,
        denominator=mb.denominator,
    )
    net = prepare_for_training(ctx, model, head)
    groups = model.param_groups(section.lr, head_lr_mult=section.head_lr_mult, weight_decay=section.weight_decay)
    groups.append(
        {
            "params": [p for p in head.parameters() if p.requires_grad],
            "lr": section.lr * mb.head_lr_mult,
            "weight_decay": section.weight_decay,
            "name": "projection_head",
            "lr_mult": mb.head_lr_mult,
        }
    )
    optimizer = torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)
    half = section.batch_size // 2
    per_device = None if section.per_device_batch is None else max(1, section.per_device_batch // 2)
    plan = make_plan(ctx, half, per_device)
    step = torch.zeros(1, dtype=torch.long)
    sc = StepContext(
        net=net,
        model=model,
        optimizer=optimizer,
        plan=plan,
        amp=cfg.amp,
        scaler=make_scaler(ctx),
        channels_last=cfg.channels_last,
        device=ctx.device,
        extra={
            "cfg": section,
            "bank": bank,
            "criterion": criterion,
            "generator": torch.Generator(),  # CPU: the same draws on every device
            "step": step,
            "seed": cfg.seed,
        },
    )

    def state_extra() -> dict[str, Tensor]:
        tensors = {f"{_HEAD}{k}": v for k, v in head.state_dict().items()}
        tensors.update({f"{_BANK}{k}": v for k, v in bank.state_dict().items()})
        tensors[_STEP] = step
        return tensors

    def load_extra(extra: dict[str, Tensor]) -> None:
        missing = [k for k in state_extra() if k not in extra]
        if missing:
            raise CheckpointError(
                f"{ctx.path('state/proca.safetensors')} lacks the memory-bank state ({missing[0]}, ...); it was "
                "written by another --method: resume with that method, or use --force."
            )
        head.load_state_dict({k[len(_HEAD) :]: v for k, v in extra.items() if k.startswith(_HEAD)})
        bank.load_state_dict({k[len(_BANK) :]: v for k, v in extra.items() if k.startswith(_BANK) and k != _STEP})
        step.copy_(extra[_STEP])

    def bank_tensors() -> dict[str, Tensor]:
        return dict(bank.state_dict())

    return run_training_loop(
        ctx,
        stage="proca",
        section=section,
        sc=sc,
        batches=adaptation_batches(ctx, plan),
        train_step=memory_bank_train_step,
        load_extra=load_extra,
        state_extra=state_extra,
        synced=("memory_bank", bank_tensors),
    )
