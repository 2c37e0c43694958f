"""Help screens: every command's Examples section runs, no ``<bool>`` after flags, ``python -m proca``.

Each example is taken from the rendered ``--help`` of its command and run in a folder laid out like a
user's: ``datasets/`` (tiny synthetic GTA5/SYNTHIA/Cityscapes), ``runs/x/*.safetensors`` and ``CKPT``
(random-init ResNet-18 checkpoints), released-layout ``.pth`` files and ``photos/``. Tiny settings are
appended (a later option wins in Click): CPU, 32x64 inputs, one iteration; train examples without
``--stage`` only resolve their config (``--print-config``: they need GPUs or ImageNet files).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proca import __version__
from proca.cli import app

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["synth", "label-info", "train", "pseudo-label", "adapt-bn", "eval", "infer", "convert", "export", "demo"]
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def _examples(command: str) -> list[str]:
    text = _help(command)
    assert "Examples:" in text, f"proca {command} --help has no Examples section"
    section = text.split("Examples:", 1)[1]
    lines = [line.strip(" │") for line in section.splitlines()]
    return [line for line in lines if line.startswith(f"proca {command} ")]


EXAMPLES = [(cmd, ex) for cmd in COMMANDS for ex in _examples(cmd)]


def test_every_command_has_examples() -> None:
    for command in COMMANDS:
        assert _examples(command), command


def test_help_shows_no_bool_metavar() -> None:
    import typer

    registered = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert set(COMMANDS) <= set(registered)
    for args in [[], *([c] for c in registered)]:
        text = _help(*args)
        assert "<bool>" not in text and "BOOLEAN" not in text, text


def test_value_options_keep_their_metavars() -> None:
    assert "KEY=VALUE" in _help("train") and "HxW" in _help("train")
    assert "HxW" in _help("eval") and "CKPT" in _help("eval")


def test_completion_is_offered() -> None:
    assert "--install-completion" in _help()


def test_python_dash_m_proca_version() -> None:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "proca", "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"proca {__version__}"


# ------------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out the way the examples expect."""
    import torch
    from PIL import Image

    from proca.data.synthetic import write_synthetic_datasets
    from proca.models import build_model, save_model
    from proca.models.legacy import proca_to_release_state_dict

    root = tmp_path_factory.mktemp("examples")
    write_synthetic_datasets(root / "datasets", seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    from tests.data._benchmarks import write_all

    write_all(root / "datasets")  # acdc/, dark_zurich/, bdd100k/, mapillary/
    meta = {"class_set": "cityscapes19", "eval_input_size": [32, 64]}
    model = build_model("deeplabv2_resnet18")
    names = ["CKPT", "ssl.safetensors", *(f"runs/x/{stage}.safetensors" for stage in ("ssl", "proca", "source"))]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        save_model(model, root / name, metadata=meta)
    for name, classes in (("model_proca_ssl.pth", 19), ("syn.pth", 16)):
        parts = proca_to_release_state_dict(build_model("deeplabv2_resnet18", num_classes=classes).state_dict())
        torch.save({"iteration": 20000, **parts}, root / name)
    (root / "photos").mkdir()
    image = sorted((root / "datasets/cityscapes/leftImg8bit/val").glob("*/*.png"))[0]
    Image.open(image).convert("RGB").save(root / "photos" / "street.jpg")
    (root / "my_footage" / "day1").mkdir(parents=True)  # unlabelled footage of one's own, as a target
    Image.open(image).convert("RGB").save(root / "my_footage" / "day1" / "frame_0001.jpg")
    for sub in ("images", "labels"):  # labelled data of one's own, described by a dataset card
        (root / "my_data" / sub).mkdir(parents=True)
    Image.open(image).convert("RGB").save(root / "my_data" / "images" / "street.png")
    Image.new("L", Image.open(image).size, 0).save(root / "my_data" / "labels" / "street.png")
    (root / "my_labels.yaml").write_text(
        "images: my_data/images/*.png\nlabels: my_data/labels/{name}.png\nlabel_format: trainid\n"
    )
    return root


def _tiny(command: str, args: list[str]) -> list[str]:
    if command == "synth":
        return [*args, "--train", "2", "--val", "1", "--size", "32x64"]
    if command == "label-info":
        return [*args, "--workers", "1"]
    if command == "train":
        if "--stage" not in args:
            return [*args, "--print-config"]
        tiny = ["--iters", "1", "--input-size", "32x64", "--arch", "deeplabv2_resnet18", "--device", "cpu"]
        return [*args, *tiny, "--set", "num_workers=0", "--set", "eval.max_images=1"]
    if command in ("eval", "infer", "pseudo-label", "adapt-bn"):
        size = [] if "--input-size" in args else ["--input-size", "32x64"]
        return [*args, "--device", "cpu", *size]
    if command == "export" and "--input-size" in args:
        args = list(args)
        args[args.index("--input-size") + 1] = "32x64"
    return args


@pytest.mark.slow
@pytest.mark.parametrize(("command", "example"), EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_example_runs(command: str, example: str, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.reliability.conftest import invoke, output_of

    monkeypatch.chdir(workdir)
    calls: list[dict[str, Any]] = []
    if command == "demo":  # the demo itself takes minutes (tests/engine/test_demo.py runs it)
        import proca.engine.demo

        monkeypatch.setattr(proca.engine.demo, "run_demo", lambda **kw: calls.append(kw))
    args = shlex.split(example)[1:]
    for flag in ("--out", "--save-predictions", "--json"):  # each example writes somewhere new
        if flag in args and command not in ("train",):
            i = args.index(flag) + 1
            args[i] = str(Path("out") / example.replace(" ", "_").replace("/", "_")[:60] / args[i])
    if command in ("convert", "export"):
        args[2] = str(Path("out") / args[2])
        Path("out").mkdir(exist_ok=True)
    if command == "train" and "--stage" in args:
        args[args.index("--out") + 1] = "runs/smoke-test"
    result = invoke(_tiny(command, args))
    text = output_of(result)
    assert result.exit_code == 0, f"{example}\n{text}\n{result.exception!r}"
    if command == "demo":
        assert len(calls) == 1
    if command == "train" and "--stage" in args:  # no --backbone-weights: proca's warning, as one line
        lines = [line for line in text.splitlines() if "no --backbone-weights" in line]
        assert len(lines) == 1 and lines[0].startswith("warning:"), text
        assert "setup.py" not in text and "UserWarning" not in text, text
