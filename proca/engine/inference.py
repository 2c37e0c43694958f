"""Single- and multi-scale (+ flip) prediction, the way the release's ``test.py`` does it.

For every scale ``s`` the (already resized) input of size (h, w) is resized again to
``(int(h * s), int(w * s))`` (bilinear, ``align_corners=True``), run through the network, its logits
upsampled (bilinear, ``align_corners=True``) to the output size, and turned into probabilities with a
softmax; with ``flip`` the horizontally flipped input is handled the same way and flipped back. The
probabilities of all passes are averaged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from proca.data.classes import CLASS_SETS, ClassSet, get_class_set
from proca.errors import CheckpointError

__all__ = [
    "AsyncWriter",
    "Batch",
    "PreparedDataset",
    "ProgressBar",
    "aspect_input_size",
    "default_num_workers",
    "iterate_batches",
    "load_for_inference",
    "predict_probs",
    "resize_images",
]


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize normalised images with bicubic interpolation (antialiased when shrinking).

    The release resizes the 8-bit photo with PIL's bicubic filter in its dataset transform; this is the
    tensor equivalent used when :func:`predict_probs` is given ``input_size``.

    Shape:
        images: (B, 3, H, W) -> (B, 3, h, w).
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def aspect_input_size(image_size: tuple[int, int], reference: tuple[int, int], *, multiple: int = 8) -> tuple[int, int]:
    """The input size with the pixel count of ``reference`` and the aspect ratio of ``image_size``.

    A 1024x2048 photo with the 512x1024 reference gives exactly 512x1024; a 3:4 photo keeps its shape.

    Args:
        image_size: (H, W) of the photo.
        reference: (H, W) whose area to match (a checkpoint's evaluation input size).
        multiple: round both sides to a multiple of this (the network's output stride).
    """
    h, w = image_size
    area = reference[0] * reference[1]
    new_h = math.sqrt(area * h / w)
    new_w = math.sqrt(area * w / h)
    return (max(multiple, round(new_h / multiple) * multiple), max(multiple, round(new_w / multiple) * multiple))


def _probs(model: nn.Module, x: Tensor, out_size: tuple[int, int], flip: bool) -> Tensor:
    """Softmax of the upsampled logits of ``x`` (and of its mirror image, flipped back, summed)."""
    batch = x.shape[0]
    inputs = torch.cat([x, x.flip(-1)], dim=0) if flip else x
    logits = model(inputs)
    if isinstance(logits, (tuple, list)):
        logits = logits[-1]
    logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=True)
    probs = logits.softmax(dim=1)
    if flip:
        return probs[:batch] + probs[batch:].flip(-1)
    return probs


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: Tensor,
    *,
    out_size: tuple[int, int] | Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    input_size: tuple[int, int] | Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities averaged over scales (and horizontal flips), at ``out_size``.

    Args:
        model: maps normalised images (B, 3, h, w) to logits (B, C, h', w'); used as it is (call
            ``model.eval()`` first).
        images: normalised float images.
        out_size: (H, W) of the returned probabilities (the ground-truth or photo size).
        scales: factors applied to the input size, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``.
        flip: also average the horizontally flipped predictions.
        input_size: (h, w) to resize ``images`` to first (bicubic); ``None`` when the dataset transform
            already did it.

    Returns:
        Probabilities that sum to 1 over C, float32.

    Shape:
        images: (B, 3, h, w) -> (B, C, H, W).
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    out_hw = (int(out_size[0]), int(out_size[1]))
    if input_size is not None:
        images = resize_images(images, (int(input_size[0]), int(input_size[1])))
    h, w = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        size = (int(h * scale), int(w * scale))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        probs = _probs(model, x, out_hw, flip)
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(scales) * (2 if flip else 1))


# ---------------------------------------------------------------------------------------------------------------------
# Running a model over a dataset: shared by evaluation, pseudo labels and `proca infer`.


def load_for_inference(
    path: str | os.PathLike[str], device: torch.device
) -> tuple[nn.Module, ClassSet, dict[str, Any]]:
    """Load a checkpoint for prediction and check that its class set is one proca knows.

    Returns:
        The model (eval mode, on ``device``), its class set and the checkpoint metadata.

    Raises:
        CheckpointError: the checkpoint's class set or class count is not cityscapes19 (19) / synthia16 (16).
    """
    from proca.models import load_model

    loaded = load_model(path, map_location="cpu")
    meta = dict(loaded.metadata)
    model = loaded.model
    num = int(getattr(model, "num_classes", meta.get("num_classes", -1)))
    valid = ", ".join(f"{cs.name} ({cs.num_classes} classes)" for cs in CLASS_SETS.values())
    try:
        class_set = get_class_set(str(meta.get("class_set")))
    except ValueError:
        what = f"class set {meta['class_set']!r}" if meta.get("class_set") else "no known class set"
        raise CheckpointError(
            f"{path}: a {num}-class model with {what} cannot be mapped to Cityscapes; valid: {valid}."
        ) from None
    if num != class_set.num_classes:
        raise CheckpointError(
            f"{path}: the model predicts {num} classes but its metadata names {class_set.name} "
            f"({class_set.num_classes}); valid: {valid}."
        )
    model.to(device).eval()
    return model, class_set, meta


def _plain(t: Tensor) -> Tensor:
    return t.as_subclass(Tensor) if type(t) is not Tensor else t


def _header_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError):
        return None


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
    """Loader processes: a few on CUDA (decoding 2048x1024 PNGs would starve the GPU), none on CPU."""
    if device.type != "cuda":
        return 0
    return min(4, os.cpu_count() or 1)


class ProgressBar:
    """A rich progress bar with ETA and one metric field; silent when ``enabled`` is false."""

    def __init__(self, total: int, description: str, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self.total = total
        self.description = description

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metric]}"),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, metric="")
        return self

    def advance(self, n: int = 1, metric: str | None = None) -> None:
        if self._progress is not None:
            fields = {} if metric is None else {"metric": metric}
            self._progress.update(self._task, advance=n, **fields)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


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
