"""``proca pseudo-label``: label the target's images with a checkpoint and print the per-class thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proca.data.classes import ClassSet
from proca.engine.device import resolve_device
from proca.engine.predict import eval_input_size, load_for_inference
from proca.engine.pseudo_label import PseudoLabelStats, check_label_folder, generate_pseudo_labels, label_manifest
from proca.errors import ConfigError

__all__ = ["run_pseudo_label"]


def run_pseudo_label(
    checkpoint: Path,
    *,
    data_root: Path = Path("datasets"),
    tgt: str = "cityscapes",
    split: str | None = None,
    out: Path,
    percent: float = 0.6,
    cap: float = 0.9,
    input_size: tuple[int, int] | None = None,
    device: str = "auto",
    batch_size: int = 1,
    force: bool = False,
    progress: bool = True,
) -> PseudoLabelStats | None:
    """``proca pseudo-label``: label the target's images with a checkpoint; print the per-class thresholds.

    The rule for an ``--out`` that already holds pseudo labels (the recipe's ``RUN/pseudo_labels`` or an
    earlier ``proca pseudo-label``): their ``thresholds.json`` records the checkpoint's SHA-256 and the
    settings that determine the labels (split, image count, classes, percent, cap, bins, input size). The
    same ones: nothing to do (returns None). Others: refused, naming what differs and ``--force``.

    Args:
        data_root: the datasets folder holding the target's folder (``cityscapes/``, ...), or that folder itself.
        tgt: the target as ``proca train --tgt`` takes it: a built-in name, a dataset card or a folder (or glob)
            of images; the files are named as the recipe names them (``<name>.png``, nested as the images).
        split: a built-in dataset's split (default: its training split; a card or folder has none).

    Returns:
        The new labels' statistics; None when ``out`` already held them (up to date).
    """
    from proca.data.classes import get_class_set
    from proca.data.registry import BUILTIN_DATASETS
    from proca.data.targets import canonical_spec
    from proca.data.transforms import test_transform
    from proca.io import check_writable

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the pseudo labels.")
    check_writable(out, "--out", folder=True)
    entry = BUILTIN_DATASETS.get(tgt)
    if entry is None and split is not None:
        raise ConfigError(f"--split applies to a built-in --tgt (cityscapes, acdc, ...), not to {tgt}; leave it out.")
    split = split if split is not None else (entry.train_split if entry is not None else "train")
    _target_images(tgt, data_root, split, get_class_set("cityscapes19"))  # every image is there, before the model
    dev = resolve_device(device)
    model, class_set, meta = load_for_inference(checkpoint, dev)
    size = (int(input_size[0]), int(input_size[1])) if input_size is not None else eval_input_size(meta, checkpoint)
    dataset = _target_images(tgt, data_root, split, class_set, transform=test_transform(size))
    manifest = label_manifest(
        checkpoint,
        target=canonical_spec(tgt),
        split=split,
        num_images=len(dataset),
        class_set=class_set.name,
        percent=percent,
        cap=cap,
        input_size=size,
    )
    if not force and check_label_folder(out, manifest):
        from rich.console import Console

        Console(stderr=True, highlight=False).print(
            f"{out} already holds the pseudo labels of {Path(checkpoint).name} with these settings: up to date, "
            "nothing to do (--force labels again)"
        )
        return None
    stats = generate_pseudo_labels(
        model,
        dataset,
        out,
        class_set=class_set,
        percent=percent,
        cap=cap,
        input_size=size,
        device=dev,
        batch_size=batch_size,
        progress=progress,
        manifest=manifest,
    )
    _print_stats(stats, class_set)
    return stats


def _target_images(tgt: str, data_root: Path, split: str, class_set: ClassSet, transform: Any = None) -> Any:
    """The images to label: a built-in dataset's ``split`` (with its labels where it has them, to score the
    pseudo labels), else the card's or folder's images (:func:`proca.data.registry.open_target_images`)."""
    from proca.data.registry import BUILTIN_DATASETS, open_target_images

    entry = BUILTIN_DATASETS.get(tgt)
    if entry is None:
        return open_target_images(tgt, data_root, class_set=class_set, transform=transform)
    labels = entry.has_labels(split) and _labels_present(entry, data_root, split, class_set)
    return entry.open(
        data_root, split=split, labels=labels, class_set=class_set, transform=transform, flag="--data-root"
    )


def _labels_present(entry: Any, data_root: Path, split: str, class_set: ClassSet) -> bool:
    from proca.errors import DataError

    try:
        entry.open(data_root, split=split, labels=True, class_set=class_set)
    except DataError:
        return False
    return True


def _print_stats(stats: PseudoLabelStats, class_set: ClassSet) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pseudo labels: {stats.num_images} images -> {stats.out_dir}")
    table.add_column("class")
    table.add_column("threshold", justify="right")
    table.add_column("pixels", justify="right")
    table.add_column("kept %", justify="right")
    quality = (stats.quality or {}).get("per_class", {})
    if quality:
        table.add_column("IoU vs GT %", justify="right")
    for i, name in enumerate(class_set.classes):
        frac = stats.kept_fraction[i]
        row = [name, f"{stats.thresholds[i]:.4f}", f"{stats.pixels[i]:,}", "-" if frac is None else f"{100 * frac:.1f}"]
        if quality:
            q = quality.get(name)
            row.append("n/a" if q is None else f"{q:.2f}")
        table.add_row(*row)
    Console().print(table)
    if stats.quality:
        Console().print(f"pseudo-label mIoU on kept pixels: {stats.quality['miou']:.2f}")
