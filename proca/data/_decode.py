"""Lossless image and label decoding shared by the dataset readers and the label-info scan.

Labels are decoded with ``torchvision.io.decode_png(..., ImageReadMode.UNCHANGED)``, which returns
the palette indices of a palette PNG (GTA5) and the full 16-bit values of a 16-bit PNG (SYNTHIA);
Pillow would give 8-bit values for the latter. Raw label ids are validated against the id range of
their label space and mapped to train ids with one lookup table.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_png, read_file

from proca.data.classes import IGNORE_INDEX
from proca.errors import DataError

__all__ = ["RAW_ID_RANGES", "LabelDecoder", "read_label_ids", "read_rgb"]

# Valid raw ids per label space: (largest valid id, extra ids allowed).
# Cityscapes/GTA5: 0..33, plus 255, the 8-bit form of the license-plate id -1.
# SYNTHIA RAND-CITYSCAPES: 0..22. ACDC and Dark Zurich use the Cityscapes ids.
RAW_ID_RANGES: dict[str, tuple[int, tuple[int, ...]]] = {
    "cityscapes": (33, (255,)),
    "gtav": (33, (255,)),
    "synthia": (22, ()),
    # BDD100K sem_seg masks: the 19 Cityscapes train ids and 255.
    "cityscapes_trainid": (18, (255,)),
    # Mapillary Vistas v1.2 labels: the 66 class ids (65 = unlabeled).
    "vistas": (65, ()),
}


def read_rgb(path: str | os.PathLike[str], layout: str = "") -> torch.Tensor:
    """Decode an image file (PNG, JPEG or WebP) to RGB, turned upright by its EXIF orientation.

    Args:
        path: the image file.
        layout: the expected dataset layout, quoted in the error message.

    Returns:
        uint8 tensor.

    Shape:
        (3, H, W).
    """
    data = _read_bytes(path, "image", layout)
    try:
        with _quiet_torchvision_io():
            return decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as err:
        raise DataError(
            f"cannot decode image {path} ({_first_line(err)}); expected a PNG, JPEG or WebP file{_hint(layout)}"
        ) from None


def read_label_ids(path: str | os.PathLike[str], raw: str, layout: str = "") -> np.ndarray:
    """Decode a label PNG to its raw ids, losslessly.

    ``raw`` selects the on-disk format: ``"gtav"``/``"cityscapes"``/``"trainid"`` read a single-channel
    8-bit PNG (palette indices for palette PNGs, never the colours); ``"synthia"`` reads channel 0 of
    a 16-bit (or 8-bit) 3-channel PNG.

    Returns:
        uint8 (8-bit files) or uint16 (16-bit files) array.

    Shape:
        (H, W).
    """
    data = _read_bytes(path, "label", layout)
    try:
        with _quiet_torchvision_io():
            decoded = decode_png(data, ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as err:
        raise DataError(
            f"cannot decode label {path} ({_first_line(err)}); expected a PNG file{_hint(layout)}"
        ) from None
    channels = decoded.shape[0]
    if raw == "synthia":
        if channels not in (1, 3, 4):
            raise DataError(f"label {path} has {channels} channels; expected a 3-channel 16-bit SYNTHIA label PNG")
        ids = decoded[0]
    else:
        if channels != 1:
            raise DataError(
                f"label {path} has {channels} channels (a colour image?); expected a single-channel or palette PNG "
                f"whose pixel values are label ids{_hint(layout)}"
            )
        if decoded.dtype != torch.uint8:
            raise DataError(f"label {path} is a 16-bit PNG; expected an 8-bit single-channel or palette PNG")
        ids = decoded[0]
    return ids.numpy()


class LabelDecoder:
    """Reads raw label files, validates their ids and maps them to train ids with a lookup table.

    Args:
        lut: lookup table raw id -> train id (uint8, 256 or 65536 entries).
        raw: label space of the files (``"gtav"``, ``"cityscapes"``, ``"synthia"`` or ``"trainid"``).
        num_classes: number of train ids (only used for ``raw="trainid"``).
        strict: raise :class:`DataError` on ids outside the label space; else map them to 255 with
            one warning per decoder.
        layout: the expected dataset layout, quoted in error messages.
    """

    def __init__(self, lut: np.ndarray, raw: str, *, num_classes: int, strict: bool = True, layout: str = "") -> None:
        self.raw = raw
        self.strict = strict
        self.layout = layout
        self.num_classes = num_classes
        lut = np.asarray(lut, dtype=np.uint8)
        if raw == "trainid":
            valid = np.zeros(256, dtype=bool)
            valid[:num_classes] = True
            valid[IGNORE_INDEX] = True
        else:
            top, extra = RAW_ID_RANGES[raw]
            valid = np.zeros(len(lut), dtype=bool)
            valid[: top + 1] = True
            valid[list(extra)] = True
        self.valid = valid
        # Invalid ids map to ignore in the lookup table itself; validation decides whether that is allowed.
        self.lut = np.where(valid, lut, np.uint8(IGNORE_INDEX)).astype(np.uint8)
        self._warned = False

    def check(self, ids: np.ndarray, path: str | os.PathLike[str]) -> None:
        """Raise (strict) or warn once when ``ids`` holds values outside the label space."""
        top = int(ids.max()) if ids.size else 0
        if top < len(self.valid) and self.valid[: top + 1].all():
            return
        present = np.unique(ids)
        bad = [int(v) for v in present if v >= len(self.valid) or not self.valid[v]]
        if not bad:
            return
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        if self.strict:
            raise DataError(f"label {path} holds ids outside the {self.raw} label set ({self._valid_text()}): {shown}")
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"label {path} holds ids outside the {self.raw} label set: {shown}; they are ignored (255), "
                "later files are not reported",
                stacklevel=3,
            )

    def raw_ids(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode and validate the raw ids of one label file. Shape: (H, W)."""
        ids = read_label_ids(path, "synthia" if self.raw == "synthia" else "gtav", self.layout)
        self.check(ids, path)
        return ids

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Decode one label file to train ids (uint8, 255 = ignore). Shape: (H, W)."""
        ids = self.raw_ids(path)
        if ids.dtype == np.uint16 and len(self.lut) < 65536:
            ids = np.minimum(ids, len(self.lut) - 1)
        return self.lut[ids]

    def _valid_text(self) -> str:
        if self.raw == "trainid":
            return f"train ids 0..{self.num_classes - 1} and 255"
        top, extra = RAW_ID_RANGES[self.raw]
        return f"ids 0..{top}" + "".join(f" and {e}" for e in extra)


@contextlib.contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    # torchvision >= 0.29 marks its image codecs deprecated (in favour of TorchCodec) with a warning on
    # every call; proca depends on decode_png's lossless 16-bit output, so the notice is not the user's.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*image decoding and encoding capabilities", category=DeprecationWarning
        )
        yield


def _read_bytes(path: str | os.PathLike[str], what: str, layout: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist{_hint(layout)}")
    try:
        data = read_file(str(p))
    except (RuntimeError, OSError) as err:
        raise DataError(f"cannot read {what} file {p} ({_first_line(err)})") from None
    if data.numel() == 0:
        raise DataError(f"{what} file {p} is empty{_hint(layout)}")
    return data


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    # torchvision prefixes its C++ location ("decode_png, /__w/.../decode_png.cpp:79, "): not the user's concern
    return re.sub(r"^[\w:()]+, \S+\.cpp:\d+, ", "", line)


def _hint(layout: str) -> str:
    return f"; expected layout: {layout}" if layout else ""
