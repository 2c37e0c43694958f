"""proca's own files: model checkpoints (.safetensors + JSON metadata) and training state."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import proca
from proca.errors import CheckpointError
from proca.models import METADATA_KEYS, DeepLabV2, deeplabv2_resnet18, load_model, load_state, save_model, save_state
from proca.models.metadata import CHECKPOINT_CLASS_NAMES


def test_round_trip(tmp_path: Path, r18: DeepLabV2, image: torch.Tensor) -> None:
    path = tmp_path / "ckpt.safetensors"
    protos = {
        "feature.prototypes": torch.randn(19, 512),
        "feature.counts": torch.arange(19, dtype=torch.int64),
        "output.prototypes": torch.randn(19, 19),
        "output.counts": torch.arange(19, dtype=torch.int64),
    }
    save_model(
        r18,
        path,
        metadata={"stage": "proca", "iteration": 1234, "config": {"tau": 50.0}, "metrics": {"miou": 55.1}},
        prototypes=protos,
    )
    loaded = load_model(path)
    assert not loaded.model.training
    assert loaded.model.arch == "deeplabv2_resnet18" and loaded.model.norm == "batch"
    meta = loaded.metadata
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["format_version"] == 1 and meta["proca_version"] == proca.__version__
    assert (meta["arch"], meta["num_classes"], meta["class_set"]) == ("deeplabv2_resnet18", 19, "cityscapes19")
    assert meta["class_names"][18] == "bicycle"
    assert (meta["stage"], meta["iteration"], meta["eval_input_size"]) == ("proca", 1234, [512, 1024])
    assert meta["config"] == {"tau": 50.0} and meta["metrics"] == {"miou": 55.1}
    assert set(loaded.prototypes) == set(protos)
    for key, value in protos.items():
        torch.testing.assert_close(loaded.prototypes[key], value, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), r18(image), rtol=0, atol=0)
    for key, value in r18.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)


def test_metadata_lives_in_the_header_as_json(tmp_path: Path, r18: DeepLabV2) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_model(r18, path)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        keys = set(handle.keys())
    assert set(header) == {"proca"}
    meta = json.loads(header["proca"])
    assert meta["stage"] is None and meta["iteration"] is None
    assert "backbone.layer4.1.bn2.running_var" in keys and "classifier.conv2d_list.3.bias" in keys


def test_frozen_and_synthia_round_trip(tmp_path: Path, image: torch.Tensor) -> None:
    model = deeplabv2_resnet18(num_classes=16, norm="frozen").eval()
    path = tmp_path / "s.safetensors"
    save_model(model, path, metadata={"eval_input_size": (256, 512)})
    loaded = load_model(path)
    assert loaded.model.norm == "frozen" and loaded.metadata["norm"] == "frozen"
    assert loaded.metadata["class_set"] == "synthia16"
    assert loaded.metadata["class_names"] == list(CHECKPOINT_CLASS_NAMES["synthia16"])
    assert loaded.metadata["eval_input_size"] == [256, 512]
    assert loaded.prototypes == {}
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), model(image), rtol=0, atol=0)


def test_wrapped_models_are_unwrapped(tmp_path: Path, r18: DeepLabV2) -> None:
    class Wrapper(torch.nn.Module):  # like DistributedDataParallel: the network under .module
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    path = tmp_path / "wrapped.safetensors"
    save_model(Wrapper(r18), path)  # type: ignore[arg-type]
    assert "backbone.conv1.weight" in load_model(path).model.state_dict()
    with pytest.raises(CheckpointError, match="takes a DeepLabV2"):
        save_model(torch.nn.Linear(2, 2), path)  # type: ignore[arg-type]


def test_other_class_counts_get_generic_names(tmp_path: Path) -> None:
    path = tmp_path / "five.safetensors"
    save_model(deeplabv2_resnet18(num_classes=5), path)
    meta = load_model(path).metadata
    assert meta["class_set"] is None and meta["class_names"] == [f"class_{i}" for i in range(5)]


def test_bad_metadata_is_refused_and_leaves_the_old_file(tmp_path: Path, r18: DeepLabV2) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_model(r18, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="contradicts"):
        save_model(r18, path, metadata={"arch": "deeplabv2_resnet101"})
    with pytest.raises(CheckpointError, match="synthia16"):
        save_model(r18, path, metadata={"class_set": "synthia16"})
    with pytest.raises(CheckpointError, match="JSON"):
        save_model(r18, path, metadata={"config": {"when": object()}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]  # no temp files left


def test_load_model_device_argument(tmp_path: Path, r18: DeepLabV2) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_model(r18, path)
    model = load_model(path, map_location=torch.device("cpu")).model
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    model.to("cpu")  # nothing left on the meta device


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bad-json", "no-proca", "future"])
def test_damaged_files_name_the_path(tmp_path: Path, r18: DeepLabV2, damage: str) -> None:
    path = tmp_path / f"{damage}.safetensors"
    if damage == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 100)
    elif damage == "truncated":
        save_model(r18, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bad-json":
        save_file({"x": torch.zeros(1)}, str(path), metadata={"proca": "{not json"})
    elif damage == "no-proca":
        save_file({"x": torch.zeros(1)}, str(path), metadata={"other": "1"})
    else:
        save_model(r18, path)
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["proca"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        meta["format_version"] = 99
        save_file(tensors, str(path), metadata={"proca": json.dumps(meta)})
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_weights_that_do_not_fit(tmp_path: Path, r18: DeepLabV2) -> None:
    path = tmp_path / "ckpt.safetensors"
    save_model(r18, path)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["proca"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    meta["num_classes"] = 7
    save_file(tensors, str(path), metadata={"proca": json.dumps(meta)})
    with pytest.raises(
        CheckpointError, match=r"wrong shapes classifier.conv2d_list.0.bias \(19,\) in the file vs \(7,\) in the model"
    ):
        load_model(path)


def test_training_state_round_trip(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "optimizer.state.0.momentum_buffer": base,
        "view": base[1],  # shares base's storage
        "transposed": base.t(),  # not contiguous
        "rng.torch": torch.get_rng_state(),
        "step": torch.tensor(7),
        "empty": torch.zeros(0),
    }
    meta = {"iteration": 500, "sampler": {"position": 4000, "seed": 0}, "lr": [2.5e-4, 2.5e-3], "stage": "proca"}
    path = tmp_path / "state.safetensors"
    save_state(path, tensors, meta)
    got, got_meta = load_state(path)
    assert got_meta == meta
    assert set(got) == set(tensors)
    for key, value in tensors.items():
        torch.testing.assert_close(got[key], value.contiguous(), rtol=0, atol=0)
    assert got["rng.torch"].dtype == torch.uint8


def test_training_state_errors(tmp_path: Path, r18: DeepLabV2) -> None:
    path = tmp_path / "state.safetensors"
    with pytest.raises(CheckpointError, match="JSON"):
        save_state(path, {}, {"x": {1, 2}})
    with pytest.raises(CheckpointError, match="expected a tensor"):
        save_state(path, {"x": [1, 2]}, {})  # type: ignore[dict-item]
    assert not path.exists()
    model_file = tmp_path / "model.safetensors"
    save_model(r18, model_file)
    with pytest.raises(CheckpointError, match="load_model"):
        load_state(model_file)
    save_state(path, {"x": torch.ones(3)}, {})
    with pytest.raises(CheckpointError, match="load_state"):
        load_model(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_state(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing.safetensors")


def test_class_names_match_the_class_tables() -> None:
    from proca.data.classes import CLASS_SETS

    assert {name: tuple(cs.classes) for name, cs in CLASS_SETS.items()} == CHECKPOINT_CLASS_NAMES


@pytest.mark.cuda
def test_load_onto_cuda(
    tmp_path: Path, r18: DeepLabV2, image: torch.Tensor, release_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare at full float32 precision
    path = tmp_path / "ckpt.safetensors"
    save_model(r18, path)
    for source in (path, release_file):
        model = load_model(source, map_location="cuda").model
        assert all(t.device.type == "cuda" for t in model.state_dict().values())
        with torch.no_grad():
            torch.testing.assert_close(model(image.cuda()).cpu(), r18(image), rtol=1e-3, atol=1e-4)
