"""Data streams of the training stages: datasets, position-addressed index streams and one ``step_batches``.

Determinism: every sample's augmentation is seeded from ``(seed, stream, position in the stream)``
(:class:`SeededSamples`), and the streams of dataset indices are pure functions of their position
(:class:`StepBatchSampler`). So the data of step ``t`` does not depend on the number of DataLoader
workers, the number of processes, or on whether the run was interrupted: resuming at step ``t``
rebuilds exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from proca.engine.context import RunContext
from proca.engine.launch import any_flag, barrier
from proca.engine.schedule import BatchPlan
from proca.errors import DataError

__all__ = [
    "STREAM_IDS",
    "SeededSamples",
    "StepBatchSampler",
    "Stream",
    "adaptation_plan",
    "adaptation_streams",
    "class_balanced_stream",
    "ensure_label_info",
    "make_loader",
    "sample_seed",
    "source_dataset",
    "source_root",
    "source_stream",
    "step_batches",
    "target_dataset",
    "training_workers",
    "uniform_stream",
]

STREAM_IDS = {
    "source": 1,
    "proca_source": 2,
    "proca_target": 3,
    "ssl": 4,
    "memory_bank": 5,
    "daformer_source": 6,
    "daformer_target": 7,
    "daformer_mix": 8,
    "daformer_dropout": 9,
}
"""Seed streams of the training stages' data (part of every sample's seed), of the memory bank's sampling and
of the DAFormer stage's mixing and masking draws."""

Fetch = Callable[[int, int], np.ndarray]
"""``fetch(begin, end)``: the dataset indices at stream positions ``begin .. end - 1``."""


def sample_seed(seed: int, stream: int, position: int) -> int:
    """The seed of the sample at ``position`` of data stream ``stream`` (independent of workers and ranks)."""
    return int(np.random.SeedSequence([seed, stream, 0, position]).generate_state(1, np.uint32)[0])


def uniform_stream(num_items: int, *, seed: int, stream: int) -> Fetch:
    """A shuffled stream over ``num_items`` (a fresh permutation per epoch), addressable by position."""
    if num_items <= 0:
        raise DataError("a training dataset is empty; check --data-root.")
    cache: dict[int, np.ndarray] = {}

    def perm(epoch: int) -> np.ndarray:
        if epoch not in cache:
            if len(cache) > 4:
                cache.clear()
            rng = np.random.default_rng(np.random.SeedSequence([seed, stream, 1, epoch]))
            cache[epoch] = rng.permutation(num_items)
        return cache[epoch]

    def fetch(begin: int, end: int) -> np.ndarray:
        return np.array([perm(p // num_items)[p % num_items] for p in range(begin, end)], dtype=np.int64)

    return fetch


def class_balanced_stream(sampler: Any) -> Fetch:
    """Wrap a :class:`proca.data.sampler.ClassBalancedSampler` (common stream) as ``fetch(begin, end)``."""

    def fetch(begin: int, end: int) -> np.ndarray:
        return np.asarray(sampler.stream(begin, end), dtype=np.int64)

    return fetch


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced with all RNGs seeded by ``seed``.

    The transforms draw from torch's (and possibly Python's and NumPy's) global RNG; here those are
    seeded per sample and restored afterwards, so the caller's RNG states are untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
                return self.dataset[int(index)]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start .. end - 1``, this rank's micro-batches of ``(dataset index, sample seed)``.

    Step ``t`` uses stream positions ``t * B .. (t + 1) * B - 1`` (B = the global batch); position ``j``
    of a step goes to the rank and micro-batch :class:`~proca.engine.schedule.BatchPlan` assigns.
    """

    def __init__(self, fetch: Fetch, plan: BatchPlan, *, start: int, end: int, seed: int, stream: int) -> None:
        self.fetch = fetch
        self.plan = plan
        self.start = start
        self.end = end
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.plan.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.plan.global_batch
        for step in range(self.start, self.end):
            indices = self.fetch(step * b, (step + 1) * b)
            for micro in self.plan.micro_batches:
                yield [(int(indices[j]), sample_seed(self.seed, self.stream, step * b + j)) for j in micro]


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": torch.stack([s["image"].as_subclass(Tensor) for s in samples])}
    if "label" in samples[0]:
        out["label"] = torch.stack([s["label"].as_subclass(Tensor).long() for s in samples])
    out["name"] = [s.get("name", "") for s in samples]
    return out


def make_loader(
    dataset: Dataset, sampler: StepBatchSampler, *, num_workers: int, device: torch.device
) -> Iterator[dict[str, Any]]:
    """A DataLoader over ``SeededSamples(dataset)`` driven by ``sampler`` (one item per micro-batch)."""
    loader = DataLoader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
    return iter(loader)


@dataclass(frozen=True)
class Stream:
    """One data stream of a stage: a dataset, its index stream and the stream id in every sample's seed."""

    dataset: Dataset
    fetch: Fetch
    stream_id: int


def step_batches(
    ctx: RunContext, plan: BatchPlan, streams: Sequence[Stream], *, start: int, end: int, num_workers: int
) -> Iterator[list[Any]]:
    """Per step ``start .. end - 1``: this rank's micro-batches (a dict per micro-batch for one stream, a tuple
    of dicts, one per stream, for several: the adaptation stage's (source, target) pairs)."""
    loaders = [
        make_loader(
            s.dataset,
            StepBatchSampler(s.fetch, plan, start=start, end=end, seed=ctx.cfg.seed, stream=s.stream_id),
            num_workers=num_workers,
            device=ctx.device,
        )
        for s in streams
    ]
    for _ in range(start, end):
        if len(loaders) == 1:
            yield [next(loaders[0]) for _ in range(plan.accum_steps)]
        else:
            yield [tuple(next(it) for it in loaders) for _ in range(plan.accum_steps)]


# ---------------------------------------------------------------------------------------------- datasets


def source_root(ctx: RunContext) -> Path:
    """``DATA_ROOT/gtav`` or ``DATA_ROOT/synthia`` (a dataset card: the card's folder)."""
    if ctx.cfg.source_key == "card":
        return Path(ctx.cfg.src).parent
    return ctx.data_root / ctx.cfg.src


def _card_label_info(ctx: RunContext, skip_bad: bool) -> Path:
    """``RUN/card_label_info.json`` for a dataset card as the source, scanned here (rank 0) when missing, and
    recorded in ``RUN/inputs.json`` like the built-in sources' label info."""
    from proca.engine.runfolder import check_label_info_identity

    target = ctx.path("card_label_info.json")
    missing = any_flag(not target.is_file(), ctx.device)
    if ctx.is_main:
        if missing:
            from proca.data.cards import card_label_info

            ctx.say(f"label info: scanning the labels of {ctx.cfg.src} (once) -> {target}")
            info = card_label_info(ctx.cfg.src, class_set=ctx.class_set, skip_bad=skip_bad, progress=ctx.progress)
            info.save(target)
        check_label_info_identity(ctx.run_dir, target, write=True)
    barrier()
    return target


def ensure_label_info(ctx: RunContext, *, skip_bad: bool = False, workers: int = 1) -> Path:
    """The source label info: ``SRC_ROOT/<src>_label_info.json`` (or the release's ``.p``) if present,
    else ``RUN/<src>_label_info.json``, generated here (rank 0) when missing (``RUN/card_label_info.json`` for a
    dataset card). The file used is recorded in ``RUN/inputs.json`` (path and SHA-256), so that ``--resume`` can
    refuse another or a changed one."""
    from proca.engine.runfolder import check_label_info_identity, label_info_candidates

    if ctx.cfg.source_key == "card":
        return _card_label_info(ctx, skip_bad)
    root = source_root(ctx)
    candidates = label_info_candidates(ctx.data_root, ctx.cfg.src, ctx.run_dir)
    found = next((c for c in candidates if c.is_file()), None)
    # a collective: every process has looked before process 0 may write the file below
    if not any_flag(found is None, ctx.device):
        assert found is not None
        if ctx.is_main:
            check_label_info_identity(ctx.run_dir, found, write=True)
        return found
    target = candidates[-1]
    if ctx.is_main:
        from proca.data.label_info import build_label_info

        ctx.say(f"label info: scanning the {ctx.cfg.src} labels in {root} (once) -> {target}")
        info = build_label_info(
            ctx.cfg.src, root, workers=max(1, workers), skip_bad=skip_bad, progress=ctx.progress,
            class_set=ctx.class_set,
        )  # fmt: skip
        info.save(target)
        if info.skipped:
            ctx.say(f"label info: {len(info.skipped)} of {len(info.skipped) + len(info.files)} files skipped "
                    f"(--skip-bad: {info.skip_summary()}); they are not trained on")  # fmt: skip
        check_label_info_identity(ctx.run_dir, target, write=True)
    barrier()
    return target


def source_dataset(
    ctx: RunContext, *, size: Sequence[int], jitter: bool, files: Sequence[str] | None = None, train: bool = True
) -> Dataset:
    """The source train set with the source transform (resize, optional colour augmentation, normalise).

    With ``--skip-bad`` (and no ``files``) only the files the label info kept: the pairs it left out
    (unreadable, image and label of different sizes) are never read.
    """
    from proca.data.datasets import GTA5Dataset, SynthiaDataset
    from proca.data.transforms import source_train_transform

    if files is None and ctx.skip_bad and ctx.label_info is not None:
        from proca.data.label_info import read_label_info

        files = read_label_info(ctx.label_info).files

    transform = source_train_transform((int(size[0]), int(size[1])), jitter=jitter and train)
    root = source_root(ctx)
    if ctx.cfg.source_key == "card":
        from proca.data.cards import card_dataset

        return card_dataset(ctx.cfg.src, class_set=ctx.class_set, transform=transform, files=files)
    if ctx.cfg.src == "synthia":
        return SynthiaDataset(root, files=files, transform=transform)
    return GTA5Dataset(root, files=files, class_set=ctx.class_set, transform=transform)


def source_stream(
    ctx: RunContext, *, size: Sequence[int], jitter: bool, class_balanced: bool, total: int, stream_id: int
) -> Stream:
    """The source train set and its index stream (class-balanced from the label info, or shuffled)."""
    if class_balanced:
        from proca.data.label_info import read_label_info
        from proca.data.sampler import ClassBalancedSampler

        if ctx.label_info is None:
            raise DataError("class-balanced sampling needs the source label info; run `proca label-info` first.")
        info = read_label_info(ctx.label_info)
        dataset = source_dataset(ctx, size=size, jitter=jitter, files=info.files)
        sampler = ClassBalancedSampler(info, total, num_classes=ctx.cfg.num_classes, seed=ctx.cfg.seed)
        return Stream(dataset, class_balanced_stream(sampler), stream_id)
    dataset = source_dataset(ctx, size=size, jitter=jitter)
    return Stream(dataset, uniform_stream(len(dataset), seed=ctx.cfg.seed, stream=stream_id), stream_id)  # type: ignore[arg-type]


def target_dataset(ctx: RunContext, *, size: Sequence[int]) -> Dataset:
    """The unlabelled target train set (the train images of a built-in ``tgt``, see :mod:`proca.data.registry`;
    a card's or a folder's images, see :mod:`proca.data.targets`), resized to ``size`` whatever each image's own
    size, and normalised."""
    from proca.data.registry import open_target_images
    from proca.data.transforms import target_train_transform

    transform = target_train_transform((int(size[0]), int(size[1])))
    return open_target_images(ctx.cfg.tgt, ctx.data_root, class_set=ctx.class_set, transform=transform)


def adaptation_streams(ctx: RunContext, plan: BatchPlan) -> list[Stream]:
    """The adaptation stage's two streams: the source (class-balanced or uniform, colour-augmented) and the
    target (uniform). Both are addressed by position, so step ``t``'s data is the same whatever the method,
    resume or world size."""
    section = ctx.cfg.proca
    source = source_stream(
        ctx,
        size=section.source_size,
        jitter=section.color_jitter,
        class_balanced=section.class_balanced,
        total=section.iters * plan.global_batch,
        stream_id=STREAM_IDS["proca_source"],
    )
    target = target_dataset(ctx, size=section.target_size)
    fetch = uniform_stream(len(target), seed=ctx.cfg.seed, stream=STREAM_IDS["proca_target"])  # type: ignore[arg-type]
    return [source, Stream(target, fetch, STREAM_IDS["proca_target"])]


def adaptation_plan(ctx: RunContext) -> BatchPlan:
    """This rank's share of the adaptation stage's pairs: ``batch_size`` counts source and target images."""
    from proca.engine.schedule import plan_batch

    section = ctx.cfg.proca
    per_device = None if section.per_device_batch is None else max(1, section.per_device_batch // 2)
    return plan_batch(section.batch_size // 2, ctx.dist.world_size, ctx.dist.rank, per_device)


def training_workers(ctx: RunContext, *, announce: bool = True) -> int:
    """The run's ``num_workers``, capped at the CPUs this process may use (said once, on rank 0)."""
    from proca.engine.device import cap_workers

    if announce and ctx.is_main:
        return cap_workers(ctx.cfg.num_workers, what="training DataLoader")
    return cap_workers(ctx.cfg.num_workers, say=None)
