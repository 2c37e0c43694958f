"""The release's .pth checkpoints: layout checks, key mapping, inference, conversion, and safety."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from proca.cli import app
from proca.engine.commands.convert import run_convert
from proca.errors import CheckpointError, ConfigError
from proca.models import DeepLabV2, build_model, deeplabv2_resnet18, load_model
from proca.models.legacy import (
    infer_release_arch,
    parse_release_checkpoint,
    proca_to_release_state_dict,
    release_to_proca_state_dict,
)


def test_key_mapping_both_ways() -> None:
    with torch.device("meta"):
        model = build_model("deeplabv2_resnet101")
    state = model.state_dict()
    release = proca_to_release_state_dict(state)
    assert "backbone.layer4.2.bn3.running_var" in release["feature_extractor"]
    assert "backbone.conv1.weight" in release["feature_extractor"]
    assert set(release["classifier"]) == {f"conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    ddp = {name: {f"module.{k}": v for k, v in part.items()} for name, part in release.items()}
    back = release_to_proca_state_dict(ddp["feature_extractor"], ddp["classifier"])
    assert list(back) == list(state)
    assert all(back[k] is state[k] for k in state)
    with pytest.raises(CheckpointError, match=r"head\.weight"):
        proca_to_release_state_dict({"head.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    ("arch", "norm"),
    [
        ("deeplabv2_resnet101", "batch"),
        ("deeplabv2_resnet101", "frozen"),
        ("deeplabv2_resnet50", "batch"),
        ("deeplabv2_resnet18", "frozen"),
        ("deeplabv2_vgg16", "batch"),
    ],
)
def test_arch_and_norm_are_inferred_from_the_tensors(arch: str, norm: str) -> None:
    with torch.device("meta"):
        model = build_model(arch, num_classes=16, norm=norm)
    release = proca_to_release_state_dict(model.state_dict())
    assert infer_release_arch(release["feature_extractor"]) == (arch, norm)
    parsed = parse_release_checkpoint({**release, "iteration": 5}, "x.pth")
    assert (parsed.arch, parsed.norm, parsed.num_classes, parsed.iteration) == (arch, norm, 16, 5)


def test_proca_layout_with_ddp_prefixes_and_optimizers(release_file: Path, r18: DeepLabV2, image: torch.Tensor) -> None:
    loaded = load_model(release_file)
    meta = loaded.metadata
    assert not loaded.model.training
    assert (meta["arch"], meta["norm"], meta["num_classes"], meta["class_set"]) == (
        "deeplabv2_resnet18",
        "batch",
        19,
        "cityscapes19",
    )
    assert meta["iteration"] == 20000 and meta["converted_from"] == "model_proca_ssl.pth"
    assert meta["ignored_entries"] == ["iteration", "optimizer_cls", "optimizer_fea"]
    assert meta["eval_input_size"] == [512, 1024] and meta["format_version"] == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), r18(image), rtol=0, atol=0)


def test_fada_layout_frozen_norm_and_discriminator(
    tmp_path: Path,
    image: torch.Tensor,
    release_checkpoint: Callable[..., dict[str, Any]],
    randomise_norm_stats: Callable[..., None],
) -> None:
    torch.manual_seed(0)
    model = deeplabv2_resnet18(num_classes=16, norm="frozen")
    randomise_norm_stats(model)
    model.eval()
    extra = {"model_D": {"module.D.0.weight": torch.zeros(2)}, "optimizer_D": {"state": {}, "param_groups": []}}
    ckpt = release_checkpoint(model, ddp=False, extra=extra)
    assert not any(k.endswith("num_batches_tracked") for k in ckpt["feature_extractor"])
    path = tmp_path / "fada.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # the pre-1.6 format of old files
    loaded = load_model(path)
    assert loaded.metadata["norm"] == "frozen" and loaded.metadata["class_set"] == "synthia16"
    assert loaded.metadata["ignored_entries"] == [
        "iteration",
        "model_D",
        "optimizer_D",
        "optimizer_cls",
        "optimizer_fea",
    ]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), model(image), rtol=0, atol=0)


def test_convert(tmp_path: Path, release_file: Path, r18: DeepLabV2, image: torch.Tensor) -> None:
    dst = tmp_path / "out" / "model.safetensors"
    summary = run_convert(release_file, dst)
    assert summary["arch"] == "deeplabv2_resnet18" and summary["class_set"] == "cityscapes19"
    assert summary["parameters"] == 11_526_796 and summary["dst"] == str(dst)
    loaded = load_model(dst)
    assert loaded.metadata["converted_from"] == "model_proca_ssl.pth" and loaded.metadata["iteration"] == 20000
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(image), r18(image), rtol=0, atol=0)


def test_convert_class_set_option(tmp_path: Path, release_file: Path) -> None:
    with pytest.raises(ConfigError, match="cityscapes19, synthia16"):
        run_convert(release_file, tmp_path / "a.safetensors", class_set="gta")
    with pytest.raises(CheckpointError, match="16 classes but the model predicts 19"):
        run_convert(release_file, tmp_path / "b.safetensors", class_set="synthia16")
    with pytest.raises(CheckpointError, match="is the input file"):
        run_convert(release_file, release_file)
    assert not (tmp_path / "b.safetensors").exists()


def test_cli_convert(tmp_path: Path, release_file: Path) -> None:
    runner = CliRunner()
    dst = tmp_path / "model.safetensors"
    result = runner.invoke(app, ["convert", str(release_file), str(dst)])
    assert result.exit_code == 0, result.output
    assert "deeplabv2_resnet18" in result.output and dst.is_file()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    result = runner.invoke(app, ["convert", str(bad), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert "error" in result.output and "bad.pth" in result.output


def _refusal(tmp_path: Path, obj: object) -> str:
    path = tmp_path / "odd.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_refuses_other_layouts(
    tmp_path: Path, r18: DeepLabV2, release_checkpoint: Callable[..., dict[str, Any]]
) -> None:
    good = release_checkpoint(r18)
    assert "unexpected entries ema" in _refusal(tmp_path, {**good, "ema": {"x": torch.zeros(1)}})
    assert "lacks 'classifier'" in _refusal(tmp_path, {"feature_extractor": good["feature_extractor"]})
    assert "state dict of a proca network" in _refusal(tmp_path, r18.state_dict())
    assert "bare state dict" in _refusal(tmp_path, {"layer.weight": torch.zeros(2)})
    assert "holds a list" in _refusal(tmp_path, [1, 2])
    fe = dict(good["feature_extractor"])
    fe["module.backbone.fc.weight"] = torch.zeros(3, 512)
    assert "unexpected backbone.fc.weight" in _refusal(tmp_path, {**good, "feature_extractor": fe})
    cls = {**good["classifier"], "module.conv2d_list.4.weight": torch.zeros(19, 512, 3, 3)}
    assert "unexpected conv2d_list.4.weight" in _refusal(tmp_path, {**good, "classifier": cls})
    cls = {k: v[:, :256] if k.endswith("weight") else v for k, v in good["classifier"].items()}
    assert "256 input channels" in _refusal(tmp_path, {**good, "classifier": cls})
    fe = {k: v for k, v in good["feature_extractor"].items() if ".layer4.1." not in k}
    assert "[2, 2, 2, 1] basic blocks" in _refusal(tmp_path, {**good, "feature_extractor": fe})
    fe = {k.replace("backbone.", "encoder."): v for k, v in good["feature_extractor"].items()}
    assert "outside 'backbone.'" in _refusal(tmp_path, {**good, "feature_extractor": fe})


class _Poison:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_poisoned_pickles_run_nothing(
    tmp_path: Path, r18: DeepLabV2, release_checkpoint: Callable[..., dict[str, Any]]
) -> None:
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"feature_extractor": _Poison(marker), "classifier": {}}, protocol=2))
    zipped = tmp_path / "zipped.pth"
    torch.save({**release_checkpoint(r18), "iteration": _Poison(marker)}, zipped)
    for path in (raw, zipped):
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        message = str(err.value)
        assert str(path) in message and "could run code" in message
        with pytest.raises(CheckpointError):
            run_convert(path, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04" + b"\x00" * 64, b"\x80\x02garbage", b"hello world"])
def test_garbage_pth(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_model(path)


def test_truncated_release_file(tmp_path: Path, release_file: Path) -> None:
    data = release_file.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


def test_legacy_does_not_import_checkpoint() -> None:
    """checkpoint reads release files through legacy; legacy must not import checkpoint back (no circle)."""
    import ast
    import inspect

    import proca.models.legacy as legacy

    tree = ast.parse(inspect.getsource(legacy))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "proca.models.checkpoint" not in imported and not any(m and m.startswith("proca.engine") for m in imported)


def test_convert_message_says_what_was_kept_and_dropped(tmp_path: Path, release_file: Path) -> None:
    result = CliRunner().invoke(app, ["convert", str(release_file), str(tmp_path / "m.safetensors")])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "iteration 20000 kept as metadata" in flat
    dropped = flat.split("dropped:", 1)[1]
    assert "optimizer_cls" in dropped and "optimizer_fea" in dropped and "iteration" not in dropped
    assert "ignored:" not in flat
