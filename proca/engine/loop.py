"""The plumbing of running a model over a dataset, shared by evaluation, pseudo labels and ``proca infer``.

:class:`PreparedDataset` applies the test transform and records each item's output size,
:func:`iterate_batches` groups consecutive items of equal size into :class:`Batch` es,
:class:`AsyncWriter` writes the results on background threads, and :func:`default_num_workers` picks the
loader processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from proca.engine.device import cap_workers

__all__ = ["AsyncWriter", "Batch", "PreparedDataset", "default_num_workers", "iterate_batches"]


def _plain(t: Tensor) -> Tensor:
    return t.as_subclass(Tensor) if type(t) is not Tensor else t


def _header_size(path: str) -> tuple[int, int] | None:
    from proca.data._decode import image_header_size

    return image_header_size(path)


class PreparedDataset(Dataset):
    """Wraps a proca dataset: applies the test transform where the dataset did not, and records the output size.

    Items are dicts with ``image`` (3, h, w) normalised float, ``label`` (H, W) int64 when the dataset has
    labels, ``name``, ``path``, ``index`` and ``out_size`` (H, W): the label size, else the photo's own size,
    i.e. the resolution predictions are made at. With ``keep_photo`` the untransformed uint8 photo is kept
    under ``photo`` (overlays).

    Args:
        dataset: a dataset whose items follow the proca.data contract.
        input_size: network input (h, w) for untransformed images (``None``: the image's own size).
        size_fn: instead of ``input_size``, a function from the photo's (H, W) to the input (h, w).
        keep_photo: keep the uint8 photo.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        input_size: tuple[int, int] | None = None,
        size_fn: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
        keep_photo: bool = False,
    ) -> None:
        self.dataset = dataset
        self.input_size = input_size
        self.size_fn = size_fn
        self.keep_photo = keep_photo

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        image = sample["image"]
        photo_size: tuple[int, int] | None = None
        photo = None
        if image.dtype == torch.uint8:
            from proca.data.transforms import test_transform

            photo_size = (int(image.shape[-2]), int(image.shape[-1]))
            photo = _plain(image)
            size = self.size_fn(photo_size) if self.size_fn is not None else self.input_size
            sample = test_transform(size)(dict(sample))
        out: dict[str, Any] = {
            "index": index,
            "image": _plain(sample["image"]).float(),
            "name": str(sample.get("name", index)),
            "path": str(sample.get("path", "")),
        }
        if sample.get("label") is not None:
            out["label"] = _plain(sample["label"]).long()
            out_size = tuple(out["label"].shape[-2:])
        elif photo_size is not None:
            out_size = photo_size
        else:
            out_size = _header_size(out["path"]) or tuple(out["image"].shape[-2:])
        out["out_size"] = (int(out_size[0]), int(out_size[1]))
        if self.keep_photo and photo is not None:
            out["photo"] = photo
        return out


@dataclass
class Batch:
    """Samples of one forward pass: equal input and output sizes.

    Shape:
        images: (B, 3, h, w); labels: (B, H, W) or None; out_size: (H, W).
    """

    images: Tensor
    labels: Tensor | None
    out_size: tuple[int, int]
    names: list[str]
    paths: list[str]
    indices: list[int]
    photos: list[Tensor] | None


def _collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


def _stack(group: list[dict[str, Any]]) -> Batch:
    labels = [s["label"] for s in group if "label" in s]
    photos = [s["photo"] for s in group if "photo" in s]
    return Batch(
        images=torch.stack([s["image"] for s in group]),
        labels=torch.stack(labels) if len(labels) == len(group) else None,
        out_size=group[0]["out_size"],
        names=[s["name"] for s in group],
        paths=[s["path"] for s in group],
        indices=[s["index"] for s in group],
        photos=photos if len(photos) == len(group) else None,
    )


def iterate_batches(
    dataset: PreparedDataset,
    *,
    batch_size: int = 1,
    indices: Sequence[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es of up to ``batch_size`` consecutive samples whose sizes agree.

    Samples are read in the order of ``indices`` (all, in order, by default); a run of samples is cut where
    the input or output size changes, so mixed-size inputs still work (sort ``indices`` by size to batch well).
    """
    order = list(range(len(dataset))) if indices is None else list(indices)
    loader = DataLoader(
        Subset(dataset, order),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=pin_memory,
    )
    pending: list[dict[str, Any]] = []
    for samples in loader:
        for sample in samples:
            key = (tuple(sample["image"].shape), sample["out_size"], "label" in sample)
            if pending and (len(pending) == batch_size or key != pending[0]["_key"]):
                yield _stack(pending)
                pending = []
            sample["_key"] = key
            pending.append(sample)
    if pending:
        yield _stack(pending)


def default_num_workers(device: torch.device) -> int:
    """Loader processes: a few on CUDA (decoding 2048x1024 PNGs would starve the GPU), none on CPU.

    On CUDA: 4, or fewer where this process may use fewer CPUs (:func:`~proca.engine.device.usable_cpus`).
    """
    if device.type != "cuda":
        return 0
    return cap_workers(4, say=None)


class AsyncWriter:
    """Writes files on background threads (PNG compression releases the GIL) while the model runs.

    At most ``max_pending`` writes are queued; the first error is raised by :meth:`submit` or :meth:`close`.
    """

    def __init__(self, workers: int = 2, max_pending: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="proca-write")
        self._pending: list[Future[None]] = []
        self._max = max_pending

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self._max:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            for fut in self._pending:
                fut.result()
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True)
