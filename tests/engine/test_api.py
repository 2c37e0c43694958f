"""`proca.predict`, `proca.colorize`, `proca.overlay`: the one-call API, equal to `proca infer`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import proca
from proca.data.classes import CITYSCAPES_19, SYNTHIA_16
from proca.engine.commands.infer import run_infer
from proca.errors import CheckpointError, ConfigError, DataError


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
    save_model(build_model("deeplabv2_resnet18", num_classes=19), path, metadata={"eval_input_size": [24, 40]})
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(path)
    return path


def test_import_proca_does_not_import_torch() -> None:
    code = (
        "import sys, proca; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert {'predict', 'colorize', 'overlay'} <= set(dir(proca))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_path_equals_proca_infer(ckpt: Path, photo: Path, tmp_path: Path) -> None:
    ids = proca.predict(ckpt, photo)
    assert ids.shape == (30, 44) and ids.dtype == np.uint8
    assert ids.max() < 19
    (written,) = run_infer(ckpt, [str(photo)], out=tmp_path, fmt="trainid", progress=False)
    assert np.array_equal(ids, np.array(Image.open(written)))
    flipped = proca.predict(ckpt, str(photo), scales=(0.5, 1.0), flip=True)
    (again,) = run_infer(
        ckpt, [str(photo)], out=tmp_path / "ms", fmt="trainid", scales=(0.5, 1.0), flip=True, progress=False
    )
    assert np.array_equal(flipped, np.array(Image.open(again)))


def test_predict_array_pil_and_model(ckpt: Path, photo: Path) -> None:
    from proca.models import load_model

    want = proca.predict(ckpt, photo)
    rgb = np.array(Image.open(photo).convert("RGB"))
    assert np.array_equal(proca.predict(ckpt, rgb), want)
    assert np.array_equal(proca.predict(ckpt, Image.open(photo)), want)
    model = load_model(ckpt).model.train()
    ids = proca.predict(model, rgb, input_size=(24, 40))
    assert model.training  # the caller's mode is restored
    assert ids.shape == (30, 44) and ids.dtype == np.uint8
    assert np.array_equal(proca.predict(ckpt, rgb, input_size=(24, 40)), ids)


def test_predict_errors(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        proca.predict(tmp_path / "nope.safetensors", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"\(H, W, 3\) RGB"):
        proca.predict(ckpt, np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(DataError, match=r"\(H, W, 3\) RGB"):
        proca.predict(ckpt, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(DataError, match="cannot read an image"):
        proca.predict(ckpt, 3)
    with pytest.raises(ConfigError, match="no num_classes"):
        proca.predict(torch.nn.Conv2d(3, 5, 1), np.zeros((8, 8, 3), np.uint8))
    net = torch.nn.Conv2d(3, 5, 1)
    net.num_classes = 5  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="5 classes"):
        proca.predict(net, np.zeros((8, 8, 3), np.uint8))


def test_colorize_and_overlay() -> None:
    ids = np.array([[0, 1], [18, 255]], dtype=np.uint8)
    colours = proca.colorize(ids)
    assert colours.shape == (2, 2, 3) and colours.dtype == np.uint8
    assert colours[0, 0].tolist() == [128, 64, 128] and colours[1, 1].tolist() == [0, 0, 0]
    assert np.array_equal(colours, CITYSCAPES_19.colorize(ids))
    assert np.array_equal(proca.colorize(ids, class_set="synthia16"), SYNTHIA_16.colorize(ids))
    photo = np.full((2, 2, 3), 100, dtype=np.uint8)
    blended = proca.overlay(photo, ids, alpha=0.5)
    assert blended.shape == (2, 2, 3) and blended.dtype == np.uint8
    assert blended[0, 0].tolist() == [114, 82, 114] and blended[1, 1].tolist() == [100, 100, 100]
    assert np.array_equal(proca.overlay(Image.fromarray(photo), ids, alpha=0.0), photo)
    with pytest.raises(DataError, match="do not match"):
        proca.overlay(photo, ids[:1])
    with pytest.raises(ConfigError):
        proca.colorize(ids, class_set="mapillary")
