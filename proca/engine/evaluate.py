"""Evaluation on Cityscapes the release's way, scored the official evaluator's way (``proca eval``).

Images are resized to the input size (bicubic, in the dataset transform), the logits of every scale (and
flip) are upsampled bilinearly (``align_corners=True``) to the full label size and their softmax averaged;
the argmax is compared with the full-resolution ground truth in one confusion matrix over the split.
Classes absent from ground truth and predictions are n/a and left out of the mean (the release counted
them as 0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proca.data.classes import ClassSet
from proca.engine.device import resolve_device
from proca.engine.inference import (
    AsyncWriter,
    Batch,
    PreparedDataset,
    ProgressBar,
    default_num_workers,
    iterate_batches,
    load_for_inference,
    predict_probs,
)
from proca.engine.metrics import ConfusionMatrix, SegMetrics, all_reduce_sum
from proca.errors import ConfigError, DataError

__all__ = ["PREDICTION_SUFFIXES", "EvalResult", "evaluate", "prediction_path", "run_eval", "save_prediction"]

PredictionFormat = Literal["labelid", "trainid", "color"]

#: File suffix per saved-prediction format: ``<city>/<city>_<seq>_<frame><suffix>``.
PREDICTION_SUFFIXES: dict[str, str] = {"labelid": "_labelIds.png", "trainid": "_trainIds.png", "color": "_color.png"}


def _pct(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


@dataclass
class EvalResult:
    """Scores of one evaluation; percentages, ``None`` for n/a.

    Attributes:
        miou: mean IoU over the present classes of the class set (19 or 16), percent.
        per_class: official class name -> IoU percent, or ``None`` (n/a).
        miou13: for synthia16 models, the mean over the 13 classes without wall, fence and pole.
        pixel_acc: percent of labelled pixels predicted right.
        mean_acc: mean per-class accuracy, percent.
        per_class_acc: official class name -> accuracy percent, or ``None``.
        confusion: (C, C) int64 confusion matrix (rows ground truth).
        class_set: the class set's name.
        num_images: images evaluated.
        metrics: the fractions these were computed from.
    """

    miou: float
    per_class: dict[str, float | None]
    miou13: float | None
    pixel_acc: float
    mean_acc: float
    per_class_acc: dict[str, float | None]
    confusion: Tensor
    class_set: str
    num_images: int
    metrics: SegMetrics
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_metrics(
        cls, metrics: SegMetrics, class_set: ClassSet, num_images: int, info: dict[str, Any] | None = None
    ) -> EvalResult:
        subsets = dict(class_set.subsets)
        miou13 = _pct(metrics.miou_subset(subsets["13"])) if "13" in subsets else None
        return cls(
            miou=100.0 * metrics.miou,
            per_class={n: _pct(v) for n, v in zip(class_set.classes, metrics.iou, strict=True)},
            miou13=miou13,
            pixel_acc=100.0 * metrics.pixel_acc,
            mean_acc=100.0 * metrics.macc,
            per_class_acc={n: _pct(v) for n, v in zip(class_set.classes, metrics.acc, strict=True)},
            confusion=metrics.confusion,
            class_set=class_set.name,
            num_images=num_images,
            metrics=metrics,
            info=dict(info or {}),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``miou``, ``per_class``, (``miou16``, ``miou13``), accuracies and run settings."""
        out: dict[str, Any] = {"miou": _finite(self.miou)}
        if self.miou13 is not None:
            out["miou16"] = _finite(self.miou)
            out["miou13"] = self.miou13
        out.update(
            {
                "per_class": self.per_class,
                "pixel_acc": _finite(self.pixel_acc),
                "mean_acc": _finite(self.mean_acc),
                "per_class_acc": self.per_class_acc,
                "class_set": self.class_set,
                "num_images": self.num_images,
                "pixels": self.metrics.pixels,
            }
        )
        out.update(self.info)
        out["confusion"] = self.confusion.tolist()
        return out


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else v


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    class_set: ClassSet,
    input_size: tuple[int, int] | None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = True,
    on_batch: Callable[[Batch, Tensor], None] | None = None,
    num_workers: int | None = None,
    distributed: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on a labelled dataset with one confusion matrix over the whole split.

    Args:
        model: a segmentation network (put in eval mode here; its mode is restored afterwards).
        dataset: items with ``image`` and full-size ``label`` train ids of ``class_set`` (a dataset without
            transform is resized to ``input_size`` with the test transform here).
        class_set: classes of the model and the labels.
        input_size: (h, w) network input for untransformed images; ``None`` keeps the dataset's size.
        scales: test scales; flip: also average mirrored predictions.
        device: where the model runs.
        batch_size: images per forward pass.
        progress: show a progress bar with the running mIoU.
        on_batch: called with every batch and its (B, H, W) uint8 predicted train ids on the CPU.
        num_workers: loader processes (default: a few on CUDA, none on CPU).
        distributed: under an initialised process group, evaluate this rank's share and all-reduce.

    Returns:
        The :class:`EvalResult` of the split.

    Shape:
        model: (B, 3, h, w) -> (B, C, h/8, w/8); labels (B, H, W).
    """
    dev = resolve_device(device)
    num = int(getattr(model, "num_classes", class_set.num_classes))
    if num != class_set.num_classes:
        raise ConfigError(
            f"the model predicts {num} classes but class set {class_set.name} has {class_set.num_classes}; "
            "evaluate with the checkpoint's own class set."
        )
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the evaluation dataset is empty; check --data-root and --split.")
    prepared = PreparedDataset(dataset, input_size=input_size)
    indices = list(range(len(prepared)))
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            indices = indices[rank::world]
    cm = ConfusionMatrix(class_set.num_classes)
    was_training = model.training
    model.eval()
    model.to(dev)
    workers = default_num_workers(dev) if num_workers is None else num_workers
    seen = 0
    try:
        with ProgressBar(len(indices), "eval", enabled=progress and rank == 0) as bar:
            for batch in iterate_batches(
                prepared, batch_size=batch_size, indices=indices, num_workers=workers, pin_memory=dev.type == "cuda"
            ):
                if batch.labels is None:
                    raise DataError(f"{batch.paths[0] or batch.names[0]}: no ground truth; evaluation needs labels.")
                images = batch.images.to(dev, non_blocking=True)
                probs = predict_probs(model, images, out_size=batch.out_size, scales=scales, flip=flip)
                pred = probs.argmax(dim=1)
                del probs
                cm.update(pred, batch.labels.to(dev, non_blocking=True))
                seen += len(batch.names)
                if on_batch is not None:
                    on_batch(batch, pred.to(torch.uint8).cpu())
                running = cm.compute().miou
                bar.advance(len(batch.names), metric=f"mIoU {100 * running:.2f}" if not math.isnan(running) else "")
    finally:
        model.train(was_training)
    if world > 1:
        cm.all_reduce()
        seen = int(all_reduce_sum(torch.tensor([seen], dtype=torch.int64)).item())
    info = {"scales": [float(s) for s in scales], "flip": bool(flip)}
    if input_size is not None:
        info["input_size"] = [int(input_size[0]), int(input_size[1])]
    return EvalResult.from_metrics(cm.compute(), class_set, seen, info)


def prediction_path(out_dir: str | os.PathLike[str], name: str, fmt: str) -> Path:
    """Where ``proca eval --save-predictions`` writes the prediction of the image called ``name``.

    ``name`` is the dataset's ``"<city>/<city>_<seq>_<frame>"``; the file is
    ``out_dir/<city>/<city>_<seq>_<frame>_labelIds.png`` (``_trainIds.png``, ``_color.png``), which matches
    the ``<city>_<seq>_<frame>*.png`` pattern the official evaluator and the benchmark server look for.
    """
    if fmt not in PREDICTION_SUFFIXES:
        raise ConfigError(f"--format {fmt!r} is not a prediction format; valid: {', '.join(PREDICTION_SUFFIXES)}.")
    return Path(out_dir) / f"{name}{PREDICTION_SUFFIXES[fmt]}"


def save_prediction(train_ids: np.ndarray, path: str | os.PathLike[str], class_set: ClassSet, fmt: str) -> None:
    """Write an (H, W) prediction of train ids atomically.

    ``labelid``: 8-bit grey PNG of official Cityscapes label ids (what the official evaluator reads);
    ``trainid``: palette PNG whose indices are the class set's train ids (255 = ignore) with the official
    colours; ``color``: RGB PNG of the official colours.
    """
    from PIL import Image

    from proca.io import save_image_atomic

    ids = np.asarray(train_ids, dtype=np.uint8)
    if fmt == "labelid":
        image = Image.fromarray(class_set.train_to_label_ids(ids), mode="L")
    elif fmt == "trainid":
        image = Image.fromarray(ids, mode="P")
        image.putpalette(class_set.palette())
    elif fmt == "color":
        image = Image.fromarray(class_set.colorize(ids), mode="RGB")
    else:
        raise ConfigError(f"--format {fmt!r} is not a prediction format; valid: {', '.join(PREDICTION_SUFFIXES)}.")
    save_image_atomic(image, path)


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
    data_root: Path,
    split: str = "val",
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
) -> EvalResult:
    """``proca eval``: evaluate a checkpoint on a Cityscapes split, print the table, write the requested files.

    The class set, architecture and default input size come from the checkpoint (a 16-class SYNTHIA model is
    scored on Cityscapes mapped to its 16 classes, plus mIoU13).
    """
    from proca import __version__
    from proca.data.datasets import CityscapesDataset
    from proca.data.transforms import test_transform
    from proca.io import atomic_write_json

    if fmt not in PREDICTION_SUFFIXES:
        raise ConfigError(f"--format {fmt!r} is not a prediction format; valid: {', '.join(PREDICTION_SUFFIXES)}.")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DataError(
            f"--data-root {data_root}: no such folder; give the Cityscapes root holding leftImg8bit/ and gtFine/."
        )
    for flag, folder in (("--save-predictions", save_predictions), ("--report", report_dir)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"{flag} {folder} is a file; give a folder (new or existing).")
    if json_path is not None and Path(json_path).is_dir():
        raise ConfigError(f"--json {json_path} is a folder; give a file path such as {Path(json_path) / 'eval.json'}.")
    dev = resolve_device(device)
    model, class_set, meta = load_for_inference(checkpoint, dev)
    size = tuple(input_size) if input_size is not None else tuple(meta.get("eval_input_size") or (512, 1024))
    size = (int(size[0]), int(size[1]))
    dataset = CityscapesDataset(data_root, split=split, class_set=class_set, transform=test_transform(size))

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
            dataset,
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
            "split": split,
            "data_root": str(data_root),
            "input_size": list(size),
            "proca_version": __version__,
        }
    )
    print_table(result, class_set, title=f"Cityscapes {split}")
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
    if report_dir is not None:
        assert collector is not None
        write_report(report_dir, result, class_set, collector.examples, title=f"{Path(checkpoint).name} on {split}")
    return result
