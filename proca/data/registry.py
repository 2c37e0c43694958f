"""The built-in datasets by name: what ``--tgt``, ``proca eval --dataset`` and ``proca label-info`` accept.

One table, :data:`BUILTIN_DATASETS`, says for every name which reader opens it, the folder it lives in
under the datasets folder (``--data-root DIR`` -> ``DIR/<folder>/``; the dataset folder itself is
accepted too), its label format, which splits have labels, and which splits serve as the training target
(unlabelled images) and as the validation/evaluation set. Importing this module loads no torch: the
readers are imported when a dataset is opened.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proca.data.classes import RawLabelSpace
from proca.errors import DataError

if TYPE_CHECKING:
    from proca.data.classes import ClassSet
    from proca.data.datasets import SegmentationDataset

__all__ = [
    "BUILTIN_DATASETS",
    "TARGET_NAMES",
    "BuiltinDataset",
    "get_dataset",
    "open_pseudo_labelled",
    "open_target_images",
    "open_target_val",
]


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset: how to find, open and score it.

    Attributes:
        name: the name on the command line (``"acdc_night"``).
        title: shown in tables (``"ACDC night"``).
        folder: its folder under the datasets folder (``"acdc"``).
        markers: sub-folders one of which a dataset folder holds (tells ``DIR/<folder>`` from the folder itself).
        reader: ``"module:Class"`` of the reader.
        options: extra keyword arguments of the reader (the ACDC condition, for example).
        layout_ref: ``"module:CONSTANT"`` of the layout text the reader's errors quote.
        label_format: what the label files hold, in words.
        raw: label space of the label files (the lookup-table key).
        labelled_splits: splits whose labels are public.
        train_split: the split whose images are the unlabelled training target.
        val_split: the labelled split used for validation and, by default, ``proca eval``.
        source: where to download it.
    """

    name: str
    title: str
    folder: str
    markers: tuple[str, ...]
    reader: str
    layout_ref: str
    label_format: str
    raw: RawLabelSpace
    labelled_splits: tuple[str, ...]
    source: str
    options: tuple[tuple[str, Any], ...] = ()
    train_split: str = "train"
    val_split: str = "val"

    @property
    def layout(self) -> str:
        """The expected on-disk layout (``ROOT`` = the dataset folder)."""
        module, attr = self.layout_ref.split(":")
        return str(getattr(importlib.import_module(module), attr))

    def resolve_root(self, data_root: str | os.PathLike[str], *, flag: str = "--data-root") -> Path:
        """The dataset folder of ``data_root``: ``DATA_ROOT/<folder>``, or ``DATA_ROOT`` itself.

        Raises:
            DataError: neither holds one of the marker folders; the message names both accepted forms.
        """
        if self.name == "cityscapes":
            from proca.data.datasets import cityscapes_root

            return cityscapes_root(data_root, flag=flag)
        root = Path(data_root)
        nested = root / self.folder
        for base in (nested, root):
            if any((base / m).is_dir() for m in self.markers):
                return base
        marker = self.markers[0]
        forms = (
            f"give the datasets folder holding {self.folder}/ ({nested / marker}/) or the {self.title} folder "
            f"itself ({root / marker}/); expected layout: {self.layout}"
        )
        if not root.is_dir():
            raise DataError(f"{flag} {root}: no such folder; {forms}")
        raise DataError(f"{flag} {root}: neither {nested / marker} nor {root / marker} exists; {forms}")

    def has_labels(self, split: str) -> bool:
        return split in self.labelled_splits

    def open(
        self,
        data_root: str | os.PathLike[str],
        *,
        split: str,
        labels: bool,
        class_set: ClassSet,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        files: Sequence[str] | None = None,
        strict: bool = True,
        flag: str = "--data-root",
    ) -> SegmentationDataset:
        """Open ``split`` of the dataset under ``data_root`` (the datasets folder or the dataset folder)."""
        root = self.resolve_root(data_root, flag=flag)
        module, attr = self.reader.split(":")
        factory = getattr(importlib.import_module(module), attr)
        dataset: SegmentationDataset = factory(
            root,
            split=split,
            labels=labels,
            class_set=class_set,
            transform=transform,
            files=files,
            strict=strict,
            **dict(self.options),
        )
        return dataset


def _cityscapes(
    root: Path,
    *,
    split: str,
    labels: bool,
    class_set: ClassSet,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None,
    files: Sequence[str] | None,
    strict: bool,
) -> SegmentationDataset:
    """The Cityscapes reader with the common reader signature (``files`` are ``<city>/<image>`` paths)."""
    from proca.data.datasets import CityscapesDataset

    dataset = CityscapesDataset(
        root, split=split, class_set=class_set, transform=transform, labels=labels, strict=strict
    )
    if files is not None:
        wanted = [str(f) for f in files]
        index = {f: i for i, f in enumerate(dataset.files)}
        bad = [f for f in wanted if f not in index]
        if bad:
            raise DataError(
                f"{bad[0]!r} is not a Cityscapes {split} image; expected <city>/<city>_<seq>_<frame>_leftImg8bit.png"
            )
        keep = [index[f] for f in wanted]
        dataset.names = [dataset.names[i] for i in keep]
        dataset.images = [dataset.images[i] for i in keep]
        dataset.labels = [dataset.labels[i] for i in keep] if dataset.labels is not None else None
        dataset.files = wanted
    return dataset


_ACDC_SOURCE = "https://acdc.vision.ee.ethz.ch (rgb_anon_trainvaltest.zip, gt_trainval.zip)"
_ACDC_COMMON: dict[str, Any] = {
    "folder": "acdc",
    "markers": ("rgb_anon", "gt"),
    "reader": "proca.data.benchmarks:ACDCDataset",
    "layout_ref": "proca.data.benchmarks:ACDC_LAYOUT",
    "label_format": "Cityscapes label ids (*_gt_labelIds.png)",
    "raw": "cityscapes",
    "labelled_splits": ("train", "val"),
    "source": _ACDC_SOURCE,
}

_ENTRIES: tuple[BuiltinDataset, ...] = (
    BuiltinDataset(
        name="cityscapes",
        title="Cityscapes",
        folder="cityscapes",
        markers=("leftImg8bit",),
        reader="proca.data.registry:_cityscapes",
        layout_ref="proca.data.datasets:CITYSCAPES_LAYOUT",
        label_format="Cityscapes label ids (*_gtFine_labelIds.png)",
        raw="cityscapes",
        labelled_splits=("train", "val"),
        source="https://www.cityscapes-dataset.com (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
    ),
    BuiltinDataset(name="acdc", title="ACDC", **_ACDC_COMMON),
    *(
        BuiltinDataset(name=f"acdc_{c}", title=f"ACDC {c}", options=(("conditions", (c,)),), **_ACDC_COMMON)
        for c in ("fog", "night", "rain", "snow")
    ),
    BuiltinDataset(
        name="dark_zurich",
        title="Dark Zurich night",
        folder="dark_zurich",
        markers=("rgb_anon",),
        reader="proca.data.benchmarks:DarkZurichDataset",
        layout_ref="proca.data.benchmarks:DARK_ZURICH_LAYOUT",
        label_format="Cityscapes label ids (*_gt_labelIds.png)",
        raw="cityscapes",
        labelled_splits=("val",),
        source="https://www.trace.ethz.ch/publications/2019/GCMA_UIoU "
        "(Dark_Zurich_train_anon.zip, Dark_Zurich_val_anon.zip)",
        options=(("condition", "night"),),
    ),
    BuiltinDataset(
        name="bdd100k",
        title="BDD100K",
        folder="bdd100k",
        markers=("images", "labels"),
        reader="proca.data.benchmarks:BDD100KDataset",
        layout_ref="proca.data.benchmarks:BDD100K_LAYOUT",
        label_format="Cityscapes train ids 0..18, 255 ignore (labels/sem_seg/masks/*.png)",
        raw="cityscapes_trainid",
        labelled_splits=("train", "val"),
        source="https://bdd-data.berkeley.edu (10K Images, Segmentation: sem_seg masks)",
    ),
    BuiltinDataset(
        name="mapillary",
        title="Mapillary Vistas",
        folder="mapillary",
        markers=("training", "validation"),
        reader="proca.data.benchmarks:MapillaryVistasDataset",
        layout_ref="proca.data.benchmarks:MAPILLARY_LAYOUT",
        label_format="Mapillary Vistas v1.2 class ids 0..65 in palette PNGs, mapped to the Cityscapes classes",
        raw="vistas",
        labelled_splits=("train", "val"),
        source="https://www.mapillary.com/dataset/vistas (research edition, v1.2 or v2.0)",
    ),
)

BUILTIN_DATASETS: dict[str, BuiltinDataset] = {entry.name: entry for entry in _ENTRIES}
"""Every built-in target / evaluation dataset by name."""

TARGET_NAMES: tuple[str, ...] = tuple(BUILTIN_DATASETS)
"""The names ``--tgt`` accepts (the config's ``tgt`` key)."""


def get_dataset(name: str, *, flag: str = "--dataset") -> BuiltinDataset:
    """The built-in dataset called ``name``.

    Raises:
        DataError: unknown name; the message lists the valid ones.
    """
    try:
        return BUILTIN_DATASETS[name]
    except KeyError:
        raise DataError(f"{flag} {name!r} is not a built-in dataset; valid: {', '.join(BUILTIN_DATASETS)}") from None


def open_target_images(
    name: str,
    data_root: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> SegmentationDataset:
    """The unlabelled training target of ``--tgt name``: the images of its train split (a dataset card's or a
    folder's images for a ``--tgt`` that is not a built-in name, see :mod:`proca.data.targets`)."""
    if name not in BUILTIN_DATASETS:
        from proca.data.targets import resolve_target, target_train_dataset

        return target_train_dataset(
            resolve_target(name, data_root), data_root, class_set=class_set, transform=transform
        )
    entry = get_dataset(name, flag="--tgt")
    return entry.open(data_root, split=entry.train_split, labels=False, class_set=class_set, transform=transform)


def open_target_val(
    name: str,
    data_root: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> SegmentationDataset:
    """The labelled validation set of ``--tgt name``: its val split with labels (a labelled card's images and
    labels for a card).

    Raises:
        DataError: a target without labels (a folder of images, a card without ``labels``).
    """
    if name not in BUILTIN_DATASETS:
        from proca.data.targets import target_val_dataset

        dataset = target_val_dataset(name, None, data_root, class_set=class_set, transform=transform)
        if dataset is None:
            raise DataError(f"--tgt {name} has no labels to validate on; give --tgt-val DIR with labelled data")
        return dataset
    entry = get_dataset(name, flag="--tgt")
    return entry.open(data_root, split=entry.val_split, labels=True, class_set=class_set, transform=transform)


def open_pseudo_labelled(
    name: str,
    data_root: str | os.PathLike[str],
    label_dir: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> SegmentationDataset:
    """The target train images of dataset ``name`` (or of a card or folder ``--tgt``) with the pseudo labels
    ``label_dir/<sample name>.png``.

    Cityscapes also reads the release's flat pseudo-label names (:class:`proca.data.PseudoLabelDataset`).
    """
    if name == "cityscapes":
        entry = get_dataset(name, flag="--tgt")
        from proca.data.datasets import PseudoLabelDataset

        return PseudoLabelDataset(
            entry.resolve_root(data_root), label_dir, split=entry.train_split, class_set=class_set, transform=transform
        )
    from proca.data.benchmarks import pseudo_labelled

    images = open_target_images(name, data_root, class_set=class_set)
    return pseudo_labelled(images, label_dir, class_set=class_set, transform=transform)
