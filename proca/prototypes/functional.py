"""Pure tensor functions behind the class prototypes: per-class sums, confident labels, label downsampling."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from proca.errors import ConfigError, DataError

__all__ = ["accumulation_dtype", "class_sums", "confident_labels", "downsample_labels"]

# Pixels per one-hot matmul. Each chunk is summed by one float32 GEMM and the partial sums are added in
# float64, so the rounding error stays near float32's epsilon (measured: 2e-7 relative at 28,800 pixels)
# however many pixels a batch holds, and (for half-precision features) the float32 copy of a chunk stays
# small. Few, large products also keep the update fast on a CPU shared with other work.
_CHUNK = 16384
# Pixels per float32 copy when summing half-precision features.
_HALF_CHUNK = 4096


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype that class sums are accumulated in: float64, or float32 where the device has no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _as_pixels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """View features as (B, A, M) channels-first and labels as (B, M); (N, A) becomes (1, A, N) without a copy."""
    if features.dim() == 2:
        if labels.shape != features.shape[:1]:
            raise DataError(
                f"labels of shape {tuple(labels.shape)} do not fit features of shape {tuple(features.shape)}; "
                "(N, A) features need (N,) labels."
            )
        return features.t().unsqueeze(0), labels.reshape(1, -1)
    if features.dim() == 4:
        b, a, h, w = features.shape
        if labels.shape != (b, h, w):
            raise DataError(
                f"labels of shape {tuple(labels.shape)} do not fit features of shape {tuple(features.shape)}; "
                "(B, A, H, W) features need (B, H, W) labels (see proca.prototypes.downsample_labels)."
            )
        return features.reshape(b, a, h * w), labels.reshape(b, h * w)
    raise DataError(f"features must be (N, A) or (B, A, H, W), got shape {tuple(features.shape)}.")


def _chunked_matmul(weights: Tensor, pixels: Tensor, acc: torch.dtype) -> Tensor:
    """``weights @ pixels`` over chunks of ``_CHUNK`` pixels, the chunk results added in ``acc``.

    Shape:
        weights (C, M); pixels (M, A) (any strides) -> (C, A).
    """
    out = weights.new_zeros((weights.shape[0], pixels.shape[1]), dtype=acc)
    for start in range(0, pixels.shape[0], _CHUNK):
        out += weights[:, start : start + _CHUNK] @ pixels[start : start + _CHUNK]
    return out


def class_sums(features: Tensor, labels: Tensor, num_classes: int, *, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Sum the feature vectors of each class and count its pixels.

    The sums come from one-hot matrix products over chunks of pixels, so memory stays O(N * A) (the
    features themselves plus a few MB); nothing of size N x C x A is built. Pixels labelled
    ``ignore_index`` are skipped. Half-precision features are summed in float32 chunk by chunk and the
    chunks are added in float64 (float32 on MPS), so the result is exact to float32 rounding.

    Args:
        features: pixel features, (N, A) or (B, A, H, W); any floating dtype.
        labels: class index per pixel, (N,) or (B, H, W), values in [0, C) or ``ignore_index``.
        num_classes: C.
        ignore_index: label of pixels to skip.

    Returns:
        ``(sums, counts)``: sums (C, A) in float64 (float32 on MPS), counts (C,) int64.

    Raises:
        DataError: shapes do not fit, or a label is outside [0, C) and is not ``ignore_index``.

    Shape:
        features (N, A) or (B, A, H, W); labels (N,) or (B, H, W); sums (C, A); counts (C,).
    """
    if not features.is_floating_point():
        raise DataError(f"features must be a floating-point tensor, got dtype {features.dtype}.")
    feats, labs = _as_pixels(features, labels)
    labs = labs.to(device=feats.device)
    acc = accumulation_dtype(feats.device)
    classes = torch.arange(num_classes, device=feats.device).view(1, num_classes, 1)
    onehot = labs.unsqueeze(1) == classes  # (B, C, M); ignored and out-of-range labels match no class
    counts = onehot.sum((0, 2))
    half = feats.dtype in (torch.float16, torch.bfloat16)
    weights = onehot.to(torch.float32 if half else feats.dtype)
    sums = feats.new_zeros((num_classes, feats.shape[1]), dtype=acc)
    for b in range(feats.shape[0]):
        pixels = feats[b].t()  # (M, A): a view, rows are pixels
        if half:  # upcast chunk by chunk so that the float32 copy stays small
            for start in range(0, pixels.shape[0], _HALF_CHUNK):
                chunk = pixels[start : start + _HALF_CHUNK].float()
                sums.add_(weights[b, :, start : start + _HALF_CHUNK] @ chunk)
        else:
            sums.add_(_chunked_matmul(weights[b], pixels, acc))
    valid = (labs != ignore_index).sum()
    if labs.numel() and bool(counts.sum() != valid):
        raise DataError(
            f"labels hold values outside [0, {num_classes}) that are not the ignore index {ignore_index}; "
            f"pass labels of train ids 0..{num_classes - 1} with {ignore_index} for unlabelled pixels."
        )
    return sums, counts


@torch.no_grad()
def confident_labels(
    logits: Tensor,
    threshold: float = 0.9,
    *,
    mode: Literal["logit", "prob"] = "logit",
    ignore_index: int = 255,
) -> Tensor:
    """Label each pixel with its argmax class where the prediction is confident, else ``ignore_index``.

    ``mode="logit"`` compares the raw maximum logit with ``threshold``, as the release does (its
    ``SOLVER.DELTA = 0.9``); ``mode="prob"`` compares the maximum softmax probability instead. A pixel is
    kept when its confidence is ``>= threshold``.

    Args:
        logits: class scores, (B, C, H, W) (or (N, C)); no gradient flows through this function.
        threshold: the confidence a pixel needs to keep its label.
        mode: ``"logit"`` (the release) or ``"prob"``.
        ignore_index: the label given to unconfident pixels.

    Returns:
        int64 labels, (B, H, W) (or (N,)).

    Shape:
        logits (B, C, H, W) -> labels (B, H, W).
    """
    if mode not in ("logit", "prob"):
        raise ConfigError(f"confident_labels mode must be 'logit' or 'prob', got {mode!r}.")
    max_logit, labels = logits.max(dim=1)
    if mode == "logit":
        confidence = max_logit.float()
    else:
        # max softmax probability = exp(max logit - logsumexp(logits)), without building the softmax
        confidence = torch.exp(max_logit.float() - torch.logsumexp(logits.float(), dim=1))
    return labels.masked_fill_(~(confidence >= threshold), ignore_index)


def downsample_labels(labels: Tensor, size: tuple[int, int] | torch.Size, *, ignore_index: int = 255) -> Tensor:
    """Downsample label maps to the feature grid with nearest-neighbour sampling, exactly as the release.

    The release calls ``F.interpolate(labels[None].float(), size, mode="nearest")``; this picks the same
    source rows and columns (those ``F.interpolate`` picks for an index ramp) and gathers them from
    ``labels`` directly, without a float copy of the label maps. Nearest sampling never mixes labels, so
    pixels labelled ``ignore_index`` stay ignored; the argument is accepted for a uniform signature.

    Args:
        labels: integer label maps, (B, H, W).
        size: the target (h, w), e.g. ``features.shape[-2:]``.
        ignore_index: the ignore label (unchanged by nearest sampling).

    Returns:
        int64 labels, (B, h, w).

    Shape:
        labels (B, H, W) -> (B, h, w).
    """
    del ignore_index  # nearest sampling copies labels; nothing to special-case
    if labels.dim() != 3:
        raise DataError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}.")
    out_h, out_w = (int(s) for s in size)
    in_h, in_w = labels.shape[-2:]
    ramp_h = torch.arange(in_h, dtype=torch.float32, device=labels.device).view(1, 1, in_h, 1)
    ramp_w = torch.arange(in_w, dtype=torch.float32, device=labels.device).view(1, 1, 1, in_w)
    rows = F.interpolate(ramp_h, size=(out_h, 1), mode="nearest").view(out_h).long()
    cols = F.interpolate(ramp_w, size=(1, out_w), mode="nearest").view(out_w).long()
    return labels[:, rows][:, :, cols].long()
