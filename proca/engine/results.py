"""What an evaluation returns: :class:`EvalResult`, its scores in percent and its JSON form."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from proca.data.classes import ClassSet
from proca.engine.metrics import SegMetrics

__all__ = ["EvalResult"]


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
