"""Nothing half-written: every artifact goes through a temporary file and a rename.

Each writer is made to fail in the middle (the final ``os.replace`` raises, or the process is
"interrupted" while the bytes are flushed): the previous file must be left byte-for-byte unchanged
and no temporary file may stay behind.
"""

from __future__ import annotations

import ast
import errno
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import proca.io
from proca.errors import OutputError

PROCA = Path(proca.io.__file__).resolve().parent


def _model(checkpoints: dict[str, Path]) -> torch.nn.Module:
    from proca.models import load_model

    return load_model(checkpoints["c19"]).model


def _writers(checkpoints: dict[str, Path]) -> dict[str, Callable[[Path], None]]:
    from proca.data.classes import CITYSCAPES_19
    from proca.data.label_info import LabelInfo
    from proca.engine.encode import save_prediction
    from proca.engine.pseudo_label import _save_label
    from proca.engine.state import save_training_state
    from proca.models import save_model
    from proca.prototypes import PrototypeEstimator

    model = _model(checkpoints)
    ids = np.random.default_rng(0).integers(0, 19, (8, 16)).astype(np.uint8)

    def state(path: Path) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        save_training_state(path, model=model, optimizer=opt, info={"stage": "source", "iteration": 3})

    def label_info(path: Path) -> None:
        LabelInfo(files=["a.png"], file_to_classes={"a.png": [0, 2]}, num_classes=19, class_set="cityscapes19").save(
            path
        )

    return {
        "checkpoint": lambda p: save_model(model, p, metadata={"class_set": "cityscapes19"}),
        "state": state,
        "label-info": label_info,
        "json-report": lambda p: proca.io.atomic_write_json(p, {"miou": 50.0}),
        "prototypes": lambda p: PrototypeEstimator(19, 8).save(p),
        "eval-prediction-png": lambda p: save_prediction(ids, p, CITYSCAPES_19, "labelid"),
        "infer-prediction-png": lambda p: save_prediction(ids, p, CITYSCAPES_19, "color"),
        "pseudo-label-png": lambda p: _save_label(ids, p, CITYSCAPES_19.palette()),
    }


KINDS = [
    "checkpoint",
    "state",
    "label-info",
    "json-report",
    "prototypes",
    "eval-prediction-png",
    "infer-prediction-png",
    "pseudo-label-png",
]
SUFFIX = {"label-info": ".json", "json-report": ".json"}


def _name(kind: str) -> str:
    return "artifact" + SUFFIX.get(kind, ".png" if "png" in kind else ".safetensors")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fault", ["replace-fails", "interrupted-while-flushing", "disk-full"])
def test_failed_write_leaves_previous_file(
    kind: str, fault: str, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = _writers(checkpoints)
    target = tmp_path / _name(kind)
    target.write_bytes(b"the previous, complete file")
    if fault == "replace-fails":

        def boom(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(proca.io.os, "replace", boom)
        expected: type[BaseException] = OutputError
    elif fault == "interrupted-while-flushing":

        def interrupt(fd: int) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(proca.io.os, "fsync", interrupt)
        expected = KeyboardInterrupt
    else:

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(proca.io.os, "fsync", full)
        expected = OutputError
    with pytest.raises(expected) as info:
        writers[kind](target)
    assert target.read_bytes() == b"the previous, complete file"
    assert _leftovers(tmp_path) == []
    if expected is OutputError:
        assert isinstance(info.value, OSError)  # library callers catching OSError still do
        assert str(target) in str(info.value) and "cannot write" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_failed_first_write_leaves_nothing(
    kind: str, checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = _writers(checkpoints)
    target = tmp_path / "sub" / _name(kind)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(proca.io.os, "replace", boom)
    with pytest.raises(OutputError):
        writers[kind](target)
    assert not target.exists() and _leftovers(target.parent) == []


@pytest.mark.parametrize("kind", KINDS)
def test_successful_write_is_complete(kind: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / _name(kind)
    _writers(checkpoints)[kind](target)
    assert target.stat().st_size > 0 and _leftovers(tmp_path) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_onto_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="it is a folder"):
        proca.io.atomic_write_json(tmp_path, {})


# Calls that write files directly. Only proca/io.py may use them; the training log is the one
# append-only exception (a torn last line is dropped by runlog.read_log and rewritten on resume).
_ANY_OWNER = {"write_text", "write_bytes", "savez", "savez_compressed", "savefig"}
_BY_OWNER = {
    "save": {"torch", "np", "numpy"},
    "dump": {"json", "pickle", "yaml"},
    **{name: {"shutil"} for name in ("copy", "copy2", "copyfile", "copytree", "move")},
}
_ALLOWED = {("engine/runlog.py", "open")}


def _direct_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(PROCA).as_posix()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        constants = [a.value for a in [*node.args, *[k.value for k in node.keywords]] if isinstance(a, ast.Constant)]
        writes_mode = any(isinstance(m, str) and m[:1] in "wax" and set(m) <= set("wabx+t") for m in constants)
        owner = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        if name == "open" and writes_mode and (rel, "open") not in _ALLOWED:
            found.append(f"{rel}:{node.lineno} open(..., write mode)")
        elif (name in _ANY_OWNER and owner) or owner in _BY_OWNER.get(name, ()):
            found.append(f"{rel}:{node.lineno} {ast.unparse(func)}(...)")
    return found


def test_no_module_writes_files_around_proca_io() -> None:
    offenders = []
    for path in sorted(PROCA.rglob("*.py")):
        if path.name == "io.py" and path.parent == PROCA:
            continue
        offenders += _direct_writes(path)
    assert offenders == [], "write through proca.io (atomic_write*, save_image_atomic): " + "; ".join(offenders)
