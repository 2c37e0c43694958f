"""Untrusted files: poisoned pickles never run code, whichever loader reads them.

Each payload's ``__reduce__`` would create a marker file when unpickled. The control test proves the
payloads work with plain ``pickle``; every proca loader must refuse them with a clear error and the
marker must never appear.
"""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from proca.errors import CheckpointError, DataError, ProcaError
from tests.reliability.conftest import assert_user_error, invoke


class OpenPayload:
    """Unpickling calls ``builtins.open(marker, "w")`` (a builtin the label-info reader partly allows)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.marker, "w"))


class SystemPayload:
    """Unpickling runs ``os.system("touch marker")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


PAYLOADS = {"open": OpenPayload, "system": SystemPayload}


@pytest.fixture(params=sorted(PAYLOADS))
def payload(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Any, Path]:
    marker = tmp_path / "MARKER"
    return PAYLOADS[request.param](marker), marker


def _release_like(payload: Any) -> dict[str, Any]:
    """The release checkpoint layout with the payload hidden inside the classifier."""
    return {
        "feature_extractor": {"backbone.conv1.weight": torch.zeros(1)},
        "classifier": {"conv2d_list.0.weight": payload},
        "iteration": 7,
    }


def _write_pth(path: Path, obj: Any, legacy: bool) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_control_payloads_do_run_with_plain_pickle(payload: tuple[Any, Path]) -> None:
    obj, marker = payload
    pickle.loads(pickle.dumps(obj))
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("layout", ["bare", "nested"])
def test_load_model_refuses_poisoned_pth(payload: tuple[Any, Path], tmp_path: Path, legacy: bool, layout: str) -> None:
    from proca.models import load_model

    obj, marker = payload
    path = _write_pth(tmp_path / "model.pth", obj if layout == "bare" else _release_like(obj), legacy)
    with pytest.raises(CheckpointError, match="was refused") as info:
        load_model(path)
    assert "model.pth" in str(info.value) and ("posix.system" in str(info.value) or "open" in str(info.value))
    assert not marker.exists()


@pytest.mark.parametrize("command", ["convert", "eval", "infer", "pseudo-label"])
def test_cli_refuses_poisoned_pth(payload: tuple[Any, Path], tmp_path: Path, data_root: Path, command: str) -> None:
    obj, marker = payload
    path = _write_pth(tmp_path / "release.pth", _release_like(obj), legacy=False)
    image = sorted((data_root / "gtav/images").glob("*.png"))[0]
    args = {
        "convert": ["convert", path, tmp_path / "out.safetensors"],
        "eval": ["eval", path, "--data-root", data_root / "cityscapes", "--device", "cpu"],
        "infer": ["infer", path, image, "--out", tmp_path / "pred", "--device", "cpu"],
        "pseudo-label": ["pseudo-label", path, "--out", tmp_path / "pl", "--data-root", data_root / "cityscapes"],
    }[command]
    assert_user_error(invoke(args), "release.pth", "was refused", "could run code")
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_backbone_weights_refuse_poisoned_pth(payload: tuple[Any, Path], tmp_path: Path) -> None:
    from proca.models import build_model

    obj, marker = payload
    path = _write_pth(tmp_path / "resnet18.pth", {"conv1.weight": obj}, legacy=False)
    with pytest.raises(ProcaError) as info:
        build_model("deeplabv2_resnet18", backbone_weights=path)
    assert "resnet18.pth" in str(info.value)
    assert not marker.exists()


def test_prototype_file_refuses_poisoned_pth(payload: tuple[Any, Path], tmp_path: Path) -> None:
    from proca.prototypes import PrototypeEstimator

    obj, marker = payload
    path = _write_pth(tmp_path / "prototype_feat_dist.pth", {"Proto": obj, "Amount": torch.zeros(19)}, legacy=False)
    with pytest.raises(CheckpointError) as info:
        PrototypeEstimator.load(path)
    assert "prototype_feat_dist.pth" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["top", "inside"])
def test_label_info_pickle_refused(payload: tuple[Any, Path], tmp_path: Path, where: str) -> None:
    from proca.data.label_info import read_label_info

    obj, marker = payload
    doc = obj if where == "top" else ([["00001.png"]] * 19, {"00001.png": [0], "x": obj})
    path = tmp_path / "gtav_label_info.p"
    path.write_bytes(pickle.dumps(doc, protocol=2))
    with pytest.raises(DataError, match="would run code") as info:
        read_label_info(path)
    assert "gtav_label_info.p" in str(info.value)
    assert not marker.exists()


def test_training_refuses_poisoned_label_info(payload: tuple[Any, Path], data_copy: Path, tmp_path: Path) -> None:
    obj, marker = payload
    (data_copy / "gtav" / "gtav_label_info.p").write_bytes(pickle.dumps(([[]], {"a": obj})))
    args = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "1", "--device", "cpu"]
    args += ["--stage", "source", "--set", "num_workers=0"]
    result = invoke(["train", "--data-root", data_copy, "--out", tmp_path / "run", *args])
    assert_user_error(result, "gtav_label_info.p", "would run code")
    assert not marker.exists()


def test_release_label_info_pickle_still_reads(tmp_path: Path) -> None:
    from proca.data.label_info import read_label_info

    label_to_file = [["b.png"], [], ["a.png", "b.png"]] + [[] for _ in range(16)]
    path = tmp_path / "gtav_label_info.p"
    path.write_bytes(pickle.dumps((label_to_file, {"a.png": [2], "b.png": [0, 2]})))
    info = read_label_info(path)
    assert info.files == ["a.png", "b.png"] and info.file_to_classes["b.png"] == [0, 2]


def test_state_and_checkpoints_are_not_pickles(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Our own formats carry no pickle: a .safetensors file renamed to .pth still loads as safetensors."""
    from proca.models import load_model
    from proca.models.checkpoint import sniff_format

    renamed = tmp_path / "c19.pth"
    shutil.copy(checkpoints["c19"], renamed)
    assert sniff_format(renamed) == "safetensors"
    assert load_model(renamed).metadata["num_classes"] == 19
