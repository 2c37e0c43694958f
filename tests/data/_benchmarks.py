"""Tiny on-disk ACDC, Dark Zurich, BDD100K and Mapillary Vistas folders in their real formats, for the tests.

Labels are written with the independent PNG encoder of :mod:`tests.data._pngwriter` (grayscale label ids for
ACDC/Dark Zurich, grayscale train ids for BDD100K, palette PNGs with the Vistas colours for Mapillary);
images are PNG (ACDC, Dark Zurich) or JPEG (BDD100K, Mapillary), like the releases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from proca.data.classes import VISTAS_LABELS
from tests.data._pngwriter import write_png

SIZE = (32, 64)

# Cityscapes label ids of the ACDC / Dark Zurich ground truth: road, car, sky, one ignored id (4, static) and
# 255 (the license-plate id -1 in 8 bits).
CITYSCAPES_IDS = np.array([7, 26, 23, 4, 255], dtype=np.uint8)
# BDD100K train ids: road, car, bicycle and ignore.
BDD_IDS = np.array([0, 13, 18, 255], dtype=np.uint8)
# Vistas v1.2 ids: road (13), curb (2, -> sidewalk), bicyclist (20, -> rider), car (55), lane marking (24, ->
# road), parking (10, ignored) and unlabeled (65).
VISTAS_IDS = np.array([13, 2, 20, 55, 24, 10, 65], dtype=np.uint8)
VISTAS_PALETTE = np.zeros((256, 3), dtype=np.uint8)
VISTAS_PALETTE[: len(VISTAS_LABELS)] = [color for _, color, _ in VISTAS_LABELS]


def _image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def _label(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    blocks = ids[rng.integers(0, len(ids), (SIZE[0] // 8, SIZE[1] // 8))]
    label = np.kron(blocks, np.ones((8, 8), dtype=np.uint8)).astype(np.uint8)
    label[0, : len(ids)] = ids  # every id appears at least once
    return label


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def write_acdc(
    root: Path, *, conditions: tuple[str, ...] = ("fog", "night", "rain", "snow"), per_split: int = 2
) -> Path:
    """``root/rgb_anon/<cond>/<split>/<seq>/<seq>_frame_<n>_rgb_anon.png`` and ``root/gt/...`` (train and val)."""
    rng = np.random.default_rng(1)
    for k, cond in enumerate(conditions):
        seq = f"GOPR04{75 + k}"
        for split in ("train", "val"):
            for i in range(per_split):
                stem = f"{seq}/{seq}_frame_{41 + i:06d}"
                write_png(root / "rgb_anon" / cond / split / f"{stem}_rgb_anon.png", _image(rng), mode="rgb")
                label = _label(rng, CITYSCAPES_IDS)
                write_png(root / "gt" / cond / split / f"{stem}_gt_labelIds.png", label, mode="gray")
                train_ids = np.full_like(label, 255)
                write_png(root / "gt" / cond / split / f"{stem}_gt_labelTrainIds.png", train_ids, mode="gray")
    return root


def write_dark_zurich(root: Path, *, train: int = 2, val: int = 2) -> Path:
    """Night train images without labels; val images with ``gt/val/night/<seq>/*_gt_labelIds.png``."""
    rng = np.random.default_rng(2)
    for i in range(train):
        stem = f"GOPR0351/GOPR0351_frame_{159 + i:06d}"
        write_png(root / "rgb_anon" / "train" / "night" / f"{stem}_rgb_anon.png", _image(rng), mode="rgb")
    write_png(root / "rgb_anon/train/day/GOPR0348/GOPR0348_frame_000001_rgb_anon.png", _image(rng), mode="rgb")
    for i in range(val):
        stem = f"GOPR0356/GOPR0356_{i:06d}"
        write_png(root / "rgb_anon" / "val" / "night" / f"{stem}_rgb_anon.png", _image(rng), mode="rgb")
        label = _label(rng, CITYSCAPES_IDS)
        write_png(root / "gt" / "val" / "night" / f"{stem}_gt_labelIds.png", label, mode="gray")
    return root


def write_bdd100k(root: Path, *, per_split: int = 2) -> Path:
    """``root/images/10k/<split>/<name>.jpg`` with ``root/labels/sem_seg/masks/<split>/<name>.png``."""
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for i in range(per_split):
            name = f"{split[0]}{i:07d}-{i * 7:08x}"
            _save_jpeg(root / "images" / "10k" / split / f"{name}.jpg", _image(rng))
            write_png(root / "labels/sem_seg/masks" / split / f"{name}.png", _label(rng, BDD_IDS), mode="gray")
    _save_jpeg(root / "images" / "10k" / "test" / "t0000000-00000000.jpg", _image(rng))
    return root


def write_mapillary(root: Path, *, per_split: int = 2, nested_v12: bool = False) -> Path:
    """``root/<training|validation>/images/<key>.jpg`` with palette labels ``<split>/labels/<key>.png``."""
    rng = np.random.default_rng(4)
    for split in ("training", "validation"):
        labels = root / split / ("v1.2/labels" if nested_v12 else "labels")
        for i in range(per_split):
            key = f"{split[:2]}{i:020d}"
            _save_jpeg(root / split / "images" / f"{key}.jpg", _image(rng))
            write_png(labels / f"{key}.png", _label(rng, VISTAS_IDS), mode="palette", palette=VISTAS_PALETTE)
    return root


def write_all(data_root: Path) -> Path:
    """Every benchmark under ``data_root`` in its folder (acdc/, dark_zurich/, bdd100k/, mapillary/)."""
    write_acdc(data_root / "acdc")
    write_dark_zurich(data_root / "dark_zurich")
    write_bdd100k(data_root / "bdd100k")
    write_mapillary(data_root / "mapillary")
    return data_root
