"""Learning-rate schedule and the split of a global batch over processes and micro-batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from proca.errors import ConfigError

__all__ = ["BatchPlan", "LRSchedule", "plan_batch", "poly_lr", "set_lr"]


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9) -> float:
    """The release's poly decay: ``base_lr * (1 - iteration / max_iters) ** power``.

    ``iteration`` counts steps already taken (0 for the first step), as in the release.
    """
    if max_iters <= 0:
        raise ValueError("max_iters must be positive")
    return base_lr * (1.0 - min(iteration, max_iters) / max_iters) ** power


@dataclass(frozen=True)
class LRSchedule:
    """A stage's learning rate: an optional linear warm-up, then poly decay.

    ``lr(it) = poly(base_lr, it, length, power)``; during the first ``warmup_iters`` steps it is scaled by
    ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)`` (mmseg's linear warm-up, as DAFormer uses).
    """

    base_lr: float
    length: int
    power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6

    def __call__(self, iteration: int) -> float:
        lr = poly_lr(self.base_lr, iteration, self.length, self.power)
        if iteration < self.warmup_iters:
            lr *= 1.0 - (1.0 - iteration / self.warmup_iters) * (1.0 - self.warmup_ratio)
        return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's rate to ``lr * group['lr_mult']`` (head groups carry 10)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * float(group.get("lr_mult", 1.0))


@dataclass(frozen=True)
class BatchPlan:
    """Which of a step's ``global_batch`` samples this process handles, in how many micro-batches.

    Sample ``j`` of a step (0 <= j < global_batch) belongs to rank ``j % world_size``; each rank splits
    its share into ``accum_steps`` micro-batches of near-equal size (the same count on every rank, so
    collectives in the forward pass, such as SyncBatchNorm and prototype all-reduces, line up).

    Attributes:
        global_batch: samples per optimiser step, all processes together.
        world_size: processes.
        rank: this process.
        accum_steps: micro-batches per step on every rank.
        micro_batches: for each micro-batch, the step-local sample positions it holds.
    """

    global_batch: int
    world_size: int
    rank: int
    accum_steps: int
    micro_batches: tuple[tuple[int, ...], ...]

    def weight(self, micro: int) -> float:
        """Loss multiplier of micro-batch ``micro``: its share of the global batch times the world size.

        DDP averages gradients over processes, so summing ``weight * mean loss of the micro-batch`` over
        micro-batches and ranks gives the gradient of the mean over the global batch.
        """
        return len(self.micro_batches[micro]) * self.world_size / self.global_batch


def plan_batch(global_batch: int, world_size: int, rank: int, per_device_batch: int | None = None) -> BatchPlan:
    """Split a global batch over ranks and micro-batches (gradient accumulation).

    Args:
        global_batch: images per step, all processes together (the config's ``batch_size``).
        world_size: number of processes.
        rank: this process.
        per_device_batch: most images per forward pass (None: the whole share at once).

    Raises:
        ConfigError: fewer samples than processes, or a split that would leave some rank an empty micro-batch.
    """
    if global_batch < world_size:
        raise ConfigError(
            f"batch_size {global_batch} is smaller than the {world_size} processes; use --batch-size >= {world_size}."
        )
    shares = [len(range(r, global_batch, world_size)) for r in range(world_size)]
    largest = max(shares)
    cap = largest if per_device_batch is None else min(per_device_batch, largest)
    accum = math.ceil(largest / cap)
    if min(shares) < accum:
        raise ConfigError(
            f"per_device_batch {per_device_batch} with batch_size {global_batch} over {world_size} processes leaves "
            f"some process an empty micro-batch; choose a batch size divisible by {world_size} or a larger "
            "per_device_batch."
        )
    mine = list(range(rank, global_batch, world_size))
    base, extra = divmod(len(mine), accum)
    micro: list[tuple[int, ...]] = []
    start = 0
    for k in range(accum):
        size = base + (1 if k < extra else 0)
        micro.append(tuple(mine[start : start + size]))
        start += size
    return BatchPlan(global_batch, world_size, rank, accum, tuple(micro))
