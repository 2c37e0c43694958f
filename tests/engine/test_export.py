"""`proca export`: ONNX (checked with onnxruntime where installed) and TorchScript, logits and argmax, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from proca.cli import app
from proca.engine.commands.export import run_export
from proca.engine.export import ExportedNetwork, export_format, export_model
from proca.errors import CheckpointError, ConfigError, OutputError

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(tmp_path_factory: pytest.TempPathFactory, arch: str, size: list[int]) -> Path:
    from proca.models import build_model, save_model

    path = tmp_path_factory.mktemp("ckpt") / f"{arch}.safetensors"
    torch.manual_seed(0)
    save_model(build_model(arch, num_classes=19), path, metadata={"eval_input_size": size})
    return path


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory, "deeplabv2_resnet18", [32, 48])


@pytest.fixture(scope="module")
def mit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory, "daformer_mit_b0", [64, 64])


def _model(path: Path) -> torch.nn.Module:
    from proca.models import load_model

    return load_model(path).model.eval()


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.numpy()})[0]


def _rel(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a - b.numpy()).max() / np.abs(b.numpy()).max())


@pytest.mark.parametrize("which", ["r18", "mit"])
def test_onnx_logits_match_onnxruntime(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    ckpt = request.getfixturevalue(which)
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(ckpt), str(out)])
    assert result.exit_code == 0, result.output
    assert "checked with onnxruntime" in result.output
    size = (32, 48) if which == "r18" else (64, 64)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        want = _model(ckpt)(x)
    got = _ort(out, x)
    stride = 8 if which == "r18" else 4
    assert got.shape == (1, 19, size[0] // stride, size[1] // stride)
    assert _rel(got, want) <= 1e-3


def test_onnx_dynamic_takes_other_sizes(r18: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "dyn.onnx"
    result = run_export(r18, out, dynamic=True, opset=18)
    assert result.dynamic and result.opset == 18 and result.max_relative_difference is not None
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        want = _model(r18)(x)
    got = _ort(out, x)
    assert got.shape == tuple(want.shape)
    assert _rel(got, want) <= 1e-3


def test_onnx_argmax_equals_torch_argmax(mit: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "ids.onnx"
    run_export(mit, out, output="argmax", dynamic=True, input_size=(64, 64))
    x = torch.randn(1, 3, 48, 80)
    model = _model(mit)
    with torch.no_grad():
        up = F.interpolate(model(x), size=(48, 80), mode="bilinear", align_corners=True)
    got = _ort(out, x)
    assert got.dtype == np.uint8 and got.shape == (1, 48, 80)
    assert (got == up.argmax(1).numpy()).mean() > 0.999


def test_export_without_onnxruntime_skips_the_check(r18: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", str(r18), str(out), "--input-size", "24x40"])
    assert result.exit_code == 0, result.output
    assert "check skipped" in result.output and "pip install proca-seg[onnx]" in result.output
    assert out.is_file() and out.stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_onnx_without_the_onnx_package_is_one_line(r18: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    result = runner.invoke(app, ["export", str(r18), str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "pip install proca-seg[onnx]" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_argmax_head_is_predict_probs_argmax(r18: Path) -> None:
    from proca.engine.predict import predict_probs

    model = _model(r18)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ids = ExportedNetwork(model, "argmax").eval()(x)
    assert ids.dtype == torch.uint8 and ids.shape == (2, 32, 48)
    want = predict_probs(model, x, out_size=(32, 48)).argmax(1)
    assert torch.equal(ids.long(), want)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("output", ["logits", "argmax"])
def test_torchscript_round_trip(mit: Path, tmp_path: Path, output: str) -> None:
    out = tmp_path / "m.pt"
    result = run_export(mit, out, output=output)
    assert result.format == "torchscript" and result.checked_with == "torch.jit"
    assert result.max_relative_difference is not None and result.max_relative_difference <= 1e-3
    loaded = torch.jit.load(str(out))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = ExportedNetwork(_model(mit), output).eval()(x)
        got = loaded(x)
    if output == "logits":
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        assert got.dtype == torch.uint8 and torch.equal(got, want)


def test_failed_check_writes_nothing(r18: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import proca.engine.export as export

    monkeypatch.setattr(export, "_run_exported", lambda data, fmt, x: torch.zeros(1, 19, 4, 6))
    out = tmp_path / "m.pt"
    with pytest.raises(CheckpointError, match="differs from PyTorch"):
        export_model(_model(r18), out, input_size=(32, 48))
    assert not out.exists() and not list(tmp_path.iterdir())
    result = runner.invoke(app, ["export", str(r18), str(out)])
    assert result.exit_code == 2 and "differs from PyTorch" in result.output


def test_export_format_follows_the_suffix() -> None:
    assert export_format("a.onnx") == "onnx" and export_format("a.PT") == "torchscript"
    assert export_format("a.ts", "torchscript") == "torchscript"
    with pytest.raises(ConfigError, match="valid"):
        export_format("a.bin")
    with pytest.raises(ConfigError, match=r"\.onnx"):
        export_format("a.pt", "onnx")


def test_cli_errors_are_one_line(r18: Path, tmp_path: Path) -> None:
    existing = tmp_path / "old.onnx"
    existing.write_bytes(b"x")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "dir.onnx").mkdir()
    cases = {
        "does not exist": [str(tmp_path / "nope.safetensors"), str(tmp_path / "a.onnx")],
        "not an export format": [str(r18), str(tmp_path / "a.txt")],
        "--force": [str(r18), str(existing)],
        "not a writable folder": [str(r18), str(blocker / "a.onnx")],
        "--opset 12": [str(r18), str(tmp_path / "a.onnx"), "--opset", "12"],
        "needs the suffix": [str(r18), str(tmp_path / "a.onnx"), "--format", "torchscript"],
        "it is a folder": [str(r18), str(tmp_path / "dir.onnx")],
    }
    for needle, args in cases.items():
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2, (needle, result.output)
        assert needle in result.output, (needle, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert existing.read_bytes() == b"x"
    with pytest.raises(OutputError):
        run_export(r18, existing)
