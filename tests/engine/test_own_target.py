"""A folder of your own photos as the target of ``proca train``: every stage, no labels, any names and sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from proca.cli import app

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

TINY = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "2", "--batch-size", "2"]
TINY_SET = ["--set", "num_workers=0", "--set", "log_every=1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _photo(path: Path, width: int, height: int, seed: int, fmt: str = "JPEG", exif_orientation: int = 0) -> None:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif_orientation:
        exif = image.getexif()
        exif[0x0112] = exif_orientation
        image.save(path, fmt, exif=exif.tobytes())
    else:
        image.save(path, fmt)


@pytest.fixture(scope="module")
def source_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets folder with GTA5-format synthetic scenes and no cityscapes/ at all."""
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path_factory.mktemp("data")
    write_synthetic_datasets(root, seed=0, num_train=4, num_val=1, size=(32, 64), force=True, progress=False)
    shutil.rmtree(root / "cityscapes")
    shutil.rmtree(root / "synthia")
    return root


@pytest.mark.slow
def test_a_flat_folder_of_jpeg_photos_is_the_target_of_every_stage(source_only: Path, tmp_path: Path) -> None:
    from proca.models import load_model

    photos = tmp_path / "dashcam"
    sizes = [(70, 130), (90, 120), (70, 130), (90, 120)]  # width x height, two sizes
    for i, (w, h) in enumerate(sizes):
        _photo(photos / f"DSC_{1000 + i}.jpg", w, h, seed=i)
    run = tmp_path / "run"
    args = ["train", "--src", "gtav", "--tgt", str(photos), "--data-root", str(source_only), "--out", str(run)]
    result = CliRunner().invoke(app, [*args, *TINY, *TINY_SET])
    assert result.exit_code == 0, result.output
    for name in ("source", "prototypes", "proca", "ssl"):
        assert (run / f"{name}.safetensors").is_file(), name
    assert not list(run.glob("*.best.safetensors"))  # nothing validated, so no best
    assert result.output.count("validation: skipped") == 1
    assert "pseudo_label.init_from: best -> last (proca.safetensors)" in result.output
    labels = sorted(p.name for p in (run / "pseudo_labels").glob("*.png"))
    assert labels == [f"DSC_{1000 + i}.png" for i in range(4)]
    for i, (w, h) in enumerate(sizes):  # each pseudo label at its photo's own size
        assert Image.open(run / "pseudo_labels" / f"DSC_{1000 + i}.png").size == (w, h)
    config = json.loads((run / "config.json").read_text())
    assert config["tgt"] == str(photos.absolute()) and config["tgt_val"] is None
    assert config["class_set"] == "cityscapes19" and config["proca"]["target_size"] == [32, 64]
    ckpt = load_model(run / "ssl.safetensors")
    assert ckpt.metadata["config"]["tgt"] == str(photos.absolute())
    results = json.loads((run / "results.json").read_text())
    assert set(results) == {"source", "prototypes", "proca", "pseudo-label", "ssl"}
    assert results["ssl"]["miou"] is None and results["pseudo-label"]["num_images"] == 4

    other = tmp_path / "other"
    _photo(other / "a.jpg", 64, 32, seed=9)
    moved = CliRunner().invoke(app, [*args[:4], str(other), *args[5:], *TINY, *TINY_SET, "--resume"])
    assert moved.exit_code == 2 and "tgt" in moved.output  # the recorded target is checked on resume


def test_release_checkpoints_need_validation(source_only: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", 64, 32, seed=0)
    args = ["train", "--tgt", str(photos), "--data-root", str(source_only), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, [*args, *TINY, *TINY_SET, "--set", "proca.init_from=release"])
    assert result.exit_code == 2
    assert "proca.init_from=release" in result.output and "--tgt-val" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "holds no .png/.jpg/.jpeg/.webp images"),
        (lambda p: None, "no such dataset, file or folder"),
        (lambda p: (p.parent / "x.txt").write_text("x"), "matches no"),
    ],
)
def test_a_target_without_images_is_refused_before_anything_is_written(
    source_only: Path, tmp_path: Path, make: Any, expected: str
) -> None:
    target = tmp_path / "empty"
    make(target)
    spec = str(tmp_path / "*.jpg") if expected == "matches no" else str(target)
    args = ["train", "--tgt", spec, "--data-root", str(source_only), "--out", str(tmp_path / "run"), *TINY, *TINY_SET]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and expected in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_formats_exif_and_nested_names_reach_pseudo_labels_and_pair_back(tmp_path: Path) -> None:
    """JPEG, PNG and WebP, EXIF rotation applied; nested folders and equal base names give distinct labels
    that the self-training dataset pairs back to their images."""
    from proca.data.benchmarks import pseudo_labelled as pseudo_label_pairs
    from proca.data.classes import CITYSCAPES_19
    from proca.data.targets import resolve_target, target_train_dataset
    from proca.engine.pseudo_label import generate_pseudo_labels
    from proca.models import build_model

    root = tmp_path / "footage"
    _photo(root / "day" / "frame.jpg", 40, 24, seed=1, exif_orientation=6)  # stored 40x24, upright 24x40
    _photo(root / "night" / "frame.jpg", 48, 32, seed=2)
    _photo(root / "night" / "frame.png", 48, 32, seed=3, fmt="PNG")
    _photo(root / "clip.webp", 36, 20, seed=4, fmt="WEBP")
    target = resolve_target(str(root), tmp_path)
    assert target.kind == "folder" and not target.labelled
    images = target_train_dataset(target, tmp_path, class_set=CITYSCAPES_19)
    assert sorted(images.names) == ["clip", "day/frame", "night/frame", "night/frame-2"]
    shapes = {n: tuple(images[i]["image"].shape) for i, n in enumerate(images.names)}
    assert shapes["day/frame"] == (3, 40, 24)  # EXIF orientation 6: turned upright
    assert shapes["clip"] == (3, 20, 36)
    torch.manual_seed(0)
    model = build_model("deeplabv2_resnet18", num_classes=19)
    out = tmp_path / "pl"
    generate_pseudo_labels(model, images, out, class_set=CITYSCAPES_19, input_size=(16, 32), progress=False)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["clip.png", "day/frame.png", "night/frame-2.png", "night/frame.png"]
    paired = pseudo_label_pairs(images, out, class_set=CITYSCAPES_19)
    for i in range(len(paired)):
        sample = paired[i]
        assert tuple(sample["label"].shape) == tuple(sample["image"].shape[-2:])
    (out / "clip.png").unlink()
    from proca.errors import DataError

    with pytest.raises(DataError, match=r"clip\.png does not exist"):
        pseudo_label_pairs(images, out, class_set=CITYSCAPES_19)


def test_a_run_folder_inside_the_target_folder_is_refused(source_only: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", 64, 32, seed=0)
    args = ["train", "--tgt", str(photos), "--data-root", str(source_only), "--out", str(photos / "run")]
    result = CliRunner().invoke(app, [*args, *TINY, *TINY_SET])
    assert result.exit_code == 2 and "lies inside --tgt" in result.output
    assert not (photos / "run").exists()
