"""Pictures of an evaluation (``proca eval --report DIR``), drawn with Pillow only.

``iou.png``: one bar per class in the class colour (n/a classes marked), with the means;
``confusion.png``: the row-normalised confusion matrix (each ground-truth row sums to 100 %);
``examples.png``: a grid of image / ground truth / prediction for the first few images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from proca.data.classes import ClassSet
from proca.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from proca.io import save_image_atomic

if TYPE_CHECKING:
    from proca.engine.loop import Batch
    from proca.engine.results import EvalResult

__all__ = [
    "Example",
    "ExampleCollector",
    "confusion_image",
    "example_grid",
    "iou_bar_chart",
    "write_report",
]

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD = np.array(IMAGENET_STD, dtype=np.float32)
_BG = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def iou_bar_chart(
    per_class: dict[str, float | None],
    class_set: ClassSet,
    *,
    title: str = "",
    means: dict[str, float | None] | None = None,
) -> Image.Image:
    """A horizontal bar chart of per-class IoU (percent), bars in the official class colours.

    Args:
        per_class: class name -> IoU percent or ``None`` (n/a).
        class_set: gives the order and colours.
        title: drawn on top.
        means: lines under the chart, e.g. ``{"mIoU (19)": 55.1}``.
    """
    font, small = _font(15), _font(13)
    row, bar_w, pad = 24, 420, 12
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_width(probe, n, font) for n in class_set.classes) + 16
    lines = [f"{k}: {'n/a' if v is None or math.isnan(v) else f'{v:.2f}'}" for k, v in (means or {}).items()]
    top = pad + (28 if title else 0)
    height = top + row * class_set.num_classes + 30 + 20 * len(lines) + pad
    width = pad + label_w + bar_w + 70 + pad
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((pad, pad), title, fill=_INK, font=font)
    x0 = pad + label_w
    for tick in range(0, 101, 20):
        x = x0 + bar_w * tick // 100
        draw.line([(x, top), (x, top + row * class_set.num_classes)], fill=_GRID)
        draw.text((x - 8, top + row * class_set.num_classes + 4), str(tick), fill=_INK, font=small)
    for i, name in enumerate(class_set.classes):
        y = top + i * row
        draw.text((x0 - 8 - _text_width(draw, name, font), y + 3), name, fill=_INK, font=font)
        value = per_class.get(name)
        if value is None or math.isnan(value):
            draw.text((x0 + 6, y + 3), "n/a", fill=(150, 150, 150), font=font)
            continue
        color = tuple(int(c) for c in class_set.colors[i])
        draw.rectangle([x0, y + 3, x0 + max(1, round(bar_w * value / 100)), y + row - 3], fill=color, outline=_INK)
        draw.text((x0 + round(bar_w * value / 100) + 6, y + 3), f"{value:.1f}", fill=_INK, font=font)
    y = top + row * class_set.num_classes + 26
    for line in lines:
        draw.text((pad, y), line, fill=_INK, font=font)
        y += 20
    return img


def confusion_image(confusion: Tensor | np.ndarray, class_set: ClassSet, *, cell: int = 30) -> Image.Image:
    """The confusion matrix, each ground-truth row normalised to 100 %, as a heat map with the values.

    Shape:
        confusion: (C, C) counts, rows ground truth, columns predictions.
    """
    mat = np.asarray(confusion.cpu() if isinstance(confusion, Tensor) else confusion, dtype=np.float64)
    rows = mat.sum(axis=1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    n = class_set.num_classes
    font, small = _font(13), _font(10)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_width(probe, name, font) for name in class_set.classes) + 12
    pad = 10
    top = pad + 20 + label_w + 16
    left = pad + label_w + 20
    img = Image.new("RGB", (left + n * cell + pad, top + n * cell + pad + 20), _BG)
    draw = ImageDraw.Draw(img)
    draw.text((left, pad), "predicted ->", fill=_INK, font=font)  # column labels start below it
    for i in range(n):
        for j in range(n):
            v = float(norm[i, j])
            shade = (int(255 - 247 * v), int(255 - 207 * v), int(255 - 148 * v))  # white -> dark blue
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=shade, outline=_GRID)
            if v >= 0.005:
                text = f"{100 * v:.0f}"
                ink = (255, 255, 255) if v > 0.5 else _INK
                draw.text(
                    (x + (cell - _text_width(draw, text, small)) // 2, y + cell // 2 - 6), text, fill=ink, font=small
                )
    for k, name in enumerate(class_set.classes):
        color = tuple(int(c) for c in class_set.colors[k])
        y = top + k * cell
        draw.text((left - 14 - _text_width(draw, name, font), y + cell // 2 - 8), name, fill=_INK, font=font)
        draw.rectangle([left - 10, y + 8, left - 3, y + cell - 8], fill=color)
        # Column labels: text drawn horizontally on a strip, then rotated.
        strip = Image.new("RGB", (label_w, cell), _BG)
        sd = ImageDraw.Draw(strip)
        sd.text((2, cell // 2 - 8), name, fill=_INK, font=font)
        rotated = strip.rotate(90, expand=True)
        img.paste(rotated, (left + k * cell, top - 12 - label_w))
        draw.rectangle([left + k * cell + 8, top - 10, left + (k + 1) * cell - 8, top - 3], fill=color)
    draw.text((pad, top + n * cell + 4), "rows: ground truth, each normalised to 100 %", fill=_INK, font=small)
    return img


@dataclass
class Example:
    """One row of the example grid: (h, w, 3) uint8 photo and (h, w) uint8 ground truth / prediction."""

    name: str
    photo: np.ndarray
    label: np.ndarray | None
    pred: np.ndarray


def _denormalize(image: Tensor) -> np.ndarray:
    arr = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    return np.clip((arr * _STD + _MEAN) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((size[1], size[0]), Image.Resampling.NEAREST))


class ExampleCollector:
    """Keeps the first ``max_examples`` images of an evaluation, downscaled, for :func:`example_grid`."""

    def __init__(self, class_set: ClassSet, *, max_examples: int = 4, width: int = 384) -> None:
        self.class_set = class_set
        self.max_examples = max_examples
        self.width = width
        self.examples: list[Example] = []

    def add(self, batch: Batch, pred: Tensor) -> None:
        """Add samples of a batch while fewer than ``max_examples`` are kept.

        Shape:
            pred: (B, H, W) train ids.
        """
        for k in range(len(batch.names)):
            if len(self.examples) >= self.max_examples:
                return
            photo = _denormalize(batch.images[k])
            h = max(1, round(photo.shape[0] * self.width / photo.shape[1]))
            size = (h, self.width)
            photo = np.asarray(Image.fromarray(photo).resize((self.width, h), Image.Resampling.BICUBIC))
            label = None
            if batch.labels is not None:
                label = _resize_ids(batch.labels[k].clamp(0, 255).to(torch.uint8).cpu().numpy(), size)
            self.examples.append(Example(batch.names[k], photo, label, _resize_ids(pred[k].cpu().numpy(), size)))


def example_grid(examples: list[Example], class_set: ClassSet) -> Image.Image:
    """Rows of image / ground truth / prediction (ignored pixels black), captioned with the image name."""
    if not examples:
        return Image.new("RGB", (10, 10), _BG)
    font = _font(14)
    pad, caption = 8, 22
    w = examples[0].photo.shape[1]
    heights = [e.photo.shape[0] for e in examples]
    width = pad + 3 * (w + pad)
    img = Image.new("RGB", (width, pad + sum(hh + caption + pad for hh in heights) + caption), _BG)
    draw = ImageDraw.Draw(img)
    for col, head in enumerate(("image", "ground truth", "prediction")):
        draw.text((pad + col * (w + pad), pad), head, fill=_INK, font=font)
    y = pad + caption
    for e in examples:
        panels = [e.photo, None if e.label is None else class_set.colorize(e.label), class_set.colorize(e.pred)]
        for col, panel in enumerate(panels):
            x = pad + col * (w + pad)
            if panel is None:
                draw.rectangle([x, y, x + w - 1, y + e.photo.shape[0] - 1], outline=_GRID)
                continue
            img.paste(Image.fromarray(panel), (x, y))
        draw.text((pad, y + e.photo.shape[0] + 3), e.name, fill=_INK, font=font)
        y += e.photo.shape[0] + caption + pad
    return img


def write_report(
    out_dir: str | os.PathLike[str],
    result: EvalResult,
    class_set: ClassSet,
    examples: list[Example],
    *,
    title: str = "",
) -> dict[str, Path]:
    """Write ``iou.png``, ``confusion.png`` and ``examples.png`` into ``out_dir`` (atomically).

    Returns:
        Name -> path of each file written.
    """
    out = Path(out_dir)
    means: dict[str, float | None] = {f"mIoU ({class_set.num_classes})": result.miou}
    if result.miou13 is not None:
        means["mIoU (13)"] = result.miou13
    means["pixel accuracy"] = result.pixel_acc
    files = {
        "iou": out / "iou.png",
        "confusion": out / "confusion.png",
        "examples": out / "examples.png",
    }
    save_image_atomic(iou_bar_chart(result.per_class, class_set, title=title, means=means), files["iou"])
    save_image_atomic(confusion_image(result.confusion, class_set), files["confusion"])
    save_image_atomic(example_grid(examples, class_set), files["examples"])
    return files
