"""`proca infer`: files, folders and globs of any size; colour, overlay, label-id and train-id outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from proca.cli import app
from proca.data.classes import CITYSCAPES_19
from proca.engine.commands.infer import output_name, run_infer
from proca.engine.encode import overlay

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.models import build_model, save_model

    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    torch.manual_seed(0)
    save_model(build_model("deeplabv2_resnet18", num_classes=19), path, metadata={"eval_input_size": [16, 32]})
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for rel, (h, w) in {"a.jpg": (30, 40), "b.png": (30, 40), "c.png": (30, 40), "sub/d.png": (45, 25)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / rel)
    return root


def test_overlay_blends() -> None:
    photo = np.full((1, 2, 3), 100, dtype=np.uint8)
    ids = np.array([[0, 255]], dtype=np.uint8)
    out = overlay(photo, ids, CITYSCAPES_19, alpha=0.5)
    assert out[0, 0].tolist() == [114, 82, 114]  # (100 + (128, 64, 128)) / 2
    assert out[0, 1].tolist() == [100, 100, 100]  # ignore: the photo


def test_output_name() -> None:
    assert output_name("sub/d", "/x/sub/d.png") == "sub/d"
    assert output_name("", "/x/photo.jpg") == "photo"
    assert output_name("/abs/name", "/x/photo.jpg") == "photo"


def test_infer_folder_formats_and_sizes(tmp_path: Path, ckpt: Path, photos: Path) -> None:
    written = run_infer(ckpt, [str(photos)], out=tmp_path / "color", batch_size=3, progress=False)
    rel = sorted(p.relative_to(tmp_path / "color").as_posix() for p in written)
    assert rel == ["a.png", "b.png", "c.png", "sub/d.png"]
    sizes = {p.name: Image.open(p).size for p in written}
    assert sizes["a.png"] == (40, 30) and sizes["d.png"] == (25, 45)
    assert Image.open(written[0]).mode == "RGB"
    for fmt, mode in (("labelid", "L"), ("trainid", "P"), ("overlay", "RGB")):
        files = run_infer(ckpt, [str(photos / "*.png")], out=tmp_path / fmt, fmt=fmt, progress=False)
        assert sorted(p.name for p in files) == ["b.png", "c.png"]
        assert Image.open(files[0]).mode == mode
    ids = np.array(Image.open(tmp_path / "labelid" / "b.png"))
    assert set(np.unique(ids)) <= set(CITYSCAPES_19.label_ids.tolist())


def test_infer_batched_equals_unbatched(tmp_path: Path, ckpt: Path, photos: Path) -> None:
    one = run_infer(ckpt, [str(photos)], out=tmp_path / "one", fmt="trainid", progress=False)
    many = run_infer(ckpt, [str(photos)], out=tmp_path / "many", fmt="trainid", batch_size=4, progress=False)
    for a, b in zip(one, many, strict=True):
        assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_cli_infer(tmp_path: Path, ckpt: Path, photos: Path) -> None:
    args = ["infer", str(ckpt), str(photos / "a.jpg"), "--out", str(tmp_path / "o"), "--scales", "0.5,1", "--flip"]
    result = runner.invoke(app, [*args, "--input-size", "24x32"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "o" / "a.png").size == (40, 30)
    missing = runner.invoke(app, ["infer", str(ckpt), str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope.jpg" in missing.output
