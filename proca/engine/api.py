"""The one-call Python API: ``proca.predict``, ``proca.colorize`` and ``proca.overlay``.

:func:`predict` does what ``proca infer`` does for one photo: the photo is resized (bicubic) to the
network input (by default the checkpoint's evaluation pixel count at the photo's aspect ratio, see
:func:`~proca.engine.predict.aspect_input_size`), normalised, predicted with
:func:`~proca.engine.predict.predict_ids` at the photo's own size (the argmax of
:func:`~proca.engine.predict.predict_probs`, with bounded memory for huge photos).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from proca.data.classes import ClassSet, get_class_set
from proca.errors import ConfigError, DataError

__all__ = ["colorize", "overlay", "predict"]

#: Evaluation input size used for a model object (no checkpoint metadata): the release's 512x1024.
DEFAULT_REFERENCE = (512, 1024)


def _photo(image: Any) -> np.ndarray:
    """An image path, PIL image or array as an (H, W, 3) uint8 RGB array, read as ``proca infer`` reads files.

    See :func:`proca.data._decode.image_to_rgb8`: any mode, 8 or 16 bits, EXIF orientation applied.
    """
    from proca.data._decode import image_to_rgb8

    return image_to_rgb8(image).permute(1, 2, 0).contiguous().numpy()


def _class_set(value: str | ClassSet) -> ClassSet:
    if isinstance(value, ClassSet):
        return value
    try:
        return get_class_set(value)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _model_class_set(model: nn.Module) -> ClassSet:
    from proca.models.metadata import class_set_for

    num = getattr(model, "num_classes", None)
    if num is None:
        raise ConfigError(
            f"the model ({type(model).__name__}) has no num_classes; give a proca network or a checkpoint path"
        )
    name = class_set_for(int(num))
    if name is None:
        raise ConfigError(
            f"the model predicts {num} classes; proca.predict maps 19 (cityscapes19) or 16 (synthia16) classes"
        )
    return get_class_set(name)


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


@torch.no_grad()
def predict(
    checkpoint_or_model: str | os.PathLike[str] | nn.Module,
    image: Any,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    input_size: tuple[int, int] | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Segment one photo: train ids at the photo's own size.

    Args:
        checkpoint_or_model: a proca ``.safetensors`` checkpoint or a released ``.pth`` file (loaded
            with the safe loader; pass the loaded model instead to predict many photos), or a proca
            network with ``num_classes`` 19 (cityscapes19) or 16 (synthia16). A model is run in eval
            mode (its mode is restored afterwards) where its parameters are; it must be on ``device``.
        image: a path (str or Path; PNG, JPEG or WebP), a PIL image (any mode), or an (H, W, 3) RGB or
            (H, W) grayscale numpy array, uint8 or uint16 (16-bit values are scaled to 8 bits).
        scales: test scales, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``; each finite, in
            :data:`proca.config.SCALE_RANGE`.
        flip: also average the horizontally flipped prediction.
        input_size: (h, w) network input, sides in :data:`proca.config.SIZE_RANGE`; default: the
            checkpoint's ``eval_input_size`` pixel count (512x1024 for a model object) at the photo's aspect
            ratio. Inputs over :data:`proca.config.TILE_PIXEL_LIMIT` pixels are predicted in tiles.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.

    Returns:
        uint8 train ids of the class set (the model predicts no ignore).

    Shape:
        image: (H, W, 3) -> (H, W).

    Raises:
        CheckpointError: a missing or unreadable checkpoint.
        DataError: an unreadable image.
        ConfigError: a model with another class count, or on another device than ``device``; scales or an
            input size out of range.
    """
    from torchvision import tv_tensors

    from proca.config import check_scales, check_size
    from proca.data._decode import image_to_rgb8
    from proca.data.transforms import test_transform
    from proca.engine.device import resolve_device
    from proca.engine.predict import aspect_input_size, eval_input_size, load_for_inference, predict_ids

    scales = check_scales(scales, "scales")
    if input_size is not None:
        input_size = check_size(input_size, "input_size")
    dev = resolve_device(device)
    rgb = image_to_rgb8(image)  # (3, H, W) uint8, no copy kept: a huge photo is held once
    if isinstance(checkpoint_or_model, nn.Module):
        model = checkpoint_or_model
        _model_class_set(model)
        where = _model_device(model)
        if where.type != dev.type or (dev.index is not None and where.index != dev.index):
            raise ConfigError(f"the model is on {where} but device={str(device)!r}; pass device={str(where)!r}")
        reference = DEFAULT_REFERENCE
    else:
        model, _, meta = load_for_inference(checkpoint_or_model, dev)
        reference = eval_input_size(meta, checkpoint_or_model) if input_size is None else input_size
    h, w = int(rgb.shape[-2]), int(rgb.shape[-1])
    size = (int(input_size[0]), int(input_size[1])) if input_size is not None else aspect_input_size((h, w), reference)
    pixels = tv_tensors.Image(rgb)
    x = test_transform(size)(pixels).as_subclass(torch.Tensor).float()
    was_training = model.training
    model.eval()
    try:
        ids = predict_ids(model, x[None].to(dev), out_size=(h, w), scales=scales, flip=flip)
    finally:
        model.train(was_training)
    return ids[0].cpu().numpy()


def colorize(ids: np.ndarray, class_set: str | ClassSet = "cityscapes19") -> np.ndarray:
    """The official colours of train ids (ignore, 255, and unknown ids: black).

    Args:
        ids: train ids of ``class_set``.
        class_set: ``cityscapes19``, ``synthia16`` or a :class:`~proca.data.classes.ClassSet`.

    Shape:
        ids: (H, W) -> (H, W, 3) uint8.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise DataError(f"train ids must be an (H, W) array; got shape {ids.shape}")
    return _class_set(class_set).colorize(ids.astype(np.uint8))


def overlay(
    image: Any, ids: np.ndarray, *, alpha: float = 0.5, class_set: str | ClassSet = "cityscapes19"
) -> np.ndarray:
    """Blend the class colours over the photo, ``(1 - alpha) * photo + alpha * colour`` (ignore: the photo).

    Args:
        image: a path, a PIL image or an (H, W, 3) uint8 RGB array.
        ids: train ids of ``class_set`` at the image's size.
        alpha: weight of the colours, in [0, 1].
        class_set: ``cityscapes19``, ``synthia16`` or a :class:`~proca.data.classes.ClassSet`.

    Shape:
        image: (H, W, 3); ids: (H, W) -> (H, W, 3) uint8.
    """
    from proca.engine.encode import overlay as blend

    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1]; got {alpha}")
    photo = _photo(image)
    ids = np.asarray(ids)
    if ids.shape != photo.shape[:2]:
        raise DataError(f"train ids of shape {ids.shape} do not match the image's (H, W) {photo.shape[:2]}")
    return blend(photo, ids.astype(np.uint8), _class_set(class_set), alpha=alpha)
