"""Prediction: single- and multi-scale (+ flip) class probabilities the way the release's ``test.py`` computes
them, and loading a checkpoint for it.

For every scale ``s`` the (already resized) input of size (h, w) is resized again to
``(int(h * s), int(w * s))`` (bilinear, ``align_corners=True``), run through the network, its logits
upsampled (bilinear, ``align_corners=True``) to the output size, and turned into probabilities with a
softmax; with ``flip`` the horizontally flipped input is handled the same way and flipped back. The
probabilities of all passes are averaged.

Memory stays bounded for huge photos and inputs (see docs/performance.md):

- a network pass on more than :data:`proca.config.TILE_PIXEL_LIMIT` input pixels runs in overlapping
  :data:`proca.config.TILE_SIZE` windows whose logits are averaged (:func:`tiled_logits`); a scaled input
  over :data:`proca.config.SIZE_RANGE`'s largest side is refused;
- :func:`predict_ids` (used by ``proca eval``, ``proca infer`` and :func:`proca.predict`) returns the argmax
  directly and, for outputs over :data:`PROBS_PIXEL_LIMIT` pixels, upsamples, averages and takes the argmax
  a band of rows at a time, so the full-resolution (C, H, W) probabilities are never held.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.config import SIZE_RANGE, TILE_PIXEL_LIMIT, TILE_SIZE, check_scales, check_size
from proca.data.classes import CLASS_SETS, ClassSet, get_class_set
from proca.errors import CheckpointError, ConfigError

__all__ = [
    "PROBS_PIXEL_LIMIT",
    "aspect_input_size",
    "check_eval_size",
    "eval_input_size",
    "load_for_inference",
    "predict_ids",
    "predict_probs",
    "resize_images",
    "tiled_logits",
]

#: Outputs with more pixels than this are upsampled and reduced to ids a band of rows at a time.
PROBS_PIXEL_LIMIT = 2048 * 2048
#: Rows per band of the banded argmax (a band holds C x rows x W probabilities per pass).
_BAND_PIXELS = 1 << 19
#: Tile strides are multiples of this, so every network's output grid lines up across windows.
_TILE_ALIGN = 32


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


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    logits = model(x)
    if isinstance(logits, (tuple, list)):
        logits = logits[-1]
    return logits.float()


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def tiled_logits(
    model: nn.Module,
    x: Tensor,
    *,
    pixel_limit: int = TILE_PIXEL_LIMIT,
    tile: tuple[int, int] = TILE_SIZE,
) -> Tensor:
    """The network's logits of ``x``, in overlapping windows when ``x`` has more than ``pixel_limit`` pixels.

    Windows of ``tile`` (H, W) with a stride of about two thirds of a window (a multiple of 32) cover the
    input; each window's logits are resized to its share of a canvas at the network's output stride and the
    overlapping logits are averaged. Memory grows with the window, not with the input (the canvas is
    (C, H/s, W/s) for the network's stride s).

    Shape:
        x: (B, 3, H, W) -> (B, C, h, w) float32.
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h * w <= pixel_limit:
        return _forward(model, x)
    th, tw = min(tile[0], h), min(tile[1], w)
    sh = max(_TILE_ALIGN, (th * 2 // 3) // _TILE_ALIGN * _TILE_ALIGN)
    sw = max(_TILE_ALIGN, (tw * 2 // 3) // _TILE_ALIGN * _TILE_ALIGN)
    canvas: Tensor | None = None
    counts: Tensor | None = None
    stride = 1.0
    for y0 in _starts(h, th, sh):
        for x0 in _starts(w, tw, sw):
            logits = _forward(model, x[..., y0 : y0 + th, x0 : x0 + tw])
            if canvas is None:
                stride = th / logits.shape[-2]
                size = (max(1, round(h / stride)), max(1, round(w / stride)))
                canvas = logits.new_zeros((x.shape[0], logits.shape[1], *size))
                counts = logits.new_zeros(size)
            assert counts is not None
            r0, r1 = round(y0 / stride), max(round(y0 / stride) + 1, round((y0 + th) / stride))
            c0, c1 = round(x0 / stride), max(round(x0 / stride) + 1, round((x0 + tw) / stride))
            r1, c1 = min(r1, canvas.shape[-2]), min(c1, canvas.shape[-1])
            if tuple(logits.shape[-2:]) != (r1 - r0, c1 - c0):
                logits = F.interpolate(logits, size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)
            canvas[..., r0:r1, c0:c1] += logits
            counts[r0:r1, c0:c1] += 1
            del logits
    assert canvas is not None and counts is not None
    return canvas.div_(counts.clamp_(min=1))


def _network_logits(model: nn.Module, x: Tensor, flip: bool) -> Tensor:
    """Logits of ``x`` (and of its mirror image, flipped back, after them in the batch)."""
    if not flip:
        return tiled_logits(model, x)
    if x.shape[-2] * x.shape[-1] <= TILE_PIXEL_LIMIT:
        logits = _forward(model, torch.cat([x, x.flip(-1)], dim=0))
        batch = x.shape[0]
        return torch.cat([logits[:batch], logits[batch:].flip(-1)], dim=0)
    return torch.cat([tiled_logits(model, x), tiled_logits(model, x.flip(-1)).flip(-1)], dim=0)


def _scaled(images: Tensor, scale: float) -> Tensor:
    h, w = images.shape[-2:]
    size = (int(h * scale), int(w * scale))
    if max(size) > SIZE_RANGE[1] or min(size) < 1:
        raise ConfigError(
            f"scale {scale:g} turns the {h}x{w} network input into {size[0]}x{size[1]}; sides must stay within "
            f"1..{SIZE_RANGE[1]}: give a smaller --input-size or scale"
        )
    return images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=True)


def _probs(model: nn.Module, x: Tensor, out_size: tuple[int, int], flip: bool) -> Tensor:
    """Softmax of the upsampled logits of ``x`` (and of its mirror image, flipped back, summed)."""
    batch = x.shape[0]
    logits = _network_logits(model, x, flip)
    logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=True)
    probs = logits.softmax(dim=1)
    if flip:
        return probs[:batch] + probs[batch:]
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
    scales = check_scales(scales, "scales")
    out_hw = (int(out_size[0]), int(out_size[1]))
    if input_size is not None:
        images = resize_images(images, (int(input_size[0]), int(input_size[1])))
    total: Tensor | None = None
    for scale in scales:
        probs = _probs(model, _scaled(images, scale), out_hw, flip)
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(scales) * (2 if flip else 1))


def _check_id_range(num_classes: int) -> None:
    if num_classes > 256:
        raise ValueError(f"predict_ids returns uint8 ids; the model predicts {num_classes} classes")


def _upsample_matrix(out_len: int, in_len: int, device: torch.device) -> Tensor:
    """(out_len, in_len) weights of 1-D linear interpolation with ``align_corners=True``."""
    pos = torch.arange(out_len, dtype=torch.float64)  # built on the CPU: float64 is not on every device
    pos = pos * ((in_len - 1) / (out_len - 1)) if out_len > 1 else pos.zero_()
    low = pos.floor().long().clamp_(0, in_len - 1)
    high = (low + 1).clamp_(max=in_len - 1)
    frac = (pos - low).float()
    mat = torch.zeros(out_len, in_len)
    rows = torch.arange(out_len)
    mat.index_put_((rows, low), 1 - frac, accumulate=True)
    mat.index_put_((rows, high), frac, accumulate=True)
    return mat.to(device)


@torch.no_grad()
def predict_ids(
    model: nn.Module,
    images: Tensor,
    *,
    out_size: tuple[int, int] | Sequence[int],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    input_size: tuple[int, int] | Sequence[int] | None = None,
    probs_pixel_limit: int = PROBS_PIXEL_LIMIT,
) -> Tensor:
    """The argmax of :func:`predict_probs`, computed with bounded memory for huge outputs.

    Outputs of up to ``probs_pixel_limit`` pixels take the argmax of :func:`predict_probs`; larger ones keep
    every pass's logits at the network's resolution and upsample (bilinear, ``align_corners=True``, as
    separable interpolation matrices), softmax, average and reduce a band of output rows at a time.

    Returns:
        uint8 class ids (a model with more than 256 classes is refused).

    Shape:
        images: (B, 3, h, w) -> (B, H, W).
    """
    out_hw = (int(out_size[0]), int(out_size[1]))
    if out_hw[0] * out_hw[1] <= probs_pixel_limit:
        probs = predict_probs(model, images, out_size=out_hw, scales=scales, flip=flip, input_size=input_size)
        _check_id_range(probs.shape[1])
        return probs.argmax(dim=1).to(torch.uint8)
    scales = check_scales(scales, "scales")
    if input_size is not None:
        images = resize_images(images, (int(input_size[0]), int(input_size[1])))
    batch = images.shape[0]
    passes = [_network_logits(model, _scaled(images, scale), flip) for scale in scales]
    height, width = out_hw
    device = passes[0].device
    rows = [_upsample_matrix(height, p.shape[-2], device) for p in passes]
    _check_id_range(passes[0].shape[1])
    band = max(1, _BAND_PIXELS // max(1, width))
    ids = torch.empty((batch, height, width), dtype=torch.uint8, device=device)
    for r0 in range(0, height, band):
        r1 = min(height, r0 + band)
        total: Tensor | None = None
        for logits, row_mat in zip(passes, rows, strict=True):
            # the band's rows by their interpolation weights (only the source rows they use), then the
            # columns by F.interpolate (rows -> rows is the identity with align_corners=True)
            weights = row_mat[r0:r1]
            used = weights.abs().sum(dim=0).nonzero()
            lo, hi = int(used.min()), int(used.max()) + 1
            band_rows = torch.matmul(weights[:, lo:hi], logits[..., lo:hi, :])
            part = F.interpolate(band_rows, size=(r1 - r0, width), mode="bilinear", align_corners=True)
            part = part.softmax(dim=1)
            part = part[:batch] + part[batch:] if flip else part
            total = part if total is None else total.add_(part)
        assert total is not None
        ids[:, r0:r1] = total.argmax(dim=1).to(torch.uint8)
    return ids


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
    from proca.models.checkpoint import non_finite_keys

    bad = non_finite_keys(dict(model.state_dict()))
    if bad:
        raise CheckpointError(
            f"{path}: the weights hold NaN or infinite values ({', '.join(bad[:3])}); the model cannot predict. "
            "Use an earlier checkpoint of the run (e.g. its .best.safetensors)."
        )
    model.to(device).eval()
    return model, class_set, meta


def eval_input_size(meta: dict[str, Any], checkpoint: str | os.PathLike[str]) -> tuple[int, int]:
    """A checkpoint's ``eval_input_size`` metadata as (H, W), checked (512x1024 when it names none).

    Raises:
        CheckpointError: sides that are not whole numbers within :data:`proca.config.SIZE_RANGE`; the message
            names the key and ``--input-size``.
    """
    value = meta.get("eval_input_size")
    if value is None:
        return (512, 1024)
    try:
        return check_size(value if isinstance(value, (list, tuple)) else [], "eval_input_size")
    except ConfigError:
        low, high = SIZE_RANGE
        raise CheckpointError(
            f"{checkpoint}: metadata eval_input_size {value!r} is not [H, W] with whole sides in {low}..{high}; "
            "pass --input-size HxW (e.g. --input-size 512x1024; input_size=(H, W) in Python) to choose the "
            "network input"
        ) from None


def check_eval_size(
    checkpoint: str | os.PathLike[str],
    eval_size: tuple[int, int],
    image_path: str | os.PathLike[str] | None,
    *,
    max_ratio: float = 2.0,
) -> bool:
    """Print one yellow warning line when the checkpoint's evaluation size is far from the images' size.

    ``eval``/``infer`` without ``--input-size`` resize every image to (about) the checkpoint's
    ``eval_input_size``; a model trained on 96x192 crops then predicts 1024x2048 photos at 96x192.

    Args:
        checkpoint: the checkpoint's path (named in the message).
        eval_size: (H, W) the images will be resized to.
        image_path: a representative image (the first one); nothing is checked when None or unreadable.
        max_ratio: warn when a side of the image is more than this many times larger or smaller.

    Returns:
        Whether the warning was printed.
    """
    if image_path is None:
        return False
    from proca.data._decode import image_header_size

    found = image_header_size(image_path)  # refuses a too large image before any work
    if found is None:
        return False  # the dataset reports unreadable images with the file's name
    h, w = found
    ratios = (h / eval_size[0], w / eval_size[1])
    if all(1 / max_ratio <= r <= max_ratio for r in ratios):
        return False
    from rich.console import Console

    Console(stderr=True, highlight=False).print(
        f"[yellow]warning:[/] {checkpoint} was evaluated at {eval_size[0]}x{eval_size[1]} but the images are "
        f"{h}x{w} (e.g. {os.path.basename(image_path)}); they are resized to about "
        f"{eval_size[0]}x{eval_size[1]}. Pass --input-size HxW (e.g. --input-size {h}x{w}) to choose the size.",
        soft_wrap=True,
    )
    return True
