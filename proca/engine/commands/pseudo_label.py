"""``proca pseudo-label``: label a Cityscapes split with a checkpoint and print the per-class thresholds."""

from __future__ import annotations

from pathlib import Path

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
    split: str = "train",
    out: Path,
    percent: float = 0.6,
    cap: float = 0.9,
    input_size: tuple[int, int] | None = None,
    device: str = "auto",
    batch_size: int = 1,
    force: bool = False,
    progress: bool = True,
) -> PseudoLabelStats | None:
    """``proca pseudo-label``: label a Cityscapes split with a checkpoint; print the per-class thresholds.

    The rule for an ``--out`` that already holds pseudo labels (the recipe's ``RUN/pseudo_labels`` or an
    earlier ``proca pseudo-label``): their ``thresholds.json`` records the checkpoint's SHA-256 and the
    settings that determine the labels (split, image count, classes, percent, cap, bins, input size). The
    same ones: nothing to do (returns None). Others: refused, naming what differs and ``--force``.

    Args:
        data_root: the datasets folder holding ``cityscapes/``, or the Cityscapes folder itself (see
            :func:`proca.data.cityscapes_root`).

    Returns:
        The new labels' statistics; None when ``out`` already held them (up to date).
    """
    from proca.data.datasets import CityscapesDataset, cityscapes_root
    from proca.data.transforms import test_transform
    from proca.io import check_writable

    city_root = cityscapes_root(data_root)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the pseudo labels.")
    check_writable(out, "--out", folder=True)
    CityscapesDataset(city_root, split=split, labels=False)  # every image is there, before the model loads
    dev = resolve_device(device)
    model, class_set, meta = load_for_inference(checkpoint, dev)
    size = (int(input_size[0]), int(input_size[1])) if input_size is not None else eval_input_size(meta, checkpoint)
    dataset = CityscapesDataset(
        city_root,
        split=split,
        class_set=class_set,
        transform=test_transform(size),
        labels=_has_labels(city_root, split),
    )
    manifest = label_manifest(
        checkpoint,
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


def _has_labels(root: Path, split: str) -> bool:
    folder = root / "gtFine" / split
    return folder.is_dir() and any(folder.rglob("*_gtFine_labelIds.png"))


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
