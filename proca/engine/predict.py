"""Prediction: single- and multi-scale (+ flip) class probabilities the way the release's ``test.py`` computes
them, and loading a checkpoint for it.

For every scale ``s`` the (already resized) input of size (h, w) is resized again to
``(int(h * s), int(w * s))`` (bilinear, ``align_corners=True``), run through the network, its logits
upsampled (bilinear, ``align_corners=True``) to the output size, and turned into probabilities with a
softmax; with ``flip`` the horizontally flipped input is handled the same way and flipped back. The
probabilities of all passes are averaged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.data.classes import CLASS_SETS, ClassSet, get_class_set
from proca.errors import CheckpointError

__all__ = ["aspect_input_size", "check_eval_size", "load_for_inference", "predict_probs", "resize_images"]


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


def _probs(model: nn.Module, x: Tensor, out_size: tuple[int, int], flip: bool) -> Tensor:
    """Softmax of the upsampled logits of ``x`` (and of its mirror image, flipped back, summed)."""
    batch = x.shape[0]
    inputs = torch.cat([x, x.flip(-1)], dim=0) if flip else x
    logits = model(inputs)
    if isinstance(logits, (tuple, list)):
        logits = logits[-1]
    logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=True)
    probs = logits.softmax(dim=1)
    if flip:
        return probs[:batch] + probs[batch:].flip(-1)
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
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {tuple(scales)}")
    out_hw = (int(out_size[0]), int(out_size[1]))
    if input_size is not None:
        images = resize_images(images, (int(input_size[0]), int(input_size[1])))
    h, w = images.shape[-2:]
    total: Tensor | None = None
    for scale in scales:
        size = (int(h * scale), int(w * scale))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=True)
        probs = _probs(model, x, out_hw, flip)
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(scales) * (2 if flip else 1))


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
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            w, h = im.size
    except OSError:
        return False  # the dataset reports unreadable images with the file's name
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
