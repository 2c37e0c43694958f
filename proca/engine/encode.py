"""Turn a prediction of train ids into an image file: the one encoder of ``proca eval --save-predictions``
and ``proca infer``.

Formats: ``labelid`` (8-bit grey PNG of official Cityscapes label ids, what the official evaluator reads),
``trainid`` (palette PNG whose indices are the class set's train ids, 255 = ignore, with the official
colours), ``color`` (RGB PNG of the official colours) and, for ``proca infer``, ``overlay`` (the colours
blended over the photo).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from proca.data.classes import ClassSet
from proca.errors import ConfigError

__all__ = [
    "EVAL_FORMATS",
    "INFER_FORMATS",
    "PREDICTION_SUFFIXES",
    "check_format",
    "encode_prediction",
    "overlay",
    "prediction_path",
    "save_prediction",
]

#: Formats of ``proca eval --save-predictions`` (no photo there, so no overlay).
EVAL_FORMATS = ("labelid", "trainid", "color")
#: Formats of ``proca infer``.
INFER_FORMATS = ("color", "overlay", "labelid", "trainid")

#: File suffix per saved-prediction format: ``<city>/<city>_<seq>_<frame><suffix>``.
PREDICTION_SUFFIXES: dict[str, str] = {"labelid": "_labelIds.png", "trainid": "_trainIds.png", "color": "_color.png"}


def check_format(fmt: str, valid: Sequence[str] = INFER_FORMATS) -> str:
    """Return ``fmt`` if it is one of ``valid``.

    Raises:
        ConfigError: naming ``--format`` and the valid formats.
    """
    if fmt not in valid:
        raise ConfigError(f"--format {fmt!r} is not a prediction format; valid: {', '.join(valid)}.")
    return fmt


def overlay(photo: np.ndarray, train_ids: np.ndarray, class_set: ClassSet, *, alpha: float = 0.5) -> np.ndarray:
    """Blend the class colours over the photo: ``(1 - alpha) * photo + alpha * colour`` (ignore: photo only).

    Shape:
        photo: (H, W, 3) uint8; train_ids: (H, W) -> (H, W, 3) uint8.
    """
    colors = class_set.colorize(train_ids).astype(np.float32)
    base = photo.astype(np.float32)
    a = np.where((np.asarray(train_ids) < class_set.num_classes)[..., None], alpha, 0.0).astype(np.float32)
    return np.clip(base * (1 - a) + colors * a + 0.5, 0, 255).astype(np.uint8)


def encode_prediction(
    train_ids: np.ndarray, class_set: ClassSet, fmt: str, *, photo: np.ndarray | None = None
) -> Image.Image:
    """The image of a prediction in ``fmt`` (see the module docstring).

    Args:
        train_ids: predicted train ids of ``class_set`` (255: ignore).
        class_set: gives the label ids and colours.
        fmt: ``labelid``, ``trainid``, ``color`` or ``overlay``.
        photo: the photo, for ``overlay`` only.

    Shape:
        train_ids: (H, W); photo: (H, W, 3) uint8.
    """
    check_format(fmt)
    ids = np.asarray(train_ids, dtype=np.uint8)
    if fmt == "labelid":
        return Image.fromarray(class_set.train_to_label_ids(ids), mode="L")
    if fmt == "trainid":
        image = Image.fromarray(ids, mode="P")
        image.putpalette(class_set.palette())
        return image
    if fmt == "color":
        return Image.fromarray(class_set.colorize(ids), mode="RGB")
    if photo is None:
        raise ValueError("the overlay format needs the photo")
    return Image.fromarray(overlay(photo, ids, class_set), mode="RGB")


def save_prediction(
    train_ids: np.ndarray,
    path: str | os.PathLike[str],
    class_set: ClassSet,
    fmt: str,
    *,
    photo: np.ndarray | None = None,
) -> None:
    """Write :func:`encode_prediction` of ``train_ids`` to ``path`` atomically."""
    from proca.io import save_image_atomic

    save_image_atomic(encode_prediction(train_ids, class_set, fmt, photo=photo), path)


def prediction_path(out_dir: str | os.PathLike[str], name: str, fmt: str) -> Path:
    """Where ``proca eval --save-predictions`` writes the prediction of the image called ``name``.

    ``name`` is the dataset's ``"<city>/<city>_<seq>_<frame>"``; the file is
    ``out_dir/<city>/<city>_<seq>_<frame>_labelIds.png`` (``_trainIds.png``, ``_color.png``), which matches
    the ``<city>_<seq>_<frame>*.png`` pattern the official evaluator and the benchmark server look for.
    """
    check_format(fmt, EVAL_FORMATS)
    return Path(out_dir) / f"{name}{PREDICTION_SUFFIXES[fmt]}"
