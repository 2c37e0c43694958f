"""``proca eval``: evaluate a checkpoint on a split of a built-in dataset, print the table, write the files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from proca.data.classes import ClassSet
from proca.engine.device import resolve_device
from proca.engine.encode import EVAL_FORMATS, check_format, prediction_path, save_prediction
from proca.engine.evaluate import evaluate
from proca.engine.loop import AsyncWriter, Batch
from proca.engine.predict import check_eval_size, eval_input_size, load_for_inference
from proca.engine.results import EvalResult
from proca.errors import ConfigError

__all__ = ["print_table", "run_eval"]


def print_table(result: EvalResult, class_set: ClassSet, *, title: str = "Cityscapes") -> None:
    """Print a rich per-class table (IoU and accuracy) with the means under it."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: float | None) -> str:
        return "n/a" if v is None or math.isnan(v) else f"{v:.2f}"

    table = Table(title=f"{title}: {result.num_images} images", caption=class_set.name, show_footer=False)
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("acc %", justify="right")
    subset13 = set(dict(class_set.subsets).get("13", ()))
    for i, name in enumerate(class_set.classes):
        r, g, b = (int(c) for c in class_set.colors[i])
        mark = "" if not subset13 or i in subset13 else " (not in 13)"
        table.add_row(
            f"[rgb({r},{g},{b})]■[/] {name}{mark}", fmt(result.per_class[name]), fmt(result.per_class_acc[name])
        )
    table.add_section()
    label = f"mIoU ({class_set.num_classes})"
    table.add_row(f"[bold]{label}", f"[bold]{fmt(result.miou)}", fmt(result.mean_acc))
    if result.miou13 is not None:
        table.add_row("[bold]mIoU (13)", f"[bold]{fmt(result.miou13)}", "")
    table.add_row("pixel accuracy", fmt(result.pixel_acc), "")
    Console().print(table)


def run_eval(
    checkpoint: Path,
    *,
    data_root: Path = Path("datasets"),
    dataset: str = "cityscapes",
    split: str | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    input_size: tuple[int, int] | None = None,
    save_predictions: Path | None = None,
    fmt: str = "labelid",
    json_path: Path | None = None,
    report_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 1,
    progress: bool = True,
    force: bool = False,
) -> EvalResult:
    """``proca eval``: evaluate a checkpoint on a labelled dataset, print the table, write the requested files.

    The class set, architecture and default input size come from the checkpoint (a 16-class SYNTHIA model is
    scored on the dataset's labels mapped to its 16 classes, plus mIoU13; a card's classes are mapped by name
    likewise).

    Args:
        data_root: the datasets folder holding ``<dataset folder>/`` (``cityscapes/``, ``acdc/``, ...), or the
            dataset folder itself (see :meth:`proca.data.registry.BuiltinDataset.resolve_root`).
        dataset: a built-in dataset name (:data:`proca.data.registry.BUILTIN_DATASETS`), a dataset card with
            labels or a Cityscapes folder (:func:`proca.data.targets.resolve_eval_dataset`).
        split: a labelled split (default: the dataset's validation split; a card has none).
        force: replace existing output files (``--json``, predictions, report images); without it they are
            refused before the checkpoint is loaded.
    """
    from proca import __version__
    from proca.data.classes import get_class_set
    from proca.data.registry import BUILTIN_DATASETS
    from proca.data.targets import resolve_eval_dataset
    from proca.data.transforms import test_transform
    from proca.io import atomic_write_json, check_new_file, check_new_files, check_writable

    check_format(fmt, EVAL_FORMATS)
    entry = BUILTIN_DATASETS.get(dataset)
    dataset_root = entry.resolve_root(data_root) if entry is not None else None
    for flag, folder in (("--save-predictions", save_predictions), ("--report", report_dir)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"{flag} {folder} is a file; give a folder (new or existing).")
    if json_path is not None and Path(json_path).is_dir():
        raise ConfigError(f"--json {json_path} is a folder; give a file path such as {Path(json_path) / 'eval.json'}.")
    for flag, target, is_folder in (
        ("--json", json_path, False),
        ("--save-predictions", save_predictions, True),
        ("--report", report_dir, True),
    ):
        if target is not None:
            check_writable(target, flag, folder=is_folder)
    if json_path is not None:
        check_new_file(json_path, force=force, option="--json")
    if report_dir is not None:
        check_new_files(
            [Path(report_dir) / n for n in ("iou.png", "confusion.png", "examples.png")], force=force, option="--report"
        )
    # images and labels are there, before the model loads (the class set only maps the label values)
    listing, _ = resolve_eval_dataset(dataset, data_root, split=split, class_set=get_class_set("cityscapes19"))
    if save_predictions is not None:
        targets = [prediction_path(save_predictions, name, fmt) for name in listing.names]
        check_new_files(targets, force=force, option="--save-predictions")
    dev = resolve_device(device)
    model, class_set, meta = load_for_inference(checkpoint, dev)
    size = (int(input_size[0]), int(input_size[1])) if input_size is not None else eval_input_size(meta, checkpoint)
    transform = test_transform(size)
    data, title = resolve_eval_dataset(dataset, data_root, split=split, class_set=class_set, transform=transform)
    if input_size is None:
        check_eval_size(checkpoint, size, data.images[0] if len(data) else None)

    from proca.engine.report import ExampleCollector, write_report

    collector = ExampleCollector(class_set) if report_dir is not None else None
    writer = AsyncWriter() if save_predictions is not None else None

    def on_batch(batch: Batch, pred: Tensor) -> None:
        if writer is not None:
            assert save_predictions is not None
            for name, p in zip(batch.names, pred.numpy(), strict=True):
                writer.submit(save_prediction, p, prediction_path(save_predictions, name, fmt), class_set, fmt)
        if collector is not None:
            collector.add(batch, pred)

    try:
        result = evaluate(
            model,
            data,
            class_set=class_set,
            input_size=size,
            scales=scales,
            flip=flip,
            device=dev,
            batch_size=batch_size,
            progress=progress,
            on_batch=on_batch,
        )
    finally:
        if writer is not None:
            writer.close()
    result.info.update(
        {
            "checkpoint": str(checkpoint),
            "arch": meta.get("arch"),
            "dataset": dataset,
            "split": split if split is not None else (entry.val_split if entry is not None else None),
            "data_root": str(data_root),
            **({"dataset_root": str(dataset_root)} if dataset_root is not None else {}),
            **({"cityscapes_root": str(dataset_root)} if dataset == "cityscapes" else {}),
            **({"card": str(data.card.path)} if hasattr(data, "card") else {}),
            "input_size": list(size),
            "proca_version": __version__,
        }
    )
    print_table(result, class_set, title=title)
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
    if report_dir is not None:
        assert collector is not None
        write_report(report_dir, result, class_set, collector.examples, title=f"{Path(checkpoint).name} on {title}")
    return result
