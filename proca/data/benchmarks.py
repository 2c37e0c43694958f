"""Readers for the target and evaluation benchmarks beyond Cityscapes: ACDC, Dark Zurich, BDD100K, Mapillary Vistas.

Every reader is a :class:`proca.data.datasets.SegmentationDataset` with the same sample dicts as the
Cityscapes reader; labels are decoded losslessly and mapped to the train ids of ``class_set`` with one
lookup table (:meth:`proca.data.classes.ClassSet.lookup_table`):

- ACDC and Dark Zurich store Cityscapes label ids (``*_gt_labelIds.png``),
- BDD100K stores the 19 Cityscapes train ids (255 ignore),
- Mapillary Vistas v1.2 stores the index of its 66 classes in palette PNGs, mapped to the Cityscapes
  classes by :data:`proca.data.classes.VISTAS_LABELS`.

``.files`` holds image paths relative to the dataset's image folder (the identifiers label info and the
``files`` argument use); ``sample["name"]`` is a relative path without suffix (predictions and pseudo
labels are written as ``<name>.png``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from proca.data._decode import LabelDecoder
from proca.data.classes import CITYSCAPES_19, ClassSet, RawLabelSpace
from proca.data.datasets import SegmentationDataset, Transform, _check_present, _require_dir
from proca.errors import DataError

__all__ = [
    "ACDC_CONDITIONS",
    "ACDC_LAYOUT",
    "BDD100K_LAYOUT",
    "DARK_ZURICH_CONDITIONS",
    "DARK_ZURICH_LAYOUT",
    "MAPILLARY_LAYOUT",
    "PSEUDO_FOLDER_LAYOUT",
    "ACDCDataset",
    "BDD100KDataset",
    "DarkZurichDataset",
    "MapillaryVistasDataset",
    "pseudo_labelled",
]

ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
DARK_ZURICH_CONDITIONS = ("night", "twilight", "day")

ACDC_LAYOUT = (
    "ROOT/rgb_anon/<fog|night|rain|snow>/<train|val|test>/<sequence>/<sequence>_frame_<6 digits>_rgb_anon.png with "
    "ROOT/gt/<condition>/<train|val>/<sequence>/<sequence>_frame_<6 digits>_gt_labelIds.png"
)
DARK_ZURICH_LAYOUT = (
    "ROOT/rgb_anon/<train|val|test>/<night|twilight|day>/<sequence>/<name>_rgb_anon.png with "
    "ROOT/gt/val/night/<sequence>/<name>_gt_labelIds.png (labels for val only)"
)
BDD100K_LAYOUT = (
    "ROOT/images/10k/<train|val|test>/<name>.jpg with ROOT/labels/sem_seg/masks/<train|val>/<name>.png "
    "(train ids 0..18, 255 ignore)"
)
MAPILLARY_LAYOUT = (
    "ROOT/<training|validation|testing>/images/<key>.jpg with ROOT/<training|validation>/labels/<key>.png "
    "(v1.2 palette PNGs of the 66 class ids; a v2.0 download's ROOT/<split>/v1.2/labels/ is read too)"
)
PSEUDO_FOLDER_LAYOUT = "LABEL_DIR/<sample name>.png (single-channel or palette PNGs of train ids, 255 ignore)"

_JPEG = (".jpg", ".jpeg")


def _walk(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted POSIX paths relative to ``folder`` of the files (recursively) whose lower-case name ends in a suffix."""
    out: list[str] = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(parent).relative_to(folder)
        out.extend((rel / n).as_posix() for n in names if n.lower().endswith(suffixes) and not n.startswith("."))
    return sorted(out)


def _choose(all_files: list[str], files: Sequence[str] | None, what: str, image_root: Path) -> list[str]:
    """All files of the split, or the given subset in its order (each must be one of them)."""
    if files is None:
        return all_files
    wanted = [str(f) for f in files]
    if not wanted:
        raise DataError(f"the file selection for {what} is empty; give at least one file name")
    known = set(all_files)
    bad = [f for f in wanted if f not in known]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"{bad[0]!r}{more} is not among the {what} images; file names are paths relative to {image_root}, "
            f"such as {all_files[0]!r}"
        )
    return wanted


def _decoder(class_set: ClassSet, raw: RawLabelSpace, strict: bool, layout: str) -> LabelDecoder:
    return LabelDecoder(
        class_set.lookup_table(raw), raw, num_classes=class_set.num_classes, strict=strict, layout=layout
    )


def _check_split(split: str, valid: Sequence[str], labelled: Sequence[str], labels: bool, what: str) -> None:
    if split not in valid:
        raise DataError(f"{what} has no split {split!r}; valid: {', '.join(valid)}")
    if labels and split not in labelled:
        raise DataError(
            f"the {what} {split!r} split has no public labels; labelled splits: {', '.join(labelled)} "
            "(unlabelled images serve as a training target)"
        )


def _conditions(given: str | Sequence[str], valid: Sequence[str], what: str) -> tuple[str, ...]:
    conds = (given,) if isinstance(given, str) else tuple(given)
    bad = [c for c in conds if c not in valid]
    if bad or not conds:
        raise DataError(f"{what} has no condition {bad[0] if bad else '(none given)'!r}; valid: {', '.join(valid)}")
    return conds


class ACDCDataset(SegmentationDataset):
    """ACDC (Adverse Conditions Dataset with Correspondences): fog, night, rain and snow driving scenes.

    Images ``rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png`` with Cityscapes label ids
    ``gt/<condition>/<split>/<sequence>/*_gt_labelIds.png`` (train and val; test labels are not public).
    ``sample["name"]`` is ``"<condition>/<sequence>/<sequence>_frame_<n>"``; ``.files`` holds paths
    relative to ``rgb_anon/`` (``"fog/train/GOPR0475/GOPR0475_frame_000041_rgb_anon.png"``).

    Args:
        root: dataset root (``datasets/acdc``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        conditions: one condition or several, in this order (default all four).
        class_set: classes of the train ids.
        labels: read the labels (False: images only, e.g. the unlabelled target).
        transform: callable on the sample dict.
        files: identifiers (``.files`` entries) to use, in this order.
        strict: label ids outside 0..33 (and 255) raise :class:`DataError`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "train",
        conditions: str | Sequence[str] = ACDC_CONDITIONS,
        class_set: ClassSet = CITYSCAPES_19,
        labels: bool = True,
        transform: Transform | None = None,
        files: Sequence[str] | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        conds = _conditions(conditions, ACDC_CONDITIONS, "ACDC")
        _check_split(split, ("train", "val", "test"), ("train", "val"), labels, "ACDC")
        image_root = root / "rgb_anon"
        _require_dir(image_root, "ACDC image", ACDC_LAYOUT)
        listing: list[str] = []
        for cond in conds:
            folder = image_root / cond / split
            _require_dir(folder, f"ACDC {cond} {split!r} image", ACDC_LAYOUT)
            found = _walk(folder, ("_rgb_anon.png",))
            if not found:
                raise DataError(
                    f"ACDC folder {folder} holds no <sequence>/*_rgb_anon.png images; expected layout: {ACDC_LAYOUT}"
                )
            listing.extend(f"{cond}/{split}/{rel}" for rel in found)
        rels = _choose(listing, files, f"ACDC {'+'.join(conds)} {split}", image_root)
        images = [image_root / r for r in rels]
        stems = [r[: -len("_rgb_anon.png")] for r in rels]
        names = [_drop_part(s, 1) for s in stems]  # "<cond>/<split>/<seq>/<frame>" -> "<cond>/<seq>/<frame>"
        label_paths = None
        decoder = None
        if labels:
            for cond in conds:
                _require_dir(root / "gt" / cond / split, f"ACDC {cond} {split!r} label", ACDC_LAYOUT)
            label_paths = [root / "gt" / f"{s}_gt_labelIds.png" for s in stems]
            _check_present(label_paths, "ACDC label", ACDC_LAYOUT)
            decoder = _decoder(class_set, "cityscapes", strict, ACDC_LAYOUT)
        super().__init__(
            names, images, label_paths, decoder=decoder, class_set=class_set, transform=transform, files=rels,
            layout=ACDC_LAYOUT,
        )  # fmt: skip
        self.root = root
        self.split = split
        self.conditions = conds


class DarkZurichDataset(SegmentationDataset):
    """Dark Zurich: night-time (and twilight/day) driving in Zurich; 50 labelled val images at night.

    Images ``rgb_anon/<split>/<condition>/<sequence>/*_rgb_anon.png``; Cityscapes label ids
    ``gt/val/night/<sequence>/*_gt_labelIds.png`` exist for val only (test labels are not public, train
    has none). ``sample["name"]`` is ``"<condition>/<sequence>/<frame>"``; ``.files`` holds paths relative
    to ``rgb_anon/``. The ``*_gt_invIds.png`` invalid masks are not applied: scores are the standard mIoU.

    Args:
        root: dataset root (``datasets/dark_zurich``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        condition: ``"night"`` (the benchmark), ``"twilight"`` or ``"day"`` (train only).
        class_set, labels, transform, files, strict: as for :class:`ACDCDataset`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "val",
        condition: str = "night",
        class_set: ClassSet = CITYSCAPES_19,
        labels: bool = True,
        transform: Transform | None = None,
        files: Sequence[str] | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        (cond,) = _conditions(condition, DARK_ZURICH_CONDITIONS, "Dark Zurich")
        _check_split(split, ("train", "val", "test"), ("val",), labels, "Dark Zurich")
        image_root = root / "rgb_anon"
        folder = image_root / split / cond
        _require_dir(image_root, "Dark Zurich image", DARK_ZURICH_LAYOUT)
        _require_dir(folder, f"Dark Zurich {split!r} {cond} image", DARK_ZURICH_LAYOUT)
        found = _walk(folder, ("_rgb_anon.png",))
        if not found:
            raise DataError(
                f"Dark Zurich folder {folder} holds no <sequence>/*_rgb_anon.png images; "
                f"expected layout: {DARK_ZURICH_LAYOUT}"
            )
        listing = [f"{split}/{cond}/{rel}" for rel in found]
        rels = _choose(listing, files, f"Dark Zurich {split} {cond}", image_root)
        images = [image_root / r for r in rels]
        stems = [r[: -len("_rgb_anon.png")] for r in rels]
        names = [_drop_part(s, 0) for s in stems]  # "<split>/<cond>/<seq>/<frame>" -> "<cond>/<seq>/<frame>"
        label_paths = None
        decoder = None
        if labels:
            _require_dir(root / "gt" / split / cond, f"Dark Zurich {split!r} label", DARK_ZURICH_LAYOUT)
            label_paths = [root / "gt" / f"{s}_gt_labelIds.png" for s in stems]
            _check_present(label_paths, "Dark Zurich label", DARK_ZURICH_LAYOUT)
            decoder = _decoder(class_set, "cityscapes", strict, DARK_ZURICH_LAYOUT)
        super().__init__(
            names, images, label_paths, decoder=decoder, class_set=class_set, transform=transform, files=rels,
            layout=DARK_ZURICH_LAYOUT,
        )  # fmt: skip
        self.root = root
        self.split = split
        self.condition = cond


class BDD100KDataset(SegmentationDataset):
    """BDD100K semantic segmentation (the 10K images): JPEG images with masks of Cityscapes train ids.

    Images ``images/10k/<split>/<name>.jpg``, masks ``labels/sem_seg/masks/<split>/<name>.png`` (train
    ids 0..18 of the Cityscapes classes, 255 ignore; train and val). With labels the masks decide the
    files (every mask needs its image); without, the images do. ``.files`` and ``sample["name"]`` are
    the image file name and its stem.

    Args:
        root: dataset root (``datasets/bdd100k``, holding ``images/`` and ``labels/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        class_set, labels, transform, files, strict: as for :class:`ACDCDataset` (strict: ids 19..254 raise).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "train",
        class_set: ClassSet = CITYSCAPES_19,
        labels: bool = True,
        transform: Transform | None = None,
        files: Sequence[str] | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        _check_split(split, ("train", "val", "test"), ("train", "val"), labels, "BDD100K")
        image_dir = root / "images" / "10k" / split
        label_dir = root / "labels" / "sem_seg" / "masks" / split
        _require_dir(image_dir, f"BDD100K {split!r} image", BDD100K_LAYOUT)
        if labels:
            _require_dir(label_dir, f"BDD100K {split!r} label", BDD100K_LAYOUT)
            masks = [n for n in os.listdir(label_dir) if n.lower().endswith(".png") and not n.startswith(".")]
            by_stem = {Path(n).stem: n for n in os.listdir(image_dir) if n.lower().endswith(_JPEG)}
            listing = sorted(by_stem.get(Path(m).stem, f"{Path(m).stem}.jpg") for m in masks)
        else:
            listing = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(_JPEG) and not n.startswith("."))
        if not listing:
            where = label_dir if labels else image_dir
            raise DataError(
                f"BDD100K folder {where} holds no {'masks' if labels else 'images'}; expected layout: {BDD100K_LAYOUT}"
            )
        rels = _choose(listing, files, f"BDD100K {split}", image_dir)
        images = [image_dir / r for r in rels]
        _check_present(images, "BDD100K image", BDD100K_LAYOUT)
        names = [Path(r).stem for r in rels]
        label_paths = None
        decoder = None
        if labels:
            label_paths = [label_dir / f"{n}.png" for n in names]
            _check_present(label_paths, "BDD100K label", BDD100K_LAYOUT)
            decoder = _decoder(class_set, "cityscapes_trainid", strict, BDD100K_LAYOUT)
        super().__init__(
            names, images, label_paths, decoder=decoder, class_set=class_set, transform=transform, files=rels,
            layout=BDD100K_LAYOUT,
        )  # fmt: skip
        self.root = root
        self.split = split


_VISTAS_SPLITS = {"train": "training", "val": "validation", "test": "testing"}


class MapillaryVistasDataset(SegmentationDataset):
    """Mapillary Vistas v1.2: street-level JPEGs from around the world, 66 classes mapped to the Cityscapes ones.

    Images ``<training|validation|testing>/images/<key>.jpg``; labels ``<split>/labels/<key>.png`` are
    palette PNGs whose index is the v1.2 class id (the colours are not read), mapped to train ids by
    :data:`proca.data.classes.VISTAS_LABELS` (classes without a Cityscapes counterpart and ``void`` ->
    255). A v2.0 download, which keeps the v1.2 labels in ``<split>/v1.2/labels/``, is read too.

    Args:
        root: dataset root (``datasets/mapillary``).
        split: ``"train"``/``"training"``, ``"val"``/``"validation"`` or ``"test"``/``"testing"``.
        class_set, labels, transform, files, strict: as for :class:`ACDCDataset` (strict: ids above 65
            raise, for example v2.0 labels of 124 classes).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "train",
        class_set: ClassSet = CITYSCAPES_19,
        labels: bool = True,
        transform: Transform | None = None,
        files: Sequence[str] | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        folder = _VISTAS_SPLITS.get(split, split)
        short = {v: k for k, v in _VISTAS_SPLITS.items()}.get(folder, folder)
        _check_split(short, ("train", "val", "test"), ("train", "val"), labels, "Mapillary Vistas")
        image_dir = root / folder / "images"
        _require_dir(image_dir, f"Mapillary Vistas {folder} image", MAPILLARY_LAYOUT)
        listing = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(_JPEG) and not n.startswith("."))
        if not listing:
            raise DataError(
                f"Mapillary Vistas folder {image_dir} holds no .jpg images; expected layout: {MAPILLARY_LAYOUT}"
            )
        rels = _choose(listing, files, f"Mapillary Vistas {folder}", image_dir)
        images = [image_dir / r for r in rels]
        names = [Path(r).stem for r in rels]
        label_paths = None
        decoder = None
        if labels:
            label_dir = root / folder / "labels"
            if not label_dir.is_dir() and (root / folder / "v1.2" / "labels").is_dir():
                label_dir = root / folder / "v1.2" / "labels"
            _require_dir(label_dir, f"Mapillary Vistas {folder} label", MAPILLARY_LAYOUT)
            label_paths = [label_dir / f"{n}.png" for n in names]
            _check_present(label_paths, "Mapillary Vistas label", MAPILLARY_LAYOUT)
            decoder = _decoder(class_set, "vistas", strict, MAPILLARY_LAYOUT)
        super().__init__(
            names, images, label_paths, decoder=decoder, class_set=class_set, transform=transform, files=rels,
            layout=MAPILLARY_LAYOUT,
        )  # fmt: skip
        self.root = root
        self.split = short


def _drop_part(path: str, index: int) -> str:
    parts = path.split("/")
    del parts[index]
    return "/".join(parts)


def pseudo_labelled(
    images: SegmentationDataset,
    label_dir: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    transform: Transform | None = None,
) -> SegmentationDataset:
    """The images of ``images`` paired with pseudo labels ``label_dir/<sample name>.png`` (what proca writes).

    Raises:
        DataError: the folder or a label file is missing.
    """
    folder = Path(label_dir)
    _require_dir(folder, "pseudo-label", PSEUDO_FOLDER_LAYOUT)
    labels = [folder / f"{name}.png" for name in images.names]
    _check_present(labels, "pseudo-label", PSEUDO_FOLDER_LAYOUT)
    decoder = LabelDecoder(
        np.arange(256, dtype=np.uint8), "trainid", num_classes=class_set.num_classes, layout=PSEUDO_FOLDER_LAYOUT
    )
    return SegmentationDataset(
        images.names, images.images, labels, decoder=decoder, class_set=class_set, transform=transform,
        files=images.files, layout=PSEUDO_FOLDER_LAYOUT,
    )  # fmt: skip
