"""Every CLI command with bad input: one ``error:`` line naming the input, exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reliability.conftest import assert_user_error, invoke, output_of

# (test names avoid the word c-u-d-a: tests/conftest.py skips those on machines without a GPU)
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is present")
FAST_TRAIN = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "2", "--device", "cpu"]
FAST_TRAIN += ["--stage", "source", "--set", "num_workers=0", "--set", "eval.max_images=1"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[0]


# ------------------------------------------------------------------------------------------ data


def test_label_info_missing_root(data_root: Path) -> None:
    result = invoke(["label-info", "gtav", "--root", data_root / "gtavv"])
    assert_user_error(result, "gtavv", "does not exist", "ROOT/labels")


def test_label_info_misnamed_root_shows_layout(data_root: Path) -> None:
    result = invoke(["label-info", "gtav", "--root", data_root])  # the parent, not data/gtav
    assert_user_error(result, "label folder", "expected layout", "ROOT/images", "ROOT/labels")


@pytest.mark.parametrize("dataset", ["gtav", "synthia"])
def test_label_info_truncated_label_stops_then_skip_bad_counts(data_copy: Path, tmp_path: Path, dataset: str) -> None:
    folder = "gtav/labels" if dataset == "gtav" else "synthia/RAND_CITYSCAPES/GT/LABELS"
    bad = _first(data_copy / folder, "*.png")
    _truncate(bad)
    out = tmp_path / "info.json"
    args = ["label-info", dataset, "--root", data_copy / dataset, "--out", out, "--workers", "1"]
    assert_user_error(invoke(args), bad.name, "cannot decode label", "--skip-bad")
    assert not out.exists()
    result = invoke([*args, "--skip-bad"])
    assert result.exit_code == 0, output_of(result)
    assert "1 skipped (1 unreadable)" in " ".join(output_of(result).split())
    doc = json.loads(out.read_text())
    assert doc["skipped"] == [bad.name] and len(doc["files"]) == 7


def test_label_info_ids_outside_label_set(data_copy: Path, tmp_path: Path) -> None:
    path = _first(data_copy / "gtav/labels", "*.png")
    im = Image.open(path)
    ids = np.array(im)
    ids[0, 0] = 200
    out = Image.fromarray(ids, mode="P")
    out.putpalette(im.getpalette())
    out.save(path)
    args = ["label-info", "gtav", "--root", data_copy / "gtav", "--out", tmp_path / "i.json", "--workers", "1"]
    result = invoke(args)
    assert_user_error(result, path.name, "outside the gtav label set", "0..33", "200")


def test_eval_label_size_mismatch(data_copy: Path, checkpoints: dict[str, Path]) -> None:
    label = _first(data_copy / "cityscapes/gtFine/val", "*/*_labelIds.png")
    Image.open(label).resize((32, 16), Image.NEAREST).save(label)
    result = invoke(["eval", checkpoints["c19"], "--data-root", data_copy / "cityscapes", "--device", "cpu"])
    assert_user_error(result, label.name, "32x16", "64x32", "its image's size")


def test_eval_truncated_image(data_copy: Path, checkpoints: dict[str, Path]) -> None:
    image = _first(data_copy / "cityscapes/leftImg8bit/val", "*/*.png")
    _truncate(image)
    result = invoke(["eval", checkpoints["c19"], "--data-root", data_copy / "cityscapes", "--device", "cpu"])
    text = assert_user_error(result, image.name, "cannot decode image")
    assert ".cpp" not in text  # torchvision's C++ location is not the user's concern


BOTH_LAYOUTS = ["holding cityscapes/", "cityscapes/leftImg8bit/", "the Cityscapes folder itself", "leftImg8bit/"]


@pytest.mark.parametrize("command", ["eval", "pseudo-label"])
@pytest.mark.parametrize(
    ("sub", "words"),
    [("nowhere", ["nowhere", "no such folder"]), ("gtav", ["gtav", "neither"])],
    ids=["missing", "misnamed"],
)
def test_data_root_names_both_layouts(
    data_root: Path, checkpoints: dict[str, Path], tmp_path: Path, command: str, sub: str, words: list[str]
) -> None:
    args = [command, checkpoints["c19"], "--data-root", data_root / sub, "--device", "cpu"]
    if command == "pseudo-label":
        args += ["--out", tmp_path / "pl"]
    assert_user_error(invoke(args), "--data-root", *words, *BOTH_LAYOUTS)
    assert not (tmp_path / "pl").exists()


def test_pseudo_label_unknown_split(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    args = ["pseudo-label", checkpoints["c19"], "--out", tmp_path / "pl", "--data-root", data_root / "cityscapes"]
    result = invoke([*args, "--split", "tarin", "--device", "cpu"])
    assert_user_error(result, "tarin", "does not exist", "expected layout")


def test_pseudo_label_out_exists_without_force(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pl"
    out.mkdir()
    (out / "old.png").write_bytes(b"x")
    args = ["pseudo-label", checkpoints["c19"], "--out", out, "--data-root", data_root / "cityscapes"]
    assert_user_error(invoke([*args, "--device", "cpu"]), str(out.name), "--force")
    assert (out / "old.png").read_bytes() == b"x"


def test_train_truncated_label_stops(data_copy: Path, tmp_path: Path) -> None:
    bad = _first(data_copy / "gtav/labels", "*.png")
    _truncate(bad)
    result = invoke(["train", "--data-root", data_copy, "--out", tmp_path / "run", *FAST_TRAIN])
    assert_user_error(result, bad.name, "cannot decode label", "--skip-bad")


def test_train_missing_data_root(tmp_path: Path) -> None:
    result = invoke(["train", "--data-root", tmp_path / "nodata", "--out", tmp_path / "run", *FAST_TRAIN])
    assert_user_error(result, "nodata", "does not exist", "ROOT/images")


def test_train_corrupt_label_info(data_copy: Path, tmp_path: Path) -> None:
    (data_copy / "gtav" / "gtav_label_info.json").write_text('{"schema": "proca.label_info", "schema_v')
    result = invoke(["train", "--data-root", data_copy, "--out", tmp_path / "run", *FAST_TRAIN])
    assert_user_error(result, "gtav_label_info.json", "cannot read label-info JSON")


# --------------------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--src", "gta5"], ["--src", "gtav", "synthia"]),
        (["--tgt", "bdd"], ["--tgt", "cityscapes"]),
        (["--stage", "warmup"], ["--stage", "source", "proca", "ssl"]),
        (["--set", "proca.temprature=0.1"], ["proca.temprature", "did you mean", "proca.temperature"]),
        (["--set", "sorce.lr=0.1"], ["sorce", "did you mean", "source"]),
        (["--set", "proca.temperature"], ["key.path=value"]),
        (["--set", "source.lr=-1"], ["source.lr", "greater than 0"]),
        (["--set", "source=3"], ["source", "section"]),
        (["--input-size", "32by64"], ["32by64", "HxW"]),
        (["--resume", "--force"], ["--resume", "--force"]),
    ],
    ids=["src", "tgt", "stage", "set-typo", "set-section-typo", "set-no-equals", "set-bad-value", "set-section",
         "input-size", "resume-force"],
)  # fmt: skip
def test_train_bad_options(tmp_path: Path, data_root: Path, args: list[str], words: list[str]) -> None:
    result = invoke(["train", "--data-root", data_root, "--out", tmp_path / "run", "--device", "cpu", *args])
    assert_user_error(result, *words)


def test_train_unknown_arch_lists_valid_names(data_root: Path, tmp_path: Path) -> None:
    args = ["--arch", "deeplabv2_resnet34", "--input-size", "32x64", "--iters", "1", "--device", "cpu"]
    args += ["--stage", "source", "--set", "num_workers=0"]
    result = invoke(["train", "--data-root", data_root, "--out", tmp_path / "run", *args])
    assert_user_error(result, "deeplabv2_resnet34", "deeplabv2_resnet101", "deeplabv2_resnet18", "deeplabv2_vgg16")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("c.toml", "[proca]\ntemprature = 0.1\n", ["proca.temprature", "proca.temperature"]),
        ("c.yaml", "soruce:\n  lr: 0.1\n", ["soruce", "source"]),
        ("c.json", '{"proca": {"temperature": 1', ["not valid JSON"]),
        ("c.yaml", "!!python/object/apply:os.system ['touch MARK']\n", ["not valid YAML"]),
        ("c.ini", "[proca]\n", ["unknown format", ".toml"]),
    ],
    ids=["toml-typo", "yaml-typo", "json-syntax", "yaml-python-tag", "suffix"],
)
def test_train_bad_config_file(tmp_path: Path, data_root: Path, name: str, text: str, words: list[str]) -> None:
    config = tmp_path / name
    config.write_text(text)
    result = invoke(["train", "--data-root", data_root, "--out", tmp_path / "run", "--config", config])
    assert_user_error(result, name, *words)
    assert not (Path.cwd() / "MARK").exists() and not (tmp_path / "MARK").exists()


@NO_GPU
def test_train_gpus_without_gpu(data_root: Path, tmp_path: Path) -> None:
    result = invoke(["train", "--data-root", data_root, "--out", tmp_path / "run", "--gpus", "1"])
    assert_user_error(result, "--gpus 1", "CUDA is not available", "--nproc")


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:1"], ids=["dev", "dev1"])
def test_eval_gpu_device_without_gpu(data_root: Path, checkpoints: dict[str, Path], device: str) -> None:
    result = invoke(["eval", checkpoints["c19"], "--data-root", data_root / "cityscapes", "--device", device])
    assert_user_error(result, f"--device {device}", "not available", "cpu")


def test_unknown_device_lists_valid(data_root: Path, checkpoints: dict[str, Path]) -> None:
    result = invoke(["eval", checkpoints["c19"], "--data-root", data_root / "cityscapes", "--device", "gpu"])
    assert_user_error(result, "--device gpu", "auto, cpu, cuda")


@pytest.mark.parametrize("marker", ["source.safetensors", "state/source.safetensors", "source.log.jsonl"])
def test_train_out_exists_without_resume_or_force(data_root: Path, tmp_path: Path, marker: str) -> None:
    out = tmp_path / "run"
    (out / marker).parent.mkdir(parents=True)
    (out / marker).write_bytes(b"previous run")
    result = invoke(["train", "--data-root", data_root, "--out", out, *FAST_TRAIN[:-4]])
    assert_user_error(result, str(out.name), "already holds a run", "--resume", "--force")
    assert (out / marker).read_bytes() == b"previous run"


# ------------------------------------------------------------------------------------ checkpoints


def _bad_checkpoint(kind: str, tmp_path: Path, good: Path) -> Path:
    path = tmp_path / f"{kind}.safetensors"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:100_000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pth-garbage":
        path = tmp_path / "garbage.pth"
        path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    elif kind == "not-a-checkpoint":
        path = tmp_path / "plain.pth"
        torch.save({"weights": [1, 2, 3]}, path)
    return path


BAD_CKPTS = ["garbage", "truncated", "empty", "pth-garbage", "not-a-checkpoint"]


def _command(cmd: str, ckpt: Path, data_root: Path, tmp_path: Path) -> list[str]:
    image = _first(data_root / "gtav/images", "*.png")
    return {
        "eval": ["eval", ckpt, "--data-root", data_root / "cityscapes", "--device", "cpu"],
        "infer": ["infer", ckpt, image, "--out", tmp_path / "pred", "--device", "cpu"],
        "pseudo-label": ["pseudo-label", ckpt, "--out", tmp_path / "pl", "--data-root", data_root / "cityscapes"],
        "convert": ["convert", ckpt, tmp_path / "out.safetensors"],
    }[cmd]


@pytest.mark.parametrize("cmd", ["eval", "infer", "pseudo-label", "convert"])
@pytest.mark.parametrize("kind", BAD_CKPTS)
def test_bad_checkpoint(kind: str, cmd: str, data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ckpt = _bad_checkpoint(kind, tmp_path, checkpoints["c19"])
    text = assert_user_error(invoke(_command(cmd, ckpt, data_root, tmp_path)), ckpt.name)
    flat = " ".join(text.split()).lower()
    assert any(w in flat for w in ("corrupt", "not a", "neither", "lacks", "not the", "bare state dict")), text
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "pred").exists()


@pytest.mark.parametrize("cmd", ["eval", "infer", "pseudo-label", "convert"])
def test_checkpoint_is_a_directory(cmd: str, data_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt_dir"
    folder.mkdir()
    assert_user_error(invoke(_command(cmd, folder, data_root, tmp_path)), "ckpt_dir", "directory")


@pytest.mark.parametrize("cmd", ["eval", "infer", "pseudo-label", "convert"])
def test_checkpoint_does_not_exist(cmd: str, data_root: Path, tmp_path: Path) -> None:
    result = invoke(_command(cmd, tmp_path / "nope.safetensors", data_root, tmp_path))
    text = assert_user_error(result, "nope", "does not exist")
    assert "Usage:" not in text and "╭" not in text, text  # one red line, not Click's usage box


@pytest.mark.parametrize("cmd", ["eval", "infer"])
def test_checkpoint_without_known_class_set(cmd: str, data_root: Path, checkpoints: dict[str, Path], tmp_path: Path):
    result = invoke(_command(cmd, checkpoints["c7"], data_root, tmp_path))
    assert_user_error(result, "c7.safetensors", "7-class", "cityscapes19", "synthia16")


def test_train_stage_checkpoint_of_other_class_set(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(checkpoints["c16"], out / "source.safetensors")  # a SYNTHIA model in a GTA5 run
    args = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--device", "cpu", "--stage", "prototypes"]
    result = invoke(["train", "--data-root", data_root, "--out", out, *args, "--resume"])
    assert_user_error(result, "source.safetensors", "16 classes", "19", "--force")


# ------------------------------------------------------------------------------------------ infer


@pytest.mark.parametrize(
    ("make", "words"),
    [
        ("missing", ["missing.png", "neither an image file"]),
        ("glob", ["matches no", "*.png"]),
        ("text", ["notes.txt", "not a .png/.jpg"]),
        ("fake-png", ["fake.png", "cannot decode image"]),
        ("empty-dir", ["holds no", "images"]),
    ],
)
def test_infer_bad_inputs(make: str, words: list[str], checkpoints: dict[str, Path], tmp_path: Path) -> None:
    target = {
        "missing": tmp_path / "missing.png",
        "glob": tmp_path / "shots" / "*.png",
        "text": tmp_path / "notes.txt",
        "fake-png": tmp_path / "fake.png",
        "empty-dir": tmp_path / "emptydir",
    }[make]
    if make == "text":
        target.write_text("hello")
    elif make == "fake-png":
        target.write_text("not an image")
    elif make == "empty-dir":
        target.mkdir()
    result = invoke(["infer", checkpoints["c19"], str(target), "--out", tmp_path / "pred", "--device", "cpu"])
    assert_user_error(result, *words)


def test_eval_json_path_is_a_folder(data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "report"
    folder.mkdir()
    args = ["eval", checkpoints["c19"], "--data-root", data_root / "cityscapes", "--device", "cpu", "--json", folder]
    assert_user_error(invoke(args), "--json", "report", "is a folder")
    assert list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize("cmd", ["infer", "eval-save-predictions", "eval-report", "pseudo-label"])
def test_output_folder_is_a_file(cmd: str, data_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("a file")
    image = _first(data_root / "gtav/images", "*.png")
    ckpt, city = checkpoints["c19"], data_root / "cityscapes"
    args = {
        "infer": ["infer", ckpt, image, "--out", out],
        "eval-save-predictions": ["eval", ckpt, "--data-root", city, "--save-predictions", out],
        "eval-report": ["eval", ckpt, "--data-root", city, "--report", out],
        "pseudo-label": ["pseudo-label", ckpt, "--data-root", city, "--out", out],
    }[cmd]
    assert_user_error(invoke([*args, "--device", "cpu"]), "taken", "is a file", "folder")
    assert out.read_text() == "a file"


# ------------------------------------------------------------------------- messages from workers


def test_error_raised_in_a_dataloader_worker_is_one_line(data_copy: Path) -> None:
    """DataLoader re-raises a worker's DataError with the worker's traceback inside the message."""
    import typer
    from torch.utils.data import DataLoader

    from proca.cli import _user_errors
    from proca.data import CityscapesDataset
    from proca.errors import DataError, user_message

    image = _first(data_copy / "cityscapes/leftImg8bit/val", "*/*.png")
    _truncate(image)
    loader = DataLoader(CityscapesDataset(data_copy / "cityscapes", split="val"), num_workers=1, collate_fn=list)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # what torch hands back
    message = user_message(info.value)
    assert "Traceback" not in message and "\n" not in message
    assert message.startswith("cannot decode image") and image.name in message
    with pytest.raises(typer.Exit) as exit_info, _user_errors():
        raise info.value
    assert exit_info.value.exit_code == 2


# ------------------------------------------------------------------------------- real processes


def _proca(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from proca.cli import main; main()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_subprocess_one_line_and_debug_traceback(tmp_path: Path, data_root: Path) -> None:
    garbage = tmp_path / "model.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    plain = _proca("eval", garbage, "--data-root", data_root / "cityscapes", "--device", "cpu", cwd=tmp_path)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "model.safetensors" in lines[0], plain.stderr
    debug = _proca("--debug", "train", "--set", "proca.temprature=1", "--out", tmp_path / "r", cwd=tmp_path)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "ConfigError" in debug.stderr and "proca.temperature" in debug.stderr


@pytest.mark.parametrize(
    ("cmd", "setup", "words"),
    [
        ("synth", "non-empty", ["not empty", "--force"]),
        ("synth", "file", ["is a file", "folder"]),
        ("demo", "non-empty", ["already holds", "--force"]),
    ],
)
def test_synth_and_demo_refuse_existing_out(cmd: str, setup: str, words: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("a file")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("keep")
    args = ["synth", "--out", out, "--size", "32x64", "--train", "1", "--val", "1"] if cmd == "synth" else []
    assert_user_error(invoke(args or ["demo", "--out", out]), "out", *words)
    assert (out.read_text() if setup == "file" else (out / "keep.txt").read_text()) in ("a file", "keep")


@pytest.mark.parametrize("kind", ["other-class-set", "garbage"])
def test_train_proca_stage_bad_prototypes(kind: str, data_root: Path, checkpoints: dict[str, Path], tmp_path: Path):
    from proca.engine.stages.prototypes import save_prototypes
    from proca.prototypes import PrototypeEstimator

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(checkpoints["c19"], out / "source.safetensors")
    if kind == "garbage":
        (out / "prototypes.safetensors").write_bytes(b"\x00" * 100)
        words = ["prototypes.safetensors", "not a readable prototype file", "--stage prototypes"]
    else:
        levels = {"feature": PrototypeEstimator(16, 512), "output": PrototypeEstimator(16, 16)}
        save_prototypes(out / "prototypes.safetensors", levels, {})
        words = ["prototypes.safetensors", "(16, 512)", "(19, 512)", "--stage prototypes"]
    args = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "1", "--device", "cpu"]
    args += ["--stage", "proca", "--set", "num_workers=0", "--set", "proca.batch_size=2", "--resume"]
    assert_user_error(invoke(["train", "--data-root", data_root, "--out", out, *args]), *words)
