"""Dataset readers: lossless label decoding, label-id remapping, splits, and errors that name the path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _pngwriter import make_cityscapes, make_gtav, make_synthia, random_image, write_png
from torchvision import tv_tensors

from proca.data import (
    SYNTHIA_16,
    CityscapesDataset,
    GTA5Dataset,
    ImageFolderDataset,
    PseudoLabelDataset,
    SynthiaDataset,
    cityscapes_root,
)
from proca.data._decode import read_label_ids
from proca.errors import DataError

CS_LUT = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
          27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
SYN_LUT = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13, 12: 14,
           11: 15}  # fmt: skip


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.int64)
    for k, v in table.items():
        out[raw == k] = v
    return out


def test_16bit_png_decodes_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = rng.integers(0, 65536, (7, 9, 3), dtype=np.uint16)
    full[0, 0] = (65535, 256, 1)
    path = write_png(tmp_path / "l.png", full, mode="rgb", bit_depth=16)
    ids = read_label_ids(path, "synthia")
    assert ids.dtype == np.uint16
    assert np.array_equal(ids, full[..., 0])


def test_synthia_dataset_maps_channel0(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = [rng.integers(0, 23, (6, 10)).astype(np.uint16) for _ in range(3)]
    labels[0][0, :] = 21  # wall: 0x0015, a value Pillow's 8-bit view would destroy
    ds = SynthiaDataset(make_synthia(tmp_path / "synthia", labels))
    assert ds.class_set is SYNTHIA_16 and len(ds) == 3 and ds.files == ["0000000.png", "0000001.png", "0000002.png"]
    for k in range(3):
        s = ds[k]
        assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
        assert s["image"].shape == (3, 6, 10)
        assert isinstance(s["label"], tv_tensors.Mask) and s["label"].dtype == torch.int64
        assert np.array_equal(s["label"].numpy(), _expected(labels[k], SYN_LUT))
        assert s["name"] == f"{k:07d}.png" and s["path"].endswith(s["name"])


def test_synthia_rejects_ids_outside_label_set(tmp_path: Path) -> None:
    lab = np.full((4, 4), 3, np.uint16)
    lab[1, 1] = 300
    root = make_synthia(tmp_path / "s", [lab])
    with pytest.raises(DataError, match=r"0000000\.png.*300"):
        SynthiaDataset(root)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = SynthiaDataset(root, strict=False)[0]["label"]
    assert out[1, 1] == 255 and out[0, 0] == 0
    assert len([w for w in caught if "outside the synthia label set" in str(w.message)]) == 1


def test_gtav_reads_palette_indices_not_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = [rng.integers(0, 34, (5, 8)).astype(np.uint8) for _ in range(2)]
    labels[1][0, 0] = 255  # license plate (-1) in an 8-bit file: ignored
    ds = GTA5Dataset(make_gtav(tmp_path / "gtav", labels))
    assert ds.files == ["00001.png", "00002.png"]
    for k in range(2):
        assert np.array_equal(ds[k]["label"].numpy(), _expected(labels[k], CS_LUT))
    # the 16-class set maps the same files to SYNTHIA's train ids
    ds16 = GTA5Dataset(tmp_path / "gtav", class_set=SYNTHIA_16)
    lab16 = ds16[0]["label"].numpy()
    assert set(np.unique(lab16)) <= set(range(16)) | {255}
    assert ((labels[0] == 26) == (lab16 == 12)).all()  # car


def test_gtav_rejects_ids_above_33(tmp_path: Path) -> None:
    lab = np.full((4, 4), 7, np.uint8)
    lab[2, 2] = 40
    root = make_gtav(tmp_path / "g", [lab])
    with pytest.raises(DataError, match=r"labels/00001\.png.*40"):
        GTA5Dataset(root)[0]


def test_split_from_list_file_and_files(tmp_path: Path) -> None:
    labels = [np.full((3, 3), 7, np.uint8) for _ in range(4)]
    root = make_gtav(tmp_path / "g", labels)
    lst = tmp_path / "list.txt"
    lst.write_text("00003.png\n00001.png\n\n")
    assert GTA5Dataset(root, list_file=lst).files == ["00003.png", "00001.png"]
    assert [s["name"] for s in GTA5Dataset(root, files=["00004.png", "00002.png"])] == ["00004.png", "00002.png"]
    lst.write_text("00009.png\n")
    with pytest.raises(DataError, match=r"00009\.png does not exist.*expected layout"):
        GTA5Dataset(root, list_file=lst)


def test_cityscapes_labels_19_and_16(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = {
        "aachen_000000_000019": rng.integers(0, 34, (4, 8)).astype(np.uint8),
        "bremen_000001_000019": rng.integers(0, 34, (4, 8)).astype(np.uint8),
    }
    root = make_cityscapes(tmp_path / "cs", "val", labels)
    ds = CityscapesDataset(root, split="val")
    assert ds.files == ["aachen/aachen_000000_000019_leftImg8bit.png", "bremen/bremen_000001_000019_leftImg8bit.png"]
    s = ds[1]
    assert s["name"] == "bremen/bremen_000001_000019"
    assert np.array_equal(s["label"].numpy(), _expected(labels["bremen_000001_000019"], CS_LUT))
    s16 = CityscapesDataset(root, split="val", class_set=SYNTHIA_16)[0]["label"].numpy()
    syn_names = SYNTHIA_16.classes
    from proca.data.classes import CITYSCAPES_LABELS

    name_of = {r.label_id: r.name for r in CITYSCAPES_LABELS}
    want = np.vectorize(lambda v: syn_names.index(name_of[v]) if name_of[v] in syn_names else 255)(
        labels["aachen_000000_000019"]
    )
    assert np.array_equal(s16, want)
    unlabelled = CityscapesDataset(root, split="val", labels=False)[0]
    assert "label" not in unlabelled and unlabelled["image"].shape == (3, 4, 8)
    lst = tmp_path / "val_list.txt"
    lst.write_text("bremen/bremen_000001_000019_leftImg8bit.png\n")
    assert len(CityscapesDataset(root, split="val", list_file=lst)) == 1


def test_cityscapes_root_accepts_datasets_folder_and_cityscapes_folder(tmp_path: Path) -> None:
    (tmp_path / "datasets" / "cityscapes" / "leftImg8bit").mkdir(parents=True)
    (tmp_path / "cs" / "leftImg8bit").mkdir(parents=True)
    assert cityscapes_root(tmp_path / "datasets") == tmp_path / "datasets" / "cityscapes"
    assert cityscapes_root(str(tmp_path / "cs")) == tmp_path / "cs"
    assert cityscapes_root(tmp_path / "datasets" / "cityscapes") == tmp_path / "datasets" / "cityscapes"
    for bad, words in ((tmp_path / "nowhere", "no such folder"), (tmp_path, "neither")):
        with pytest.raises(DataError) as err:
            cityscapes_root(bad)
        text = str(err.value)
        assert words in text and "--data-root" in text
        assert f"{bad}/cityscapes/leftImg8bit/" in text and f"{bad}/leftImg8bit/" in text


def test_pseudo_label_dataset_both_namings(tmp_path: Path) -> None:
    names = {"aachen_000000_000019": np.zeros((4, 6), np.uint8), "aachen_000001_000019": np.zeros((4, 6), np.uint8)}
    root = make_cityscapes(tmp_path / "cs", "train", names)
    ours, flat = tmp_path / "pl", tmp_path / "pl_release"
    pl = np.array([[0, 18, 255, 5, 5, 5]] * 4, np.uint8)
    for n in names:
        write_png(ours / "aachen" / f"{n}.png", pl, mode="gray")
        write_png(flat / f"{n}_leftImg8bit.png", pl, mode="palette")
    for folder in (ours, flat):
        ds = PseudoLabelDataset(root, folder)
        s = ds[1]
        assert s["name"] == "aachen/aachen_000001_000019"
        assert np.array_equal(s["label"].numpy(), pl.astype(np.int64))
    write_png(ours / "aachen" / "aachen_000000_000019.png", np.full((4, 6), 19, np.uint8), mode="gray")
    with pytest.raises(DataError, match=r"aachen_000000_000019\.png.*train ids 0\.\.18"):
        PseudoLabelDataset(root, ours)[0]


def test_image_folder_files_folders_globs(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for rel in ("a/x.png", "a/sub/y.jpg.png", "b/x.png", "c.png"):
        write_png(tmp_path / rel, random_image(rng, 3, 4), mode="rgb")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset([tmp_path / "a", str(tmp_path / "b" / "*.png"), tmp_path / "c.png", tmp_path / "c.png"])
    assert [ds[i]["name"] for i in range(len(ds))] == ["sub/y.jpg", "x", "x-2", "c"]
    assert "label" not in ds[0] and ds[0]["image"].shape == (3, 3, 4)
    with pytest.raises(DataError, match="nothing"):
        ImageFolderDataset([tmp_path / "nothing"])
    with pytest.raises(DataError, match="matches no"):
        ImageFolderDataset([str(tmp_path / "*.jpeg")])


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"images does not exist; expected layout: ROOT/images"):
        GTA5Dataset(tmp_path / "missing")
    with pytest.raises(DataError, match=r"leftImg8bit/val.*does not exist"):
        CityscapesDataset(tmp_path / "cs", split="val")
    # label size differs from image size
    root = make_gtav(tmp_path / "g", [np.full((4, 4), 7, np.uint8)])
    write_png(root / "labels" / "00001.png", np.full((4, 5), 7, np.uint8), mode="palette")
    with pytest.raises(DataError, match=r"labels/00001\.png is 5x4.*images/00001\.png is 4x4"):
        GTA5Dataset(root)[0]
    # corrupt image and a colour (RGB) label
    (root / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*images/00001\.png"):
        GTA5Dataset(root)[0]
    write_png(root / "images" / "00001.png", np.zeros((4, 4, 3), np.uint8), mode="rgb")
    write_png(root / "labels" / "00001.png", np.zeros((4, 4, 3), np.uint8), mode="rgb")
    with pytest.raises(DataError, match=r"labels/00001\.png has 3 channels"):
        GTA5Dataset(root)[0]
    # missing label file
    (root / "labels" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"GTA5 label file .*labels/00001\.png does not exist"):
        GTA5Dataset(root)


def test_pipeline_label_info_sampler_loader(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from proca.data import ClassBalancedSampler, build_label_info
    from proca.data import transforms as T

    rng = np.random.default_rng(5)
    root = make_gtav(tmp_path / "gtav", [rng.choice([7, 8, 26, 33], (12, 20)).astype(np.uint8) for _ in range(6)])
    info = build_label_info("gtav", root, workers=1)
    ds = GTA5Dataset(root, files=info.files, transform=T.source_train_transform((8, 16)))
    sampler = ClassBalancedSampler(info, 8, num_classes=19, seed=0)
    batches = list(DataLoader(ds, batch_size=4, sampler=sampler))
    assert len(batches) == 2
    assert batches[0]["image"].shape == (4, 3, 8, 16) and batches[0]["label"].shape == (4, 8, 16)
    assert batches[0]["image"].dtype == torch.float32 and batches[0]["label"].dtype == torch.int64
    assert set(batches[0]["label"].unique().tolist()) <= {0, 1, 13, 18}
