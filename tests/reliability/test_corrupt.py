"""Corrupt files of every kind: training state, checkpoints, prototypes, label info, images, labels, pseudo labels.

Each corruption (garbage bytes, truncation, an empty file, the wrong kind of file) must give a
:class:`proca.errors.ProcaError` that names the file; none may load as valid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from proca.errors import CheckpointError, DataError, ProcaError
from tests.reliability.conftest import assert_user_error, invoke

CORRUPTIONS = ["garbage", "truncated", "empty", "header-only"]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, max(64, len(data) // 100), np.uint8).tobytes())
    elif how == "truncated":
        path.write_bytes(data[: int(len(data) * 0.7)])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a valid beginning (safetensors header / PNG signature) and nothing else
        path.write_bytes(data[:64])


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict[str, Path]) -> Path:
    from proca.engine.state import save_training_state
    from proca.models import load_model

    model = load_model(checkpoints["c19"]).model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path_factory.mktemp("state") / "source.safetensors"
    save_training_state(path, model=model, optimizer=opt, info={"stage": "source", "iteration": 2})
    return path


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_training_state(how: str, state_file: Path, tmp_path: Path) -> None:
    from proca.engine.state import load_training_state

    path = tmp_path / "source.safetensors"
    shutil.copy(state_file, path)
    _corrupt(path, how)
    with pytest.raises(CheckpointError) as info:
        load_training_state(path)
    assert str(path) in str(info.value)


def test_model_checkpoint_given_as_state_and_back(state_file: Path, checkpoints: dict[str, Path]) -> None:
    from proca.engine.state import load_training_state
    from proca.models import load_model

    with pytest.raises(CheckpointError, match="load it with load_model"):
        load_training_state(checkpoints["c19"])
    with pytest.raises(CheckpointError, match="load it with load_state"):
        load_model(state_file)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_model_checkpoint(how: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from proca.models import load_model

    path = tmp_path / "model.safetensors"
    shutil.copy(checkpoints["c19"], path)
    _corrupt(path, how)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_corrupt_prototypes(how: str, tmp_path: Path) -> None:
    from proca.engine.stages.prototypes import load_prototypes, save_prototypes
    from proca.prototypes import PrototypeEstimator

    path = tmp_path / "prototypes.safetensors"
    save_prototypes(path, {"feature": PrototypeEstimator(19, 8), "output": PrototypeEstimator(19, 19)}, {})
    _corrupt(path, how)
    with pytest.raises(CheckpointError) as info:
        load_prototypes(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        PrototypeEstimator.load(path)


def test_resume_with_corrupt_state_names_the_file(data_root: Path, state_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "state").mkdir(parents=True)
    shutil.copy(state_file, out / "state" / "source.safetensors")
    _corrupt(out / "state" / "source.safetensors", "truncated")
    args = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "4", "--device", "cpu"]
    args += ["--stage", "source", "--set", "num_workers=0", "--set", "source.class_balanced=false", "--resume"]
    result = invoke(["train", "--data-root", data_root, "--out", out, *args])
    assert_user_error(result, "state/source.safetensors", "corrupt or truncated")


# ----------------------------------------------------------------------------------- label info


def _label_info_doc() -> dict:
    return {
        "schema": "proca.label_info",
        "schema_version": 1,
        "dataset": "gtav",
        "class_set": "cityscapes19",
        "num_classes": 19,
        "files": [{"file": "00001.png", "classes": [0, 2], "pixels": [10, 20]}],
        "skipped": [],
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"schema": "proca.label_info", "sche', "cannot read label-info JSON"),
        ("", "cannot read label-info JSON"),
        ("[1, 2, 3]", "not a proca label-info file"),
        (json.dumps({**_label_info_doc(), "schema": "other"}), "not a proca label-info file"),
        (json.dumps({**_label_info_doc(), "schema_version": 9}), "schema version 9"),
        (json.dumps({**_label_info_doc(), "files": [{"classes": [0]}]}), "malformed"),
        (json.dumps({**_label_info_doc(), "files": [{"file": "a", "classes": ["x"]}]}), "malformed"),
        (json.dumps({**_label_info_doc(), "files": 7}), "malformed"),
        ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "cannot read label-info JSON"),
    ],
    ids=["truncated", "empty", "list", "schema", "version", "no-file", "bad-class", "files-int", "binary"],
)
def test_corrupt_label_info_json(text: str, words: str, tmp_path: Path) -> None:
    from proca.data.label_info import read_label_info

    path = tmp_path / "gtav_label_info.json"
    path.write_text(text, encoding="latin-1" if text and not text.isascii() else "utf-8")
    with pytest.raises(DataError, match=words) as info:
        read_label_info(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------- image files


@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("which", ["gtav-image", "gtav-label", "synthia-label", "cityscapes-image", "cityscapes-label"])
def test_corrupt_dataset_files(how: str, which: str, data_copy: Path) -> None:
    from proca.data import CityscapesDataset, GTA5Dataset, SynthiaDataset

    datasets = {
        "gtav": lambda: GTA5Dataset(data_copy / "gtav"),
        "synthia": lambda: SynthiaDataset(data_copy / "synthia"),
        "cityscapes": lambda: CityscapesDataset(data_copy / "cityscapes", split="val"),
    }
    name, kind = which.split("-")
    dataset = datasets[name]()
    path = Path(dataset.images[0] if kind == "image" else dataset.labels[0])
    _corrupt(path, how)
    with pytest.raises(DataError) as info:
        dataset[0]
    message = str(info.value)
    assert str(path) in message and ("empty" in message or "cannot decode" in message)
    assert ".cpp" not in message


def _pseudo_labels(data_root: Path, out: Path) -> Path:
    from proca.data import CityscapesDataset

    dataset = CityscapesDataset(data_root / "cityscapes", split="train", labels=False)
    for name in dataset.names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((32, 64), np.uint8), mode="L").save(out / f"{name}.png")
    return out


@pytest.mark.parametrize("how", [*CORRUPTIONS, "id-19", "id-200", "rgb", "size"])
def test_corrupt_pseudo_labels(how: str, data_root: Path, tmp_path: Path) -> None:
    from proca.data import PseudoLabelDataset

    labels = _pseudo_labels(data_root, tmp_path / "pl")
    dataset = PseudoLabelDataset(data_root / "cityscapes", labels)
    path = Path(dataset.labels[0])
    if how.startswith("id-"):
        ids = np.zeros((32, 64), np.uint8)
        ids[3, 3] = int(how[3:])
        Image.fromarray(ids, mode="L").save(path)
        expected = f"outside the trainid label set.*{how[3:]}"
    elif how == "rgb":
        Image.new("RGB", (64, 32)).save(path)
        expected = "3 channels"
    elif how == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8), mode="L").save(path)
        expected = "its image's size"
    else:
        _corrupt(path, how)
        expected = "empty|cannot decode"
    with pytest.raises(ProcaError, match=expected) as info:
        dataset[0]
    assert str(path) in str(info.value)
