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
    "VISTAS_LABELS",
    "ClassSet",
    "LabelRow",
    "RawLabelSpace",
    "get_class_set",
]

IGNORE_INDEX = 255

RawLabelSpace = Literal["cityscapes", "gtav", "synthia", "cityscapes_trainid", "vistas"]
"""Label spaces of the files on disk: Cityscapes label ids (Cityscapes, GTA5, ACDC, Dark Zurich), SYNTHIA ids,
the 19 Cityscapes train ids (BDD100K) and the 66 Mapillary Vistas v1.2 class ids."""


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

# Mapillary Vistas v1.2 (the research edition's config.json): the 66 classes in id order (the index in the
# palette label PNGs), their colour, and the Cityscapes class each one is trained and evaluated as
# (None: ignored, 255). The mapping follows the Cityscapes class definitions: road markings, manholes and
# potholes are part of the road; curbs, curb cuts and pedestrian areas part of the sidewalk; sand and
# mountains terrain; street lights and sign frames poles; only the front of a traffic sign is a sign.
VISTAS_LABELS: tuple[tuple[str, tuple[int, int, int], str | None], ...] = (
    ("animal--bird", (165, 42, 42), None),
    ("animal--ground-animal", (0, 192, 0), None),
    ("construction--barrier--curb", (196, 196, 196), "sidewalk"),
    ("construction--barrier--fence", (190, 153, 153), "fence"),
    ("construction--barrier--guard-rail", (180, 165, 180), None),
    ("construction--barrier--other-barrier", (90, 120, 150), None),
    ("construction--barrier--wall", (102, 102, 156), "wall"),
    ("construction--flat--bike-lane", (128, 64, 255), "road"),
    ("construction--flat--crosswalk-plain", (140, 140, 200), "road"),
    ("construction--flat--curb-cut", (170, 170, 170), "sidewalk"),
    ("construction--flat--parking", (250, 170, 160), None),
    ("construction--flat--pedestrian-area", (96, 96, 96), "sidewalk"),
    ("construction--flat--rail-track", (230, 150, 140), None),
    ("construction--flat--road", (128, 64, 128), "road"),
    ("construction--flat--service-lane", (110, 110, 110), "road"),
    ("construction--flat--sidewalk", (244, 35, 232), "sidewalk"),
    ("construction--structure--bridge", (150, 100, 100), None),
    ("construction--structure--building", (70, 70, 70), "building"),
    ("construction--structure--tunnel", (150, 120, 90), None),
    ("human--person", (220, 20, 60), "person"),
    ("human--rider--bicyclist", (255, 0, 0), "rider"),
    ("human--rider--motorcyclist", (255, 0, 100), "rider"),
    ("human--rider--other-rider", (255, 0, 200), "rider"),
    ("marking--crosswalk-zebra", (200, 128, 128), "road"),
    ("marking--general", (255, 255, 255), "road"),
    ("nature--mountain", (64, 170, 64), "terrain"),
    ("nature--sand", (230, 160, 50), "terrain"),
    ("nature--sky", (70, 130, 180), "sky"),
    ("nature--snow", (190, 255, 255), None),
    ("nature--terrain", (152, 251, 152), "terrain"),
    ("nature--vegetation", (107, 142, 35), "vegetation"),
    ("nature--water", (0, 170, 30), None),
    ("object--banner", (255, 255, 128), None),
    ("object--bench", (250, 0, 30), None),
    ("object--bike-rack", (100, 140, 180), None),
    ("object--billboard", (220, 220, 220), None),
    ("object--catch-basin", (220, 128, 128), None),
    ("object--cctv-camera", (222, 40, 40), None),
    ("object--fire-hydrant", (100, 170, 30), None),
    ("object--junction-box", (40, 40, 40), None),
    ("object--mailbox", (33, 33, 33), None),
    ("object--manhole", (100, 128, 160), "road"),
    ("object--phone-booth", (142, 0, 0), None),
    ("object--pothole", (70, 100, 150), "road"),
    ("object--street-light", (210, 170, 100), "pole"),
    ("object--support--pole", (153, 153, 153), "pole"),
    ("object--support--traffic-sign-frame", (128, 128, 128), "pole"),
    ("object--support--utility-pole", (0, 0, 80), "pole"),
    ("object--traffic-light", (250, 170, 30), "traffic light"),
    ("object--traffic-sign--back", (192, 192, 192), None),
    ("object--traffic-sign--front", (220, 220, 0), "traffic sign"),
    ("object--trash-can", (140, 140, 20), None),
    ("object--vehicle--bicycle", (119, 11, 32), "bicycle"),
    ("object--vehicle--boat", (150, 0, 255), None),
    ("object--vehicle--bus", (0, 60, 100), "bus"),
    ("object--vehicle--car", (0, 0, 142), "car"),
    ("object--vehicle--caravan", (0, 0, 90), None),
    ("object--vehicle--motorcycle", (0, 0, 230), "motorcycle"),
    ("object--vehicle--on-rails", (0, 80, 100), "train"),
    ("object--vehicle--other-vehicle", (128, 64, 64), None),
    ("object--vehicle--trailer", (0, 0, 110), None),
    ("object--vehicle--truck", (0, 0, 70), "truck"),
    ("object--vehicle--wheeled-slow", (0, 0, 192), None),
    ("void--car-mount", (32, 32, 32), None),
    ("void--ego-vehicle", (120, 10, 10), None),
    ("void--unlabeled", (0, 0, 0), None),
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
            raw: ``"cityscapes"`` or ``"gtav"`` (Cityscapes label ids, 256 entries),
                ``"synthia"`` (SYNTHIA ids, 65536 entries so any 16-bit value indexes it),
                ``"cityscapes_trainid"`` (the 19 Cityscapes train ids, as BDD100K stores them) or
                ``"vistas"`` (Mapillary Vistas v1.2 class ids, see :data:`VISTAS_LABELS`).

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
        if raw == "cityscapes_trainid":
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            for name, train_id in zip(CITYSCAPES_19.classes, range(19), strict=True):
                if name in index:
                    lut[train_id] = index[name]
            return lut
        if raw == "vistas":
            lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
            for vistas_id, (_, _, target) in enumerate(VISTAS_LABELS):
                if target is not None and target in index:
                    lut[vistas_id] = index[target]
            return lut
        raise ValueError(
            f"unknown raw label space {raw!r}; valid: cityscapes, gtav, synthia, cityscapes_trainid, vistas"
        )

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
