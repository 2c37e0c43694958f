"""Shared inputs of the reliability suite: tiny synthetic datasets, small checkpoints, a CLI helper."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

SIZE = (32, 64)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proca synth --size 32x64 --train 8 --val 4`` output (gtav/, synthia/, cityscapes/); do not modify."""
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path_factory.mktemp("synth") / "data"
    write_synthetic_datasets(root, seed=0, num_train=8, num_val=4, size=SIZE, progress=False)
    return root


@pytest.fixture
def data_copy(data_root: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic data that a test may corrupt."""
    dst = tmp_path / "data"
    shutil.copytree(data_root, dst)
    return dst


def _save(path: Path, num_classes: int, class_set: str | None) -> Path:
    from proca.models import build_model, save_model

    model = build_model("deeplabv2_resnet18", num_classes=num_classes)
    meta: dict[str, Any] = {"eval_input_size": list(SIZE)}
    if class_set is not None:
        meta["class_set"] = class_set
    save_model(model, path, metadata=meta)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight ResNet-18 checkpoints: ``c19`` (cityscapes19), ``c16`` (synthia16), ``c7`` (no class set)."""
    folder = tmp_path_factory.mktemp("ckpt")
    return {
        "c19": _save(folder / "c19.safetensors", 19, "cityscapes19"),
        "c16": _save(folder / "c16.safetensors", 16, "synthia16"),
        "c7": _save(folder / "c7.safetensors", 7, None),
    }


def invoke(args: list[str]) -> Any:
    """Run ``proca ARGS`` in-process (typer's CliRunner), stderr kept apart."""
    from proca.cli import _state, app

    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2 always separates stderr
        runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in args])
    _state["debug"] = False
    return result


def output_of(result: Any) -> str:
    """stdout + stderr of a CliRunner result."""
    err = ""
    with contextlib.suppress(ValueError):  # older click: stderr mixed into stdout
        err = result.stderr
    return (result.stdout or "") + (err or "")


def assert_user_error(result: Any, *words: str) -> str:
    """Exit status 2, no traceback, one ``error:`` line naming ``words`` (case-insensitive); returns the text."""
    text = output_of(result)
    assert result.exit_code == 2, f"exit {result.exit_code}: {text}\n{result.exception!r}"
    assert "Traceback" not in text, text
    # an uncaught exception in CliRunner sets result.exception to something other than SystemExit
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    flat = " ".join(text.replace("│", " ").split()).lower()
    for word in words:
        assert word.lower() in flat, f"{word!r} not in: {text}"
    return text
