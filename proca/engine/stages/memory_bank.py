"""Stage 3, memory-bank variant (``--method memory-bank``): supervised source loss + memory-bank contrast.

Instead of one prototype per class, a projection head embeds the backbone features and per-class queues
of stored pixel embeddings and class means (:class:`proca.losses.memory_bank.MemoryBank`) serve as the
contrast set. The projection head trains with the model (inside the same DDP module, its own optimiser
group) but is not part of the exported checkpoint; it and the bank live in the resumable state only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from proca.config import ProcaStageConfig
from proca.engine.context import RunContext
from proca.engine.setup import build_solver, build_stage_model, prepare_for_training, stage_checkpoint
from proca.engine.stages.base import step_context, supervised_loss
from proca.engine.streams import (
    STREAM_IDS,
    adaptation_plan,
    adaptation_streams,
    sample_seed,
    step_batches,
    training_workers,
)
from proca.engine.trainer import LossTerms, StepContext, StepResult, TrainingStage, accumulate_and_step
from proca.errors import CheckpointError

__all__ = ["MemoryBankStage", "memory_bank_train_step"]

_HEAD = "projection_head."
_BANK = "memory_bank."
_STEP = "memory_bank.step"

Pair = tuple[dict[str, Any], dict[str, Any]]


def memory_bank_train_step(
    sc: StepContext,
    micro_batches: list[Pair],
    *,
    cfg: ProcaStageConfig,
    bank: Any,
    criterion: nn.Module,
    generator: torch.Generator,
    step: Tensor,
    seed: int,
) -> StepResult:
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
    rank's entries, so the banks stay identical. Random choices draw from ``generator`` seeded by
    ``(seed, step, rank)``, so a resumed run repeats them exactly.

    Args:
        sc: step context (``sc.net(x) -> (features, logits, embeddings)``).
        micro_batches: this rank's (source, target) micro-batch pairs.
        cfg: the proca config section (``memory_bank`` holds the loss weights).
        bank: the :class:`~proca.losses.memory_bank.MemoryBank`.
        criterion: the :class:`~proca.losses.memory_bank.MemoryBankContrastiveLoss`.
        generator: a CPU generator (the same draws on every device).
        step: a one-element int64 tensor counting steps (incremented here).
        seed: the run's seed.

    Returns:
        Loss terms ``ce``, ``lovasz``, ``mb_src``, ``mb_tgt``, ``total`` (or the skipped term's name).

    Shape:
        source image (B, 3, Hs, Ws), label (B, Hs, Ws); target image (B, 3, Ht, Wt); embeddings (B, D, h, w).
    """
    from proca.prototypes import confident_labels, downsample_labels

    mb = cfg.memory_bank
    position = int(step.item()) * sc.plan.world_size + sc.plan.rank
    generator.manual_seed(sample_seed(seed, STREAM_IDS["memory_bank"], position))
    stored: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def compute(pair: Pair) -> LossTerms:
        src, tgt = pair
        src_images, tgt_images, src_labels = sc.images(src), sc.images(tgt), sc.labels(src)
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
    step += 1
    if result.skipped is None:  # every rank skips together, so the collective enqueue stays in step
        bank.enqueue(torch.cat([s[0] for s in stored]), torch.cat([s[1] for s in stored]), generator=generator)
        bank.enqueue(torch.cat([s[2] for s in stored]), torch.cat([s[3] for s in stored]), generator=generator)
    return result


class MemoryBankStage(TrainingStage):
    """Stage 3 with the memory-bank loss from the source checkpoint (``RUN/proca.safetensors`` at the end).

    Needs no ``prototypes.safetensors``. The exported checkpoints hold the segmentation model only; the
    projection head, its optimiser group, the bank's queues and the step counter are in the resumable
    state ``RUN/state/proca.safetensors`` (``projection_head.*``, ``memory_bank.*``).
    """

    name = "proca"

    def __init__(self, ctx: RunContext) -> None:
        from proca.losses.memory_bank import MemoryBank, MemoryBankContrastiveLoss, ProjectionHead

        self.ctx = ctx
        cfg = ctx.cfg
        self.section: ProcaStageConfig = cfg.proca
        section, mb = self.section, self.section.memory_bank
        init = stage_checkpoint(ctx, "source", section.init_from, key="proca.init_from")
        with torch.random.fork_rng(devices=[]):  # the head's init depends on the seed only, not on earlier stages
            torch.manual_seed(cfg.seed)
            model = build_stage_model(ctx, init)
            self.head = ProjectionHead(model.feature_dim, mb.hidden_dim, mb.embedding_dim)
        self.bank = MemoryBank(
            cfg.num_classes,
            mb.embedding_dim,
            pixel_queue_size=mb.pixel_queue_size,
            prototype_queue_size=mb.prototype_queue_size,
            pixels_per_class=mb.pixels_per_class,
        ).to(ctx.device)
        self.criterion = MemoryBankContrastiveLoss(
            mb.temperature,
            base_temperature=mb.base_temperature,
            max_anchors_per_class=mb.max_anchors_per_class,
            min_pixels_per_class=mb.min_pixels_per_class,
            denominator=mb.denominator,
        )
        net = prepare_for_training(ctx, model, self.head)
        head_group = {
            "params": [p for p in self.head.parameters() if p.requires_grad],
            "lr": section.lr * mb.head_lr_mult,
            "weight_decay": section.weight_decay,
            "name": "projection_head",
            "lr_mult": mb.head_lr_mult,
        }
        optimizer, self.schedule = build_solver(ctx, model, section, extra_groups=[head_group])
        plan = adaptation_plan(ctx)
        self.sc = step_context(ctx, net, model, optimizer, plan)
        self.streams = adaptation_streams(ctx, plan)
        self.generator = torch.Generator()  # CPU: the same draws on every device
        self.step = torch.zeros(1, dtype=torch.long)

    def batches(self, start: int) -> Iterator[Any]:
        workers = training_workers(self.ctx, announce=start == 0)
        return step_batches(
            self.ctx, self.sc.plan, self.streams, start=start, end=self.section.iters, num_workers=workers
        )

    def train_step(self, micro_batches: list[Pair]) -> StepResult:
        return memory_bank_train_step(
            self.sc,
            micro_batches,
            cfg=self.section,
            bank=self.bank,
            criterion=self.criterion,
            generator=self.generator,
            step=self.step,
            seed=self.ctx.cfg.seed,
        )

    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"{_HEAD}{k}": v for k, v in self.head.state_dict().items()}
        tensors.update({f"{_BANK}{k}": v for k, v in self.bank.state_dict().items()})
        tensors[_STEP] = self.step
        return tensors

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        missing = [k for k in self.state_tensors() if k not in tensors]
        if missing:
            raise CheckpointError(
                f"{self.ctx.path('state/proca.safetensors')} lacks the memory-bank state ({missing[0]}, ...); it "
                "was written by another --method: resume with that method, or use --force."
            )
        self.head.load_state_dict({k[len(_HEAD) :]: v for k, v in tensors.items() if k.startswith(_HEAD)})
        self.bank.load_state_dict(
            {k[len(_BANK) :]: v for k, v in tensors.items() if k.startswith(_BANK) and k != _STEP}
        )
        self.step.copy_(tensors[_STEP])

    def synced_tensors(self) -> dict[str, dict[str, Tensor]]:
        return {"memory_bank": dict(self.bank.state_dict())}

    def step_state(self) -> list[Tensor]:
        # the step counter counts every step, skipped or not (it seeds the next step's draws)
        head_buffers = list(self.head.buffers())
        bank = list(self.bank.state_dict().values())
        return [*self.sc.model.buffers(), *head_buffers, *bank]
