"""Class tables: the one source of truth for names, label ids, train ids and colours.

Each label set is a table of rows. Every mapping (raw label id -> train id lookup tables,
train id -> official label id for submission, palettes, the 13-class SYNTHIA subset) is derived
from these tables; nothing else in proca lists classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

__all__ = [
    "CITYSCAPES_19",
    "CITYSCAPES_LABELS",
    "CLASS_SETS",
    "IGNORE_INDEX",
    "SYNTHIA_16",
    "SYNTHIA_LABELS",
    "ClassSet",
    "LabelRow",
    "RawLabelSpace",
    "get_class_set",
]

IGNORE_INDEX = 255

RawLabelSpace = Literal["cityscapes", "gtav", "synthia"]


@dataclass(frozen=True)
class LabelRow:
    """One raw label of a dataset: its name, id in the files, 19-class train id and colour."""

    name: str
    label_id: int
    train_id: int
    color: tuple[int, int, int]


# The official Cityscapes table (cityscapesscripts/helpers/labels.py): name, id, trainId, colour.
# GTA5 labels use the same ids.
CITYSCAPES_LABELS: tuple[LabelRow, ...] = (
    LabelRow("unlabeled", 0, 255, (0, 0, 0)),
    LabelRow("ego vehicle", 1, 255, (0, 0, 0)),
    LabelRow("rectification border", 2, 255, (0, 0, 0)),
    LabelRow("out of roi", 3, 255, (0, 0, 0)),
    LabelRow("static", 4, 255, (0, 0, 0)),
    LabelRow("dynamic", 5, 255, (111, 74, 0)),
    LabelRow("ground", 6, 255, (81, 0, 81)),
    LabelRow("road", 7, 0, (128, 64, 128)),
    LabelRow("sidewalk", 8, 1, (244, 35, 232)),
    LabelRow("parking", 9, 255, (250, 170, 160)),
    LabelRow("rail track", 10, 255, (230, 150, 140)),
    LabelRow("building", 11, 2, (70, 70, 70)),
    LabelRow("wall", 12, 3, (102, 102, 156)),
    LabelRow("fence", 13, 4, (190, 153, 153)),
    LabelRow("guard rail", 14, 255, (180, 165, 180)),
    LabelRow("bridge", 15, 255, (150, 100, 100)),
    LabelRow("tunnel", 16, 255, (150, 120, 90)),
    LabelRow("pole", 17, 5, (153, 153, 153)),
    LabelRow("polegroup", 18, 255, (153, 153, 153)),
    LabelRow("traffic light", 19, 6, (250, 170, 30)),
    LabelRow("traffic sign", 20, 7, (220, 220, 0)),
    LabelRow("vegetation", 21, 8, (107, 142, 35)),
    LabelRow("terrain", 22, 9, (152, 251, 152)),
    LabelRow("sky", 23, 10, (70, 130, 180)),
    LabelRow("person", 24, 11, (220, 20, 60)),
    LabelRow("rider", 25, 12, (255, 0, 0)),
    LabelRow("car", 26, 13, (0, 0, 142)),
    LabelRow("truck", 27, 14, (0, 0, 70)),
    LabelRow("bus", 28, 15, (0, 60, 100)),
    LabelRow("caravan", 29, 255, (0, 0, 90)),
    LabelRow("trailer", 30, 255, (0, 0, 110)),
    LabelRow("train", 31, 16, (0, 80, 100)),
    LabelRow("motorcycle", 32, 17, (0, 0, 230)),
    LabelRow("bicycle", 33, 18, (119, 11, 32)),
)

# SYNTHIA RAND-CITYSCAPES raw ids (first channel of the 16-bit label PNGs) with the name of the
# Cityscapes class each one is trained as (None: ignored in the 16-class setting).
SYNTHIA_LABELS: tuple[tuple[str, int, str | None], ...] = (
    ("void", 0, None),
    ("sky", 1, "sky"),
    ("building", 2, "building"),
    ("road", 3, "road"),
    ("sidewalk", 4, "sidewalk"),
    ("fence", 5, "fence"),
    ("vegetation", 6, "vegetation"),
    ("pole", 7, "pole"),
    ("car", 8, "car"),
    ("traffic sign", 9, "traffic sign"),
    ("pedestrian", 10, "person"),
    ("bicycle", 11, "bicycle"),
    ("motorcycle", 12, "motorcycle"),
    ("parking-slot", 13, None),
    ("road-work", 14, None),
    ("traffic light", 15, "traffic light"),
    ("terrain", 16, None),
    ("rider", 17, "rider"),
    ("truck", 18, None),
    ("bus", 19, "bus"),
    ("train", 20, None),
    ("wall", 21, "wall"),
    ("lanemarking", 22, None),
)

_CITYSCAPES_BY_NAME = {row.name: row for row in CITYSCAPES_LABELS}


@dataclass(frozen=True)
class ClassSet:
    """The classes a model predicts, in train-id order.

    Attributes:
        name: identifier stored in checkpoints (``"cityscapes19"`` or ``"synthia16"``).
        classes: official Cityscapes class names, index = train id.
        subsets: named subsets of train ids used for extra means (``{"13": (...)}`` for SYNTHIA).
    """

    name: str
    classes: tuple[str, ...]
    subsets: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def colors(self) -> np.ndarray:
        """(C, 3) uint8 official Cityscapes colours, index = train id."""
        return np.array([_CITYSCAPES_BY_NAME[n].color for n in self.classes], dtype=np.uint8)

    @cached_property
    def label_ids(self) -> np.ndarray:
        """(C,) official Cityscapes label id of each train id (for benchmark-server submissions)."""
        return np.array([_CITYSCAPES_BY_NAME[n].label_id for n in self.classes], dtype=np.uint8)

    def palette(self) -> list[int]:
        """A 768-entry PIL palette: train id -> colour, ignore (255) -> black."""
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[: self.num_classes] = self.colors
        return pal.reshape(-1).tolist()

    def colorize(self, train_ids: np.ndarray) -> np.ndarray:
        """Map an (H, W) array of train ids to an (H, W, 3) uint8 image; ignore is black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = self.colors
        return table[np.asarray(train_ids, dtype=np.uint8)]

    def train_to_label_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Map train ids to official Cityscapes label ids; ignore (255) becomes 0 (unlabeled)."""
        table = np.zeros(256, dtype=np.uint8)
        table[: self.num_classes] = self.label_ids
        return table[np.asarray(train_ids, dtype=np.uint8)]

    def lookup_table(self, raw: RawLabelSpace) -> np.ndarray:
        """Lookup table from raw label ids of a dataset to this set's train ids.

        Args:
            raw: ``"cityscapes"`` or ``"gtav"`` (Cityscapes label ids, 256 entries) or
                ``"synthia"`` (SYNTHIA ids, 65536 entries so any 16-bit value indexes it).

        Returns:
            uint8 array: ``lut[raw_id]`` is the train id, 255 for ignored ids.
        """
        index = {name: i for i, name in enumerate(self.classes)}
        if raw in ("cityscapes", "gtav"):
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            for row in CITYSCAPES_LABELS:
                if row.train_id != IGNORE_INDEX and row.name in index:
                    lut[row.label_id] = index[row.name]
            return lut
        if raw == "synthia":
            lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
            for _, raw_id, target in SYNTHIA_LABELS:
                if target is not None and target in index:
                    lut[raw_id] = index[target]
            return lut
        raise ValueError(f"unknown raw label space {raw!r}; valid: cityscapes, gtav, synthia")

    def subset(self, name: str) -> tuple[int, ...]:
        """Train ids of a named subset (for example ``"13"`` of SYNTHIA16)."""
        return dict(self.subsets)[name]


CITYSCAPES_19 = ClassSet(
    name="cityscapes19",
    classes=tuple(row.name for row in sorted(CITYSCAPES_LABELS, key=lambda r: r.train_id) if row.train_id != 255),
)

_SYNTHIA_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle",
)  # fmt: skip
SYNTHIA_16 = ClassSet(
    name="synthia16",
    classes=_SYNTHIA_CLASSES,
    subsets=(("13", tuple(i for i, n in enumerate(_SYNTHIA_CLASSES) if n not in ("wall", "fence", "pole"))),),
)

CLASS_SETS: dict[str, ClassSet] = {cs.name: cs for cs in (CITYSCAPES_19, SYNTHIA_16)}


def get_class_set(name: str) -> ClassSet:
    """Return the class set called ``name``; the error lists the valid names."""
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise ValueError(f"unknown class set {name!r}; valid: {', '.join(CLASS_SETS)}") from None
