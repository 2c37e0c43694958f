"""The datasets and index streams of the stages: source (class-balanced), target, pseudo-labelled target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from proca.engine.launch import any_flag, barrier
from proca.engine.stages.common import RunContext, class_balanced_stream, uniform_stream
from proca.errors import DataError

__all__ = [
    "ensure_label_info",
    "source_dataset",
    "source_root",
    "source_training_data",
    "target_dataset",
]


def source_root(ctx: RunContext) -> Path:
    """``DATA_ROOT/gtav`` or ``DATA_ROOT/synthia``."""
    return ctx.data_root / ctx.cfg.src


def ensure_label_info(ctx: RunContext, *, skip_bad: bool = False) -> Path:
    """The source label info: ``SRC_ROOT/<src>_label_info.json`` (or the release's ``.p``) if present,
    else ``RUN/<src>_label_info.json``, generated here (rank 0) when missing."""
    root = source_root(ctx)
    candidates = (
        root / f"{ctx.cfg.src}_label_info.json",
        root / f"{ctx.cfg.src}_label_info.p",
        ctx.path(f"{ctx.cfg.src}_label_info.json"),
    )
    found = next((c for c in candidates if c.is_file()), None)
    # a collective: every process has looked before process 0 may write the file below
    if not any_flag(found is None, ctx.device):
        assert found is not None
        return found
    target = ctx.path(f"{ctx.cfg.src}_label_info.json")
    if ctx.is_main:
        from proca.data.label_info import build_label_info

        ctx.say(f"label info: scanning the {ctx.cfg.src} labels in {root} (once) -> {target}")
        info = build_label_info(
            ctx.cfg.src, root, workers=max(1, ctx.cfg.num_workers), skip_bad=skip_bad, progress=ctx.progress,
            class_set=ctx.class_set,
        )  # fmt: skip
        info.save(target)
    barrier()
    return target


def source_dataset(
    ctx: RunContext, *, size: Sequence[int], jitter: bool, files: Sequence[str] | None = None, train: bool = True
) -> Dataset:
    """The source train set with the source transform (resize, optional colour augmentation, normalise)."""
    from proca.data.datasets import GTA5Dataset, SynthiaDataset
    from proca.data.transforms import source_train_transform

    transform = source_train_transform((int(size[0]), int(size[1])), jitter=jitter and train)
    root = source_root(ctx)
    if ctx.cfg.src == "synthia":
        return SynthiaDataset(root, files=files, transform=transform)
    return GTA5Dataset(root, files=files, class_set=ctx.class_set, transform=transform)


def source_training_data(
    ctx: RunContext, *, size: Sequence[int], jitter: bool, class_balanced: bool, total: int, seed_stream: int
) -> tuple[Dataset, Callable[[int, int], np.ndarray]]:
    """The source train set and its index stream (class-balanced from the label info, or shuffled)."""
    if class_balanced:
        from proca.data.label_info import read_label_info
        from proca.data.sampler import ClassBalancedSampler

        if ctx.label_info is None:
            raise DataError("class-balanced sampling needs the source label info; run `proca label-info` first.")
        info = read_label_info(ctx.label_info)
        dataset = source_dataset(ctx, size=size, jitter=jitter, files=info.files)
        sampler = ClassBalancedSampler(info, total, num_classes=ctx.cfg.num_classes, seed=ctx.cfg.seed)
        return dataset, class_balanced_stream(sampler)
    dataset = source_dataset(ctx, size=size, jitter=jitter)
    return dataset, uniform_stream(len(dataset), seed=ctx.cfg.seed, stream=seed_stream)  # type: ignore[arg-type]


def target_dataset(ctx: RunContext, *, size: Sequence[int]) -> Dataset:
    """The unlabelled target train set (Cityscapes train images), resized and normalised."""
    from proca.data.datasets import CityscapesDataset
    from proca.data.transforms import target_train_transform

    return CityscapesDataset(
        ctx.data_root / "cityscapes",
        split="train",
        class_set=ctx.class_set,
        labels=False,
        transform=target_train_transform((int(size[0]), int(size[1]))),
    )
