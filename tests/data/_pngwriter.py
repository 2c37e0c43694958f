"""An independent minimal PNG encoder (zlib + struct) and tiny on-disk datasets for the data tests.

The encoder shares no code with Pillow or torchvision, so a lossless round trip through proca's
readers proves they decode the real formats: 16-bit RGB (SYNTHIA labels), 8-bit palette (GTA5
labels), 8-bit grayscale (Cityscapes labelIds) and 8-bit RGB (images).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_COLOR_TYPES = {"gray": 0, "rgb": 2, "palette": 3}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(array: np.ndarray, *, mode: str, bit_depth: int = 8, palette: np.ndarray | None = None) -> bytes:
    """Encode (H, W) or (H, W, 3) unsigned integers as a PNG (filter 0 on every row)."""
    arr = np.asarray(array)
    height, width = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = arr.astype(dtype).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, _COLOR_TYPES[mode], 0, 0, 0)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    if mode == "palette":
        pal = np.zeros((256, 3), np.uint8) if palette is None else np.asarray(palette, np.uint8)
        out += _chunk(b"PLTE", pal.tobytes())
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def write_png(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array, **kwargs))  # type: ignore[arg-type]
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# A palette that is NOT the identity: a reader that used the colours instead of the indices would fail.
GARBLED_PALETTE = np.random.default_rng(123).integers(0, 256, (256, 3), dtype=np.uint8)


def make_gtav(root: Path, labels: list[np.ndarray]) -> Path:
    """ROOT/images/0000k.png + ROOT/labels/0000k.png (palette PNG of the given label ids)."""
    rng = np.random.default_rng(0)
    for k, lab in enumerate(labels, start=1):
        h, w = lab.shape
        write_png(root / "images" / f"{k:05d}.png", random_image(rng, h, w), mode="rgb")
        write_png(root / "labels" / f"{k:05d}.png", lab, mode="palette", palette=GARBLED_PALETTE)
    return root


def make_synthia(root: Path, labels: list[np.ndarray]) -> Path:
    """ROOT/RAND_CITYSCAPES/{RGB,GT/LABELS}/000000k.png; labels 16-bit RGB, class id in channel 0."""
    rng = np.random.default_rng(1)
    for k, lab in enumerate(labels):
        h, w = lab.shape
        write_png(root / "RAND_CITYSCAPES" / "RGB" / f"{k:07d}.png", random_image(rng, h, w), mode="rgb")
        instance = rng.integers(0, 65536, (h, w, 2), dtype=np.uint16)  # channels 1-2: instance ids, high bytes set
        full = np.concatenate([lab[..., None].astype(np.uint16), instance], axis=-1)
        write_png(root / "RAND_CITYSCAPES" / "GT" / "LABELS" / f"{k:07d}.png", full, mode="rgb", bit_depth=16)
    return root


def make_cityscapes(root: Path, split: str, labels: dict[str, np.ndarray]) -> Path:
    """ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png + gtFine labelIds, for names '<city>_<seq>_<frame>'."""
    rng = np.random.default_rng(2)
    for name, lab in labels.items():
        city = name.split("_")[0]
        h, w = lab.shape
        write_png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", random_image(rng, h, w), mode="rgb")
        write_png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", lab, mode="gray")
    return root
