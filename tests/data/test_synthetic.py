"""Synthetic scenes: determinism, on-disk formats, class coverage, refusal to overwrite, domain shift."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proca.data.classes import CITYSCAPES_19, CITYSCAPES_LABELS, SYNTHIA_16, SYNTHIA_LABELS
from proca.data.synthetic import (
    SyntheticSummary,
    encode_png16,
    render_scene,
    scene_rng,
    write_synthetic_datasets,
)
from proca.errors import DataError

SIZE = (64, 128)
CITYSCAPES_NAME = re.compile(r"^([a-z]+)/\1_\d{6}_\d{6}_leftImg8bit\.png$")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSummary:
    out = tmp_path_factory.mktemp("synth") / "data"
    return write_synthetic_datasets(out, seed=3, num_train=4, num_val=3, size=SIZE, progress=False)


def _decode16(path: Path) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_png, read_file

    return decode_png(read_file(str(path)), ImageReadMode.UNCHANGED).numpy()


def test_render_is_deterministic_per_seed() -> None:
    for domain in ("gtav", "synthia", "cityscapes"):
        a = render_scene(scene_rng(7, domain, "train", 2), SIZE, domain, index=2)
        b = render_scene(scene_rng(7, domain, "train", 2), SIZE, domain, index=2)
        c = render_scene(scene_rng(8, domain, "train", 2), SIZE, domain, index=2)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])
        assert a[0].shape == (*SIZE, 3) and a[0].dtype == np.uint8 and a[1].shape == SIZE


def test_write_is_deterministic(written: SyntheticSummary, tmp_path: Path) -> None:
    again = write_synthetic_datasets(tmp_path / "again", seed=3, num_train=4, num_val=3, size=SIZE, progress=False)
    files = sorted(p.relative_to(written.root) for p in written.root.rglob("*.png"))
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*.png"))
    for rel in files:
        assert (written.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel


def test_gtav_format(written: SyntheticSummary) -> None:
    images = sorted((written.gtav / "images").glob("*.png"))
    labels = sorted((written.gtav / "labels").glob("*.png"))
    assert [p.name for p in images] == [p.name for p in labels] == [f"{i:05d}.png" for i in range(1, 5)]
    palette = np.zeros((256, 3), dtype=np.uint8)
    for row in CITYSCAPES_LABELS:
        palette[row.label_id] = row.color
    with Image.open(labels[0]) as lab, Image.open(images[0]) as img:
        assert img.mode == "RGB" and img.size == (SIZE[1], SIZE[0])
        assert lab.mode == "P" and lab.size == img.size
        assert np.array_equal(np.array(lab.getpalette()[:768], dtype=np.uint8).reshape(256, 3), palette)
        ids = np.unique(np.array(lab))
    assert set(ids.tolist()) <= {row.label_id for row in CITYSCAPES_LABELS}
    assert {7, 11, 23} <= set(ids.tolist())  # road, building, sky


def test_synthia_format_decodes_16bit(written: SyntheticSummary) -> None:
    root = written.synthia / "RAND_CITYSCAPES"
    names = sorted(p.name for p in (root / "GT" / "LABELS").glob("*.png"))
    assert names == sorted(p.name for p in (root / "RGB").glob("*.png")) == [f"{i:07d}.png" for i in range(4)]
    gt = _decode16(root / "GT" / "LABELS" / names[0])
    assert gt.shape == (3, *SIZE)
    expected = render_scene(scene_rng(3, "synthia", "train", 0), SIZE, "synthia", index=0)[1]
    assert np.array_equal(gt[0].astype(np.uint16), expected)
    assert set(np.unique(gt[0]).tolist()) <= {raw for _, raw, _ in SYNTHIA_LABELS}


def test_png16_encoder_roundtrip() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(5, 7, 3)).astype(np.uint16)
    assert np.array_equal(_decode16_bytes(encode_png16(arr)), arr.transpose(2, 0, 1))
    with pytest.raises(ValueError):
        encode_png16(arr.astype(np.uint8))


def _decode16_bytes(data: bytes) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_png

    return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED).numpy()


def test_cityscapes_format(written: SyntheticSummary) -> None:
    for split, count in (("train", 4), ("val", 3)):
        listed = (written.root / f"cityscapes_{split}_list.txt").read_text().split()
        assert len(listed) == count
        for name in listed:
            assert CITYSCAPES_NAME.match(name), name
            img = written.cityscapes / "leftImg8bit" / split / name
            lab = written.cityscapes / "gtFine" / split / name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            with Image.open(img) as im, Image.open(lab) as lb:
                assert im.mode == "RGB" and lb.mode == "L" and im.size == lb.size
    assert (written.root / "gtav_train_list.txt").read_text().split() == [f"{i:05d}.png" for i in range(1, 5)]
    assert written.counts == {"gtav/train": 4, "synthia/train": 4, "cityscapes/train": 4, "cityscapes/val": 3}


def test_refuses_non_empty_folder(written: SyntheticSummary, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not empty"):
        write_synthetic_datasets(written.root, num_train=1, num_val=1, size=SIZE, progress=False)
    (tmp_path / "x").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_synthetic_datasets(tmp_path / "x", num_train=1, num_val=1, size=SIZE, progress=False)
    summary = write_synthetic_datasets(tmp_path, num_train=1, num_val=1, size=SIZE, force=True, progress=False)
    assert (summary.gtav / "images" / "00001.png").is_file()


def test_all_classes_occur_across_a_split() -> None:
    cs_lut, syn_lut = CITYSCAPES_19.lookup_table("cityscapes"), SYNTHIA_16.lookup_table("synthia")
    for domain, lut, n_classes in (("gtav", cs_lut, 19), ("cityscapes", cs_lut, 19), ("synthia", syn_lut, 16)):
        seen: set[int] = set()
        for i in range(12):
            labels = render_scene(scene_rng(0, domain, "train", i), (96, 192), domain, index=i)[1]
            seen |= set(np.unique(lut[labels]).tolist())
        assert seen - {255} == set(range(n_classes)), (domain, sorted(set(range(n_classes)) - seen))


def test_domains_differ_in_colour_statistics() -> None:
    def stats(domain: str, shift: float) -> np.ndarray:
        imgs = [render_scene(scene_rng(1, domain, "val", i), (64, 128), domain, shift=shift)[0] for i in range(6)]
        x = np.stack(imgs).reshape(-1, 3).astype(np.float64) / 255
        return np.concatenate([x.mean(0), x.std(0)])

    src, tgt, same = stats("gtav", 1.0), stats("cityscapes", 1.0), stats("cityscapes", 0.0)
    assert np.abs(src - tgt).max() > 0.05
    assert np.abs(src - same).max() < np.abs(src - tgt).max()


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        write_synthetic_datasets(tmp_path / "a", size=(8, 8), progress=False)
    with pytest.raises(DataError):
        write_synthetic_datasets(tmp_path / "b", shift=-1.0, progress=False)
    with pytest.raises(ValueError, match="domain"):
        render_scene(np.random.default_rng(0), SIZE, "kitti")
