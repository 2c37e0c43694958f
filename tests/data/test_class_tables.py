"""The class tables agree with the official Cityscapes labels and every derived mapping follows them."""

from __future__ import annotations

import numpy as np
import pytest

from proca.data.classes import CITYSCAPES_19, CITYSCAPES_LABELS, IGNORE_INDEX, SYNTHIA_16, SYNTHIA_LABELS

# The official cityscapesscripts/helpers/labels.py table (name, id, trainId, color), transcribed,
# for machines without the package. license plate (id -1) is never stored in label PNGs.
OFFICIAL = [
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)), ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)), ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)), ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]  # fmt: skip


def _ours() -> list[tuple[str, int, int, tuple[int, int, int]]]:
    return [(r.name, r.label_id, r.train_id, r.color) for r in CITYSCAPES_LABELS]


def test_table_matches_transcribed_official_table() -> None:
    assert _ours() == OFFICIAL


def test_table_matches_cityscapesscripts() -> None:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    official = [(lab.name, lab.id, lab.trainId, tuple(lab.color)) for lab in labels.labels if lab.id >= 0]
    assert _ours() == official
    # train ids 0..18 name the same classes as our 19-class set
    by_train = {lab.trainId: lab.name for lab in labels.labels if 0 <= lab.trainId < 255}
    assert tuple(by_train[i] for i in range(19)) == CITYSCAPES_19.classes


def test_cityscapes_lookup_table() -> None:
    lut = CITYSCAPES_19.lookup_table("cityscapes")
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
    for raw in range(256):
        assert lut[raw] == expected.get(raw, IGNORE_INDEX)
    # train id -> label id is the inverse on the 19 classes
    assert (lut[CITYSCAPES_19.train_to_label_ids(np.arange(19))] == np.arange(19)).all()
    assert CITYSCAPES_19.train_to_label_ids(np.array([255]))[0] == 0


def test_synthia_lookup_tables() -> None:
    expected = {
        3: 0,
        4: 1,
        2: 2,
        21: 3,
        5: 4,
        7: 5,
        15: 6,
        9: 7,
        6: 8,
        1: 9,
        10: 10,
        17: 11,
        8: 12,
        19: 13,
        12: 14,
        11: 15,
    }  # fmt: skip  (the release's id_to_trainid)
    lut = SYNTHIA_16.lookup_table("synthia")
    assert lut.shape == (65536,)
    for raw in range(65536):
        if lut[raw] != expected.get(raw, IGNORE_INDEX):
            raise AssertionError(f"synthia id {raw} -> {lut[raw]}")
    assert len(SYNTHIA_LABELS) == 23
    # Cityscapes label ids -> the 16 SYNTHIA classes: terrain, truck, train are ignored
    cs16 = SYNTHIA_16.lookup_table("cityscapes")
    assert cs16[22] == cs16[27] == cs16[31] == IGNORE_INDEX
    assert cs16[7] == 0 and cs16[23] == 9 and cs16[33] == 15
    assert [SYNTHIA_16.classes[i] for i in SYNTHIA_16.subset("13")] == [
        n for n in SYNTHIA_16.classes if n not in ("wall", "fence", "pole")
    ]


def test_colours_and_palette() -> None:
    for cs in (CITYSCAPES_19, SYNTHIA_16):
        colours = {r.name: r.color for r in CITYSCAPES_LABELS}
        assert [tuple(c) for c in cs.colors.tolist()] == [colours[n] for n in cs.classes]
        pal = np.array(cs.palette()).reshape(256, 3)
        assert (pal[: cs.num_classes] == cs.colors).all() and (pal[255] == 0).all()
        img = cs.colorize(np.array([[0, 255]]))
        assert tuple(img[0, 0]) == tuple(cs.colors[0]) and tuple(img[0, 1]) == (0, 0, 0)
