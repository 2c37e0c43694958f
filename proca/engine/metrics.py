"""Streaming segmentation metrics from one confusion matrix, as the official Cityscapes evaluator computes them.

The matrix is accumulated over the whole split (never averaged per image): ``M[t, p]`` counts pixels of
ground-truth class ``t`` predicted as ``p``; ground-truth pixels equal to ``ignore_index`` are skipped.
Per class ``c``: ``IoU = TP / (TP + FP + FN)`` with ``TP = M[c, c]``, ``FN = sum_p M[c, p] - TP``,
``FP = sum_t M[t, c] - TP``. A class with ``TP + FP + FN == 0`` (absent from the ground truth and never
predicted on a labelled pixel) has no IoU: it is NaN ("n/a") and left out of the mean, exactly as
``cityscapesscripts``' ``getIouScoreForLabel`` / ``getScoreAverage`` do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from proca.errors import DataError

__all__ = ["ConfusionMatrix", "SegMetrics", "all_reduce_sum", "confusion_matrix", "metrics_from_confusion", "nanmean"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """Confusion matrix of one batch by a single ``bincount``.

    Args:
        pred: predicted train ids, integer, any shape.
        target: ground-truth train ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: C.
        ignore_index: ground-truth value to skip.

    Returns:
        (C, C) int64 on ``pred``'s device; rows are ground truth, columns predictions.

    Raises:
        DataError: the ground truth holds a value that is neither a class nor ``ignore_index``.
        ValueError: shapes differ or a prediction is outside ``[0, C)``.

    Shape:
        pred, target: (B, H, W) or any equal shapes (N elements) -> (C, C).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(target.shape)}")
    c = num_classes
    p = pred.reshape(-1).long()
    t = target.reshape(-1).to(device=p.device, dtype=torch.long)
    if p.numel():
        lo, hi = (int(v) for v in torch.aminmax(p))
        if lo < 0 or hi >= c:
            raise ValueError(f"predictions must be train ids in [0, {c}); got {lo}..{hi}")
    # One bincount of t * C + p over all pixels: row t of the result counts ground-truth value t, so rows
    # 0..C-1 are the matrix, row ``ignore_index`` is dropped and any other non-empty row is bad input.
    rows = max(c, ignore_index + 1) if 0 <= ignore_index < 4096 else c
    idx = t * c + p
    if not 0 <= ignore_index < 4096:
        idx = torch.where(t == ignore_index, (c + 1) * c, idx)  # an exotic ignore value: move it past row C
        rows = c + 2
    try:
        counts = torch.bincount(idx, minlength=rows * c)
    except RuntimeError:  # negative ground truth
        counts = None
    if counts is None or counts.numel() > rows * c or _has_stray_rows(counts.reshape(rows, c), c, ignore_index):
        bad = t[((t < 0) | (t >= c)) & (t != ignore_index)]
        values = torch.unique(bad).tolist()[:5]
        raise DataError(
            f"ground truth holds values {values} that are neither train ids 0..{c - 1} nor {ignore_index}; "
            "check that the labels were mapped to this class set."
        )
    return counts[: c * c].reshape(c, c)


def _has_stray_rows(rows: Tensor, c: int, ignore_index: int) -> bool:
    """Whether any row other than the classes' and the ignore value's holds pixels."""
    sums = rows[c:].sum(dim=1)
    if 0 <= ignore_index - c < sums.numel():
        sums[ignore_index - c] = 0
    elif sums.numel() == 2:  # exotic ignore value parked in row C + 1
        sums[1] = 0
    return bool(sums.any())


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks of an initialised process group (returned unchanged otherwise).

    Under NCCL a CPU tensor is reduced on this rank's GPU and brought back, so callers need not care.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return moved.to(tensor.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite entries (NaN when there are none), as ``getScoreAverage`` does."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass(frozen=True)
class SegMetrics:
    """Metrics of one confusion matrix; every value is a fraction in [0, 1] (NaN where undefined).

    Attributes:
        iou: per-class IoU, NaN for a class absent from ground truth and predictions ("n/a").
        acc: per-class accuracy (recall) ``TP / (TP + FN)``, NaN for a class absent from the ground truth.
        miou: mean of the non-NaN IoUs.
        macc: mean of the non-NaN accuracies.
        pixel_acc: correctly labelled pixels / labelled pixels.
        pixels: number of labelled (non-ignored) ground-truth pixels.
        confusion: the (C, C) int64 matrix on the CPU.
    """

    iou: tuple[float, ...]
    acc: tuple[float, ...]
    miou: float
    macc: float
    pixel_acc: float
    pixels: int
    confusion: Tensor

    def miou_subset(self, ids: Sequence[int]) -> float:
        """Mean IoU over the classes ``ids`` (for example SYNTHIA's 13), NaNs left out."""
        return nanmean([self.iou[i] for i in ids])


def metrics_from_confusion(confusion: Tensor) -> SegMetrics:
    """Compute :class:`SegMetrics` from a (C, C) confusion matrix.

    Shape:
        confusion: (C, C), rows ground truth, columns predictions.
    """
    mat = confusion.detach().to("cpu", torch.float64)
    tp = mat.diagonal()
    gt = mat.sum(dim=1)
    pred = mat.sum(dim=0)
    union = gt + pred - tp
    nan = torch.full_like(tp, float("nan"))
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan).tolist()
    acc = torch.where(gt > 0, tp / gt.clamp_min(1), nan).tolist()
    total = float(gt.sum())
    return SegMetrics(
        iou=tuple(iou),
        acc=tuple(acc),
        miou=nanmean(iou),
        macc=nanmean(acc),
        pixel_acc=float(tp.sum()) / total if total > 0 else float("nan"),
        pixels=int(total),
        confusion=confusion.detach().to("cpu", torch.int64).clone(),
    )


class ConfusionMatrix:
    """A streaming confusion matrix, global over a split.

    Args:
        num_classes: C.
        ignore_index: ground-truth value that is skipped.

    Example:
        >>> cm = ConfusionMatrix(19)
        >>> for pred, target in batches:
        ...     cm.update(pred, target)
        >>> cm.all_reduce()  # under torch.distributed, on every rank
        >>> cm.compute().miou

    Shape:
        update: pred (B, H, W) or (B, C, H, W) logits/probabilities, target (B, H, W).
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix: Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.matrix = torch.zeros_like(self.matrix)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> Tensor:
        """Add a batch; ``pred`` may be train ids or per-class scores (argmax over dim 1 is taken).

        Returns:
            The batch's own (C, C) matrix.
        """
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1 or pred.shape[1] != self.num_classes:
                raise ValueError(
                    f"score maps must be (B, {self.num_classes}, H, W) for targets {tuple(target.shape)}, "
                    f"got {tuple(pred.shape)}"
                )
            pred = pred.argmax(dim=1)
        batch = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        if self.matrix.device != batch.device:
            self.matrix = self.matrix.to(batch.device)
        self.matrix += batch
        return batch

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks of an initialised ``torch.distributed`` group (no-op otherwise).

        With NCCL the matrix must live on this rank's GPU (it does after a GPU ``update``).
        """
        self.matrix = all_reduce_sum(self.matrix)

    def compute(self) -> SegMetrics:
        """Per-class IoU and accuracy, mIoU, pixel accuracy over everything seen."""
        return metrics_from_confusion(self.matrix)

    def miou_subset(self, ids: Sequence[int]) -> float:
        """Mean IoU (fraction) over the train ids ``ids``; n/a classes are left out."""
        return self.compute().miou_subset(ids)
