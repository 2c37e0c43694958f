"""eval / infer warn (one line) when the checkpoint's evaluation size is far from the images' size."""

from __future__ import annotations

from pathlib import Path

import pytest

from proca.engine.predict import check_eval_size

SIZE = (32, 64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from proca.data.synthetic import write_synthetic_datasets
    from proca.models import build_model, save_model

    root = tmp_path_factory.mktemp("evalsize")
    write_synthetic_datasets(root / "data", seed=0, num_train=2, num_val=1, size=SIZE, progress=False)
    model = build_model("deeplabv2_resnet18")
    paths = {"data": root / "data"}
    for name, size in (("small", [96, 192]), ("match", list(SIZE))):
        paths[name] = root / f"{name}.safetensors"
        save_model(model, paths[name], metadata={"class_set": "cityscapes19", "eval_input_size": size})
    return paths


def _run(args: list[str | Path]) -> str:
    from tests.reliability.conftest import invoke, output_of

    result = invoke([*args, "--device", "cpu"])
    assert result.exit_code == 0, output_of(result)
    return output_of(result)


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_far_eval_size_warns_once(command: str, setup: dict[str, Path], tmp_path: Path) -> None:
    image = sorted((setup["data"] / "cityscapes/leftImg8bit/val").glob("*/*.png"))[0]
    if command == "eval":
        base: list[str | Path] = ["eval", setup["small"], "--data-root", setup["data"]]
    else:
        base = ["infer", setup["small"], image, "--out", tmp_path / "pred", "--force"]
    lines = _warnings(_run(base))
    assert len(lines) == 1, lines
    assert "96x192" in lines[0] and "32x64" in lines[0] and "--input-size" in lines[0]
    assert _warnings(_run([*base, "--input-size", "32x64"])) == []  # the user chose the size
    matching = [base[0], setup["match"], *base[2:]]
    assert _warnings(_run(matching)) == []


def test_check_eval_size_thresholds(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (2048, 1024)).save(path)
    assert check_eval_size("m.safetensors", (96, 192), path)
    assert not check_eval_size("m.safetensors", (512, 1024), path)  # ratio 2: not "far"
    assert check_eval_size("m.safetensors", (1024, 4096 + 8), path)  # too wide for the image: < 0.5
    assert not check_eval_size("m.safetensors", (96, 192), None)
    assert not check_eval_size("m.safetensors", (96, 192), tmp_path / "missing.png")
