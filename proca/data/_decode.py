"""Lossless image and label decoding shared by the dataset readers and the label-info scan.

Labels are decoded with ``torchvision.io.decode_png(..., ImageReadMode.UNCHANGED)``, which returns
the palette indices of a palette PNG (GTA5) and the full 16-bit values of a 16-bit PNG (SYNTHIA);
Pillow would give 8-bit values for the latter. Raw label ids are validated against the id range of
their label space and mapped to train ids with one lookup table.

Photos take one path to the network, whatever reads them (the datasets of ``proca train``/``eval``/
``pseudo-label``, ``proca infer`` and :func:`proca.predict`): :func:`read_rgb` for files and
:func:`image_to_rgb8` for in-memory images. Every mode (RGB, RGBA, grayscale, palette, CMYK) becomes RGB,
16-bit files are scaled to 8 bits (``round(v / 257)``: the 8-bit-equivalent photo the models were trained
on), the EXIF orientation of a JPEG is applied, and images over :data:`proca.config.IMAGE_PIXEL_LIMIT`
pixels are refused before they are decoded.
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

from proca.config import IMAGE_PIXEL_LIMIT
from proca.data.classes import IGNORE_INDEX
from proca.errors import DataError

__all__ = [
    "RAW_ID_RANGES",
    "LabelDecoder",
    "check_image_pixels",
    "image_header_size",
    "image_to_rgb8",
    "read_label_ids",
    "read_rgb",
]

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
    """Decode an image file (PNG, JPEG or WebP; any mode, 8 or 16 bits) to 8-bit RGB.

    Grayscale, palette, RGBA and CMYK files become RGB (alpha is dropped), 16-bit PNGs are scaled to
    8 bits, and a JPEG's EXIF orientation is applied.

    Args:
        path: the image file.
        layout: the expected dataset layout, quoted in the error message.

    Returns:
        uint8 tensor.

    Shape:
        (3, H, W).

    Raises:
        DataError: a missing, empty, undecodable or too large (:data:`proca.config.IMAGE_PIXEL_LIMIT`) file.
    """
    data = _read_bytes(path, "image", layout)
    check_image_pixels(path)
    try:
        with _quiet_torchvision_io():
            decoded = decode_image(data, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except (RuntimeError, ValueError) as err:
        raise DataError(
            f"cannot decode image {path} ({_first_line(err)}); expected a PNG, JPEG or WebP file{_hint(layout)}"
        ) from None
    return _to_uint8(decoded, path)


def _to_uint8(image: torch.Tensor, source: object) -> torch.Tensor:
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:
        # round(v * 255 / 65535) == round(v / 257): 65535 -> 255, 257k -> k
        return torch.div(image.to(torch.int32) + 128, 257, rounding_mode="floor").clamp_(0, 255).to(torch.uint8)
    raise DataError(f"image {source} decodes to {image.dtype}; expected 8- or 16-bit pixels")


def check_image_pixels(path: str | os.PathLike[str]) -> None:
    """Refuse an image file larger than :data:`proca.config.IMAGE_PIXEL_LIMIT` pixels from its header alone.

    Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is turned into the same message.
    Files Pillow cannot identify are left to the decoder, which names them.
    """
    image_header_size(path)


def image_header_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(H, W) from an image file's header (nothing is decoded); None when Pillow cannot identify the file.

    Raises:
        DataError: the image has more than :data:`proca.config.IMAGE_PIXEL_LIMIT` pixels (or trips Pillow's
            decompression-bomb guard); the message names the file and the limit.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
        raise DataError(_too_large(path, pixels)) from None
    except (OSError, ValueError, SyntaxError):
        return None
    if width * height > IMAGE_PIXEL_LIMIT:
        raise DataError(_too_large(path, f"{width}x{height} ({width * height:,} pixels)"))
    return height, width


def _too_large(path: object, size: str) -> str:
    return (
        f"image {path} is {size}, over proca's limit of {IMAGE_PIXEL_LIMIT:,} pixels (e.g. 10000x10000; "
        "larger files may be decompression bombs); downscale it first"
    )


def image_to_rgb8(image: object) -> torch.Tensor:
    """An image path, PIL image, numpy array or tensor as 8-bit RGB, the way :func:`read_rgb` reads files.

    Arrays and tensors may be (H, W) grayscale or (H, W, 3|4) RGB(A), uint8 or uint16 (scaled to 8 bits);
    PIL images of any mode are converted (16-bit ``I;16`` scaled, EXIF orientation applied).

    Returns:
        uint8 tensor.

    Shape:
        (3, H, W).

    Raises:
        DataError: anything else, or an image over :data:`proca.config.IMAGE_PIXEL_LIMIT` pixels.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        _check_pixel_count(image.width, image.height, "the PIL image")
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            values = np.asarray(image).astype(np.int64)
            if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
                raise DataError("a 32-bit PIL image (mode 'I') with values outside 0..65535 cannot be read as a photo")
            array = values.astype(np.uint16)
        elif image.mode == "F":
            raise DataError("a float PIL image (mode 'F') is not a photo; give an 8- or 16-bit image")
        else:
            array = np.asarray(image.convert("RGB"))
        return _array_to_rgb8(array, "the PIL image")
    if isinstance(image, torch.Tensor):
        return _array_to_rgb8(image.detach().cpu().numpy(), "the tensor")
    if isinstance(image, np.ndarray):
        return _array_to_rgb8(image, "the array")
    raise DataError(
        f"cannot read an image from a {type(image).__name__}; give a path, a PIL image or an (H, W, 3) uint8 array"
    )


def _check_pixel_count(width: int, height: int, what: str) -> None:
    if width * height > IMAGE_PIXEL_LIMIT:
        raise DataError(_too_large(what, f"{width}x{height} ({width * height:,} pixels)"))


def _array_to_rgb8(array: np.ndarray, what: str) -> torch.Tensor:
    if array.dtype not in (np.uint8, np.uint16) or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))
    ):
        raise DataError(
            f"{what} must be (H, W) grayscale or (H, W, 3) RGB (or RGBA), uint8 or uint16; "
            f"got shape {tuple(array.shape)} dtype {array.dtype}"
        )
    if 0 in array.shape[:2]:
        raise DataError(f"{what} is empty (shape {tuple(array.shape)})")
    _check_pixel_count(int(array.shape[1]), int(array.shape[0]), what)
    rgb = np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else array[..., :3]
    tensor = torch.from_numpy(np.array(rgb.astype(np.int32) if rgb.dtype == np.uint16 else rgb))
    tensor = tensor.permute(2, 0, 1).contiguous()
    if tensor.dtype == torch.int32:
        return torch.div(tensor + 128, 257, rounding_mode="floor").clamp_(0, 255).to(torch.uint8)
    return tensor


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
