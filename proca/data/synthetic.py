"""Synthetic driving scenes written in the real GTA5, SYNTHIA and Cityscapes on-disk formats.

``write_synthetic_datasets(out)`` writes three small datasets that the real readers, the label-info
scanner, the trainer and the demo use exactly like the real ones:

- ``out/gtav/{images,labels}/NNNNN.png``: RGB images; labels are palette ('P') PNGs whose indices
  are Cityscapes label ids, with the Cityscapes colour palette (as in GTA5).
- ``out/synthia/RAND_CITYSCAPES/{RGB,GT/LABELS}/NNNNNNN.png``: RGB images; labels are 16-bit
  3-channel PNGs, SYNTHIA class id in channel 0 and an instance id in channel 1 (as in SYNTHIA).
- ``out/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
  and ``..._gtFine_labelIds.png`` (8-bit label ids).
- list files in the release's formats (``out/{gtav,synthia,cityscapes}_*_list.txt``) and
  ``out/synthetic.json`` (seed, size, shift, counts).

The sources are flat-shaded "game" renders; the target (cityscapes) is the same street grammar seen
through a camera: other colours, textures, shadows, haze, exposure, blur and noise, and other layout
priors. ``shift`` scales that difference (see docs/synthetic.md for its measured effect).
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from proca.data._scenes import DOMAINS, SHIFT_UNIT, render_scene, render_scene_instances
from proca.data.classes import CITYSCAPES_LABELS
from proca.errors import DataError
from proca.io import atomic_write_bytes, atomic_write_json, atomic_write_text, save_image_atomic

__all__ = [
    "CITYSCAPES_TRAIN_CITIES",
    "CITYSCAPES_VAL_CITIES",
    "SHIFT_UNIT",
    "SyntheticSummary",
    "encode_png16",
    "render_scene",
    "render_scene_instances",
    "scene_rng",
    "write_synthetic_datasets",
]

CITYSCAPES_TRAIN_CITIES: tuple[str, ...] = ("aachen", "bochum", "bremen")
CITYSCAPES_VAL_CITIES: tuple[str, ...] = ("frankfurt", "lindau", "munster")
_FRAME = 19  # Cityscapes' annotated frame of each snippet
_DOMAIN_CODE = {"gtav": 1, "synthia": 2, "cityscapes": 3}
_SPLIT_CODE = {"train": 0, "val": 1}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticSummary:
    """What :func:`write_synthetic_datasets` wrote.

    Attributes:
        root: the output folder.
        gtav, synthia, cityscapes: the three dataset roots (pass them to the readers).
        counts: number of images per ``"<dataset>/<split>"``.
        seconds: wall time of the whole write.
        seed, size, shift, class_shift: the generation settings.
    """

    root: Path
    gtav: Path
    synthia: Path
    cityscapes: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    seed: int = 0
    size: tuple[int, int] = (256, 512)
    shift: float = 1.0
    class_shift: float = 0.0


def scene_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image, so generation parallelises."""
    return np.random.default_rng([int(seed), _DOMAIN_CODE[domain], _SPLIT_CODE[split], int(index)])


def encode_png16(array: np.ndarray, *, level: int = 6) -> bytes:
    """Encode an (H, W, 3) or (H, W) uint16 array as a 16-bit PNG (RGB or grayscale).

    Pillow cannot write 16-bit RGB, so this writes the chunks directly (filter 0 on every row).

    Shape:
        array (H, W, 3) or (H, W).
    """
    a = np.asarray(array)
    if a.dtype != np.uint16 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint16 array, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    color_type = 2 if a.ndim == 3 else 0
    rows = a.astype(">u2").reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b"")


def _cityscapes_palette() -> list[int]:
    pal = np.zeros((256, 3), dtype=np.uint8)
    for row in CITYSCAPES_LABELS:
        pal[row.label_id] = row.color
    return pal.reshape(-1).tolist()


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder (new or empty), or remove the file")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"output folder {out} is not empty; choose a new folder or pass force=True (--force)")


def write_synthetic_datasets(
    out: str | Path,
    *,
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 40,
    size: tuple[int, int] = (256, 512),
    force: bool = False,
    progress: bool = True,
    shift: float = 1.0,
    class_shift: float = 0.0,
) -> SyntheticSummary:
    """Write synthetic GTA5-, SYNTHIA- and Cityscapes-format datasets under ``out``.

    Args:
        out: output folder; must be new or empty unless ``force`` (files are then overwritten).
        seed: the same seed (and size and shift) writes byte-identical files.
        num_train: images in gtav, in synthia and in cityscapes/train.
        num_val: images in cityscapes/val.
        size: (H, W) of every image.
        force: write into a non-empty folder.
        progress: show a rich progress bar.
        shift: strength of the source -> target shift (0: the target looks like the GTA source;
            1.0, the default: the measured shift of docs/synthetic.md).
        class_shift: strength (0 to 1) of the target's class-conditional shift on top of ``shift``: per-class
            colour and texture swaps and another class-frequency mix (docs/synthetic.md); 0, the default,
            writes the scenes of ``shift`` alone, byte for byte as before.

    Returns:
        A :class:`SyntheticSummary` with the dataset roots, counts and seconds.

    Raises:
        DataError: the output folder is not empty (without ``force``) or is a file, or a count,
            size or shift is invalid.
    """
    out = Path(out)
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise DataError(f"size {h}x{w} is too small; use at least 32x32 (e.g. 96x192 or 256x512)")
    if num_train < 1 or num_val < 1:
        raise DataError(f"num_train={num_train} and num_val={num_val} must both be at least 1")
    if not 0.0 <= shift <= 3.0:
        raise DataError(f"shift={shift} is outside [0, 3]; 0 = no shift, 1 = the documented default")
    if not 0.0 <= class_shift <= 1.0:
        raise DataError(f"class_shift={class_shift} is outside [0, 1]; 0 = off (the default), 1 = full")
    _check_out(out, force)
    start = time.perf_counter()
    gtav, synthia, cityscapes = out / "gtav", out / "synthia" / "RAND_CITYSCAPES", out / "cityscapes"
    palette = _cityscapes_palette()

    from PIL import Image

    jobs: list[tuple[str, str, int]] = [("gtav", "train", i) for i in range(num_train)]
    jobs += [("synthia", "train", i) for i in range(num_train)]
    jobs += [("cityscapes", "train", i) for i in range(num_train)]
    jobs += [("cityscapes", "val", i) for i in range(num_val)]
    lists: dict[str, list[str]] = {"gtav_train": [], "synthia_train": [], "cityscapes_train": [], "cityscapes_val": []}

    def write_one(domain: str, split: str, i: int) -> None:
        rgb, labels, inst = render_scene_instances(
            scene_rng(seed, domain, split, i), (h, w), domain, shift=shift, index=i, class_shift=class_shift
        )
        if domain == "gtav":
            name = f"{i + 1:05d}.png"  # GTA5 numbers its frames from 00001
            save_image_atomic(Image.fromarray(rgb), gtav / "images" / name)
            lab = Image.frombuffer(
                "P", (w, h), np.ascontiguousarray(labels, dtype=np.uint8).tobytes(), "raw", "P", 0, 1
            )
            lab.putpalette(palette)
            save_image_atomic(lab, gtav / "labels" / name)
            lists["gtav_train"].append(name)
        elif domain == "synthia":
            name = f"{i:07d}.png"
            save_image_atomic(Image.fromarray(rgb), synthia / "RGB" / name)
            gt = np.stack([labels, inst, np.zeros_like(labels)], axis=-1).astype(np.uint16)
            atomic_write_bytes(synthia / "GT" / "LABELS" / name, encode_png16(gt))
            lists["synthia_train"].append(name)
        else:
            cities = CITYSCAPES_TRAIN_CITIES if split == "train" else CITYSCAPES_VAL_CITIES
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{_FRAME:06d}"
            save_image_atomic(
                Image.fromarray(rgb), cityscapes / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            save_image_atomic(
                Image.fromarray(labels), cityscapes / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            )
            lists[f"cityscapes_{split}"].append(f"{city}/{stem}_leftImg8bit.png")

    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (
            TextColumn("[bold]synth[/] {task.fields[what]:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns) as bar:
            task = bar.add_task("synth", total=len(jobs), what="")
            for domain, split, i in jobs:
                bar.update(task, what=f"{domain}/{split}")
                write_one(domain, split, i)
                bar.advance(task)
    else:
        for job in jobs:
            write_one(*job)

    for key, names in lists.items():
        atomic_write_text(out / f"{key}_list.txt", "".join(f"{n}\n" for n in names))
    counts = {
        "gtav/train": num_train,
        "synthia/train": num_train,
        "cityscapes/train": num_train,
        "cityscapes/val": num_val,
    }
    seconds = time.perf_counter() - start
    atomic_write_json(
        out / "synthetic.json",
        {
            "format_version": FORMAT_VERSION,
            "generator": "proca.data.synthetic",
            "seed": seed,
            "size": [h, w],
            "shift": shift,
            "class_shift": class_shift,
            "counts": counts,
            "domains": list(DOMAINS),
        },
    )
    if progress:
        from rich.console import Console

        Console(highlight=False).print(
            f"wrote {len(jobs)} synthetic images ({h}x{w}, seed {seed}, shift {shift}"
            + (f", class shift {class_shift}" if class_shift else "")
            + f") to {out} in {seconds:.1f} s: "
            f"gtav {num_train}, synthia {num_train}, cityscapes train {num_train} / val {num_val}"
        )
    return SyntheticSummary(
        root=out,
        gtav=gtav,
        synthia=out / "synthia",
        cityscapes=cityscapes,
        counts=counts,
        seconds=seconds,
        seed=seed,
        size=(h, w),
        shift=shift,
        class_shift=class_shift,
    )
