"""Pseudo labels with per-class percentile thresholds, in bounded memory (the library side of ``proca pseudo-label``).

The release's rule: softmax over each target image, argmax class ``c`` and confidence ``p``; for each class
sort the confidences of the pixels predicted ``c`` ascending and take the one at position
``round(percent * n_c)`` as ``threshold_c``, capped at ``cap`` (0 where no pixel is predicted ``c``); a pixel
keeps its class only if ``p >= threshold_c``, else 255.

Here the confidences are counted in a per-class histogram of ``bins`` equal bins over [0, 1] instead of one
array of every pixel of the split (the release's grows to ~18 GB and is re-copied at every image), and the
thresholds are applied at the same resolution they were computed at (the release computed them at the
1024x512 input size and applied them at the 2048x1024 label size). ``threshold_c`` is the lower edge of the
bin holding the exact order statistic, so ``threshold_c <= exact_c < threshold_c + 1 / bins``; pixels are
compared by bin, so exactly the pixels the exact rule keeps are kept, plus those sharing the threshold's
bin just below it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proca.data.classes import IGNORE_INDEX, ClassSet
from proca.engine.device import cap_workers, resolve_device
from proca.engine.loop import AsyncWriter, PreparedDataset, default_num_workers, iterate_batches
from proca.engine.metrics import ConfusionMatrix, all_reduce_sum
from proca.engine.predict import predict_probs
from proca.engine.progress import ProgressBar
from proca.errors import ConfigError, DataError

__all__ = [
    "ConfidenceHistogram",
    "PseudoLabelStats",
    "apply_thresholds",
    "check_label_folder",
    "exact_thresholds",
    "file_sha256",
    "generate_pseudo_labels",
    "label_manifest",
    "pseudo_label_path",
]

THRESHOLDS_FILE = "thresholds.json"


def _release_position(n: int, percent: float) -> int:
    """``round(percent * n)`` with NumPy's half-to-even rounding, as the release does; kept inside [0, n)."""
    return min(int(np.round(n * percent)), n - 1)


def exact_thresholds(conf: Tensor, labels: Tensor, num_classes: int, *, percent: float, cap: float) -> Tensor:
    """Thresholds by a full sort of every confidence (the release's rule; O(N) memory, for reference and tests).

    Shape:
        conf: (N,) or (B, H, W) float; labels: same shape, predicted class -> (C,) float64.
    """
    conf = conf.reshape(-1).double()
    labels = labels.reshape(-1)
    out = torch.zeros(num_classes, dtype=torch.float64)
    for c in range(num_classes):
        x = torch.sort(conf[labels == c]).values
        if x.numel():
            out[c] = min(float(x[_release_position(x.numel(), percent)]), cap)
    return out


def confidence_bins(conf: Tensor, bins: int) -> Tensor:
    """Bin index ``floor(p * bins)`` of each confidence, in ``[0, bins)``.

    Shape:
        conf: any shape -> same shape, int64.
    """
    return (conf.float() * bins).floor().long().clamp_(0, bins - 1)


class ConfidenceHistogram:
    """Per-class histograms of the top-1 confidence: (C, bins) int64 counts, memory independent of the data.

    Args:
        num_classes: C.
        bins: equal bins over [0, 1] (at most 65536 so a bin fits in uint16).
    """

    def __init__(self, num_classes: int, *, bins: int = 10_000) -> None:
        if not 2 <= bins <= 65536:
            raise ConfigError(f"bins={bins}: use 2..65536 confidence bins.")
        self.num_classes = num_classes
        self.bins = bins
        self.counts = torch.zeros(num_classes, bins, dtype=torch.int64)

    @torch.no_grad()
    def update(self, conf: Tensor, labels: Tensor) -> None:
        """Count a batch of (confidence, predicted class) pairs.

        Shape:
            conf, labels: (B, H, W) or any equal shapes.
        """
        self.update_bins(confidence_bins(conf, self.bins), labels)

    @torch.no_grad()
    def update_bins(self, bin_index: Tensor, labels: Tensor) -> None:
        """Count pre-computed bin indices (see :func:`confidence_bins`)."""
        flat = labels.reshape(-1).long() * self.bins + bin_index.reshape(-1).long()
        counts = torch.bincount(flat, minlength=self.num_classes * self.bins).reshape(self.num_classes, self.bins)
        if self.counts.device != counts.device:
            self.counts = self.counts.to(counts.device)
        self.counts += counts

    def all_reduce(self) -> None:
        """Sum the histograms over the ranks of an initialised process group (no-op otherwise)."""
        self.counts = all_reduce_sum(self.counts)

    @property
    def pixels(self) -> Tensor:
        """(C,) int64 pixels predicted as each class."""
        return self.counts.sum(dim=1).cpu()

    def threshold_bins(self, *, percent: float, cap: float) -> Tensor:
        """(C,) int64 bin index of each threshold: a pixel of class c is kept iff its bin >= this."""
        counts = self.counts.cpu()
        cum = counts.cumsum(dim=1)
        n = cum[:, -1]
        out = torch.zeros(self.num_classes, dtype=torch.int64)
        cap_bin = math.ceil(cap * self.bins - 1e-9)
        for c in range(self.num_classes):
            if int(n[c]) == 0:
                continue
            k = _release_position(int(n[c]), percent)
            b = int(torch.searchsorted(cum[c], torch.tensor(k), right=True))  # first bin with cum > k
            out[c] = min(b, cap_bin)
        return out

    def thresholds(self, *, percent: float, cap: float) -> Tensor:
        """(C,) float64 thresholds (multiples of ``1 / bins``), at most ``cap`` rounded up to the bin grid."""
        return self.threshold_bins(percent=percent, cap=cap).double() / self.bins


def apply_thresholds(conf: Tensor, labels: Tensor, threshold_bins: Tensor, bins: int) -> Tensor:
    """Keep a pixel's class where its confidence bin reaches the class threshold, else 255.

    Shape:
        conf, labels: (B, H, W); threshold_bins: (C,) -> (B, H, W) int64.
    """
    tb = threshold_bins.to(labels.device)
    keep = confidence_bins(conf, bins) >= tb[labels.long()]
    return torch.where(keep, labels.long(), torch.full_like(labels, IGNORE_INDEX, dtype=torch.long))


@dataclass
class PseudoLabelStats:
    """What :func:`generate_pseudo_labels` did.

    Attributes:
        thresholds: per-class thresholds (probabilities).
        pixels: pixels predicted as each class.
        kept: pixels kept (not turned into 255) per class.
        num_images: images labelled.
        quality: where the dataset has ground truth, the pseudo labels scored against it on the kept pixels
            (``miou`` percent, ``per_class`` precision-like IoU) and the kept fraction of labelled pixels.
    """

    class_set: str
    thresholds: list[float]
    pixels: list[int]
    kept: list[int]
    num_images: int
    percent: float
    cap: float
    bins: int
    out_dir: str
    quality: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_fraction(self) -> list[float | None]:
        return [k / n if n else None for k, n in zip(self.kept, self.pixels, strict=True)]

    def to_json(self, class_set: ClassSet) -> dict[str, Any]:
        total = sum(self.pixels)
        return {
            "class_set": self.class_set,
            "percent": self.percent,
            "cap": self.cap,
            "bins": self.bins,
            "max_threshold_error": 1.0 / self.bins,
            "resolution": "each image's own size (label size where there is one); thresholds computed and applied "
            "at that size",
            "num_images": self.num_images,
            "kept_fraction": sum(self.kept) / total if total else None,
            "thresholds": self.thresholds,
            "classes": {
                name: {"threshold": t, "pixels": n, "kept": k, "kept_fraction": f}
                for name, t, n, k, f in zip(
                    class_set.classes, self.thresholds, self.pixels, self.kept, self.kept_fraction, strict=True
                )
            },
            "quality": self.quality,
            **self.info,
        }


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def label_manifest(
    checkpoint: str | os.PathLike[str],
    *,
    split: str,
    num_images: int,
    class_set: str,
    percent: float,
    cap: float,
    input_size: tuple[int, int] | list[int] | None,
    bins: int = 10_000,
    target: str = "cityscapes",
) -> dict[str, Any]:
    """What determines a folder of pseudo labels: the checkpoint's SHA-256, the target and the labelling settings.

    Stored as ``manifest`` in the folder's ``thresholds.json``; :func:`check_label_folder` compares it.
    """
    return {
        "checkpoint": Path(checkpoint).name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "target": target,
        "split": split,
        "num_images": int(num_images),
        "class_set": class_set,
        "percent": float(percent),
        "cap": float(cap),
        "bins": int(bins),
        "input_size": None if input_size is None else [int(v) for v in input_size],
    }


def check_label_folder(out: str | os.PathLike[str], manifest: dict[str, Any]) -> bool:
    """The rule for an ``--out`` folder that already holds files.

    Returns True when ``out`` holds finished pseudo labels of the same checkpoint (SHA-256) and settings
    (nothing to do), False when it does not exist or is empty (label it).

    Raises:
        ConfigError: ``out`` is a file, holds other files, or the pseudo labels of another checkpoint or
            other settings (one line naming what differs and ``--force``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the pseudo labels.")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    earlier: Any = None
    if (out / THRESHOLDS_FILE).is_file():
        import json

        try:
            earlier = json.loads((out / THRESHOLDS_FILE).read_text(encoding="utf-8")).get("manifest")
        except (ValueError, AttributeError):
            earlier = None
    if not isinstance(earlier, dict):
        raise ConfigError(f"--out {out} exists and is not empty; pass --force to overwrite its pseudo labels.")
    differ = [key for key in manifest if key != "checkpoint" and earlier.get(key) != manifest[key]]
    if not differ:
        return True
    what = ", ".join(
        f"checkpoint {earlier.get('checkpoint')} -> {manifest['checkpoint']} (another SHA-256)"
        if key == "checkpoint_sha256"
        else f"{key} {earlier.get(key)} -> {manifest[key]}"
        for key in differ
    )
    raise ConfigError(
        f"--out {out} holds pseudo labels made differently ({what}); pass --force to replace them, "
        "or choose another --out."
    )


def pseudo_label_path(out_dir: str | os.PathLike[str], name: str) -> Path:
    """``out_dir/<name>.png`` with the dataset's ``name`` (``"<city>/<city>_<seq>_<frame>"`` for Cityscapes),
    the layout :class:`proca.data.PseudoLabelDataset` reads."""
    return Path(out_dir) / f"{name}.png"


def _save_label(ids: np.ndarray, path: Path, palette: list[int]) -> None:
    from PIL import Image

    from proca.io import save_image_atomic

    image = Image.fromarray(np.asarray(ids, dtype=np.uint8), mode="P")
    image.putpalette(palette)
    save_image_atomic(image, path)


def generate_pseudo_labels(
    model: nn.Module,
    dataset: Dataset,
    out_dir: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    percent: float = 0.6,
    cap: float = 0.9,
    input_size: tuple[int, int] | None,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = True,
    bins: int = 10_000,
    cache_bytes: int = 1 << 30,
    num_workers: int | None = None,
    distributed: bool = False,
    manifest: dict[str, Any] | None = None,
) -> PseudoLabelStats:
    """Label a target split with per-class percentile thresholds; write train-id PNGs and ``thresholds.json``.

    Pass 1 runs the model over every image and counts (class, confidence bin) pairs; the thresholds follow
    from the histograms; pass 2 applies them. Each image's predicted classes and confidence bins are cached
    (3 bytes a pixel) while they fit in ``cache_bytes``; the rest are predicted again in pass 2.

    Args:
        model: the adapted network.
        dataset: target images (labels optional: when present the pseudo labels are scored against them).
        out_dir: output folder; files are ``out_dir/<name>.png`` (palette PNG, index = train id, 255 ignore).
        class_set: the model's classes.
        percent: position of the threshold in each class's ascending confidences (0.6 as released).
        cap: upper bound of each class threshold (0.9 as released).
        input_size: network input (h, w) for untransformed images.
        device: where the model runs. batch_size: images per forward pass. progress: show progress bars.
        bins: histogram bins over [0, 1]; thresholds are within ``1 / bins`` of the exact sort.
        cache_bytes: memory for pass-1 results reused in pass 2.
        num_workers: loader processes (default: a few on CUDA, none on CPU; never more than the CPUs this
            process may use).
        distributed: under an initialised process group, label this rank's share and all-reduce histograms.
        manifest: what made the labels (:func:`label_manifest`), stored in ``thresholds.json`` so that a later
            run into the same folder can tell whether they are up to date (:func:`check_label_folder`).

    Returns:
        :class:`PseudoLabelStats`, also written to ``out_dir/thresholds.json``.
    """
    if not 0.0 <= percent <= 1.0 or not 0.0 <= cap <= 1.0:
        raise ConfigError(f"percent={percent}, cap={cap}: both must lie in [0, 1].")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the dataset to pseudo-label is empty; check --data-root and --split.")
    dev = resolve_device(device)
    out = Path(out_dir)
    prepared = PreparedDataset(dataset, input_size=input_size)
    indices = list(range(len(prepared)))
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            indices = indices[rank::world]
    workers = default_num_workers(dev) if num_workers is None else cap_workers(num_workers)
    loader_kw = {"batch_size": batch_size, "indices": indices, "num_workers": workers, "pin_memory": dev.type == "cuda"}
    was_training = model.training
    model.eval()
    model.to(dev)

    def predict(images: Tensor, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        probs = predict_probs(model, images.to(dev, non_blocking=True), out_size=out_size)
        conf, labels = probs.max(dim=1)
        return confidence_bins(conf, bins).to(torch.int32), labels

    hist = ConfidenceHistogram(class_set.num_classes, bins=bins)
    cache: dict[int, tuple[Tensor, Tensor]] = {}
    cached_bytes = 0
    show = progress and rank == 0
    try:
        with ProgressBar(len(indices), "pseudo labels 1/2: thresholds", enabled=show) as bar:
            for batch in iterate_batches(prepared, **loader_kw):  # type: ignore[arg-type]
                bin_index, labels = predict(batch.images, batch.out_size)
                hist.update_bins(bin_index, labels)
                size = labels.numel() * 3
                if cached_bytes + size <= cache_bytes:
                    for k, i in enumerate(batch.indices):
                        cache[i] = (bin_index[k].to("cpu", torch.uint16), labels[k].to("cpu", torch.uint8))
                    cached_bytes += size
                bar.advance(len(batch.names))
        if world > 1:
            hist.all_reduce()
        tbins = hist.threshold_bins(percent=percent, cap=cap)
        kept = torch.zeros(class_set.num_classes, dtype=torch.int64)
        quality_cm = ConfusionMatrix(class_set.num_classes)
        labelled = 0
        palette = class_set.palette()
        with AsyncWriter() as writer, ProgressBar(len(indices), "pseudo labels 2/2: writing", enabled=show) as bar:
            for batch in iterate_batches(prepared, **loader_kw):  # type: ignore[arg-type]
                if all(i in cache for i in batch.indices):
                    bin_index = torch.stack([cache[i][0].to(torch.int32) for i in batch.indices])
                    labels = torch.stack([cache[i][1].long() for i in batch.indices])
                else:
                    bin_index, labels = predict(batch.images, batch.out_size)
                    bin_index, labels = bin_index.cpu(), labels.cpu()
                keep = bin_index >= tbins[labels]
                pseudo = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
                kept += torch.bincount(pseudo[keep], minlength=class_set.num_classes)
                if batch.labels is not None:
                    quality_cm.update(labels[keep], batch.labels[keep])
                    labelled += int((batch.labels != IGNORE_INDEX).sum())
                for name, ids in zip(batch.names, pseudo.to(torch.uint8).numpy(), strict=True):
                    writer.submit(_save_label, ids, pseudo_label_path(out, name), palette)
                bar.advance(len(batch.names))
    finally:
        model.train(was_training)
    if world > 1:
        kept = all_reduce_sum(kept)
        quality_cm.all_reduce()
    quality = None
    if int(quality_cm.matrix.sum()) > 0:
        m = quality_cm.compute()
        quality = {
            "miou": 100.0 * m.miou,
            "pixel_acc": 100.0 * m.pixel_acc,
            "per_class": {
                n: None if math.isnan(v) else 100.0 * v for n, v in zip(class_set.classes, m.iou, strict=True)
            },
            "labelled_pixels_kept": m.pixels / labelled if labelled and world == 1 else None,
        }
    stats = PseudoLabelStats(
        class_set=class_set.name,
        thresholds=[float(t) for t in (tbins.double() / bins)],
        pixels=[int(v) for v in hist.pixels],
        kept=[int(v) for v in kept],
        num_images=len(prepared),
        percent=percent,
        cap=cap,
        bins=bins,
        out_dir=str(out),
        quality=quality,
        info={} if manifest is None else {"manifest": manifest},
    )
    if rank == 0:
        from proca.io import atomic_write_json

        atomic_write_json(out / THRESHOLDS_FILE, stats.to_json(class_set))
    return stats
