"""Inputs: every image mode reaches the network as 8-bit RGB on one path, huge images are tiled or refused,
scales, sizes and checkpoint metadata are validated, outputs are never read back as inputs, and every
command refuses to overwrite without --force."""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import proca
from proca.data._decode import image_to_rgb8, read_rgb
from proca.engine.predict import predict_ids, predict_probs, tiled_logits
from proca.errors import CheckpointError, ConfigError, DataError
from tests.data._pngwriter import encode_png, write_png
from tests.reliability.conftest import assert_user_error, invoke

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

RNG = np.random.default_rng(7)
PHOTO = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def _modes(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Files of every mode and bit depth with the 8-bit RGB each must decode to."""
    gray = np.asarray(Image.fromarray(PHOTO).convert("L"))
    gray3 = np.repeat(gray[..., None], 3, axis=-1)
    pal = Image.fromarray(PHOTO).convert("P")
    files = {
        "rgb": (folder / "rgb.png", PHOTO),
        "rgba": (folder / "rgba.png", PHOTO),
        "gray": (folder / "gray.png", gray3),
        "palette": (folder / "palette.png", np.asarray(pal.convert("RGB"))),
        "webp": (folder / "lossless.webp", PHOTO),
        "rgb16": (folder / "rgb16.png", PHOTO),
        "gray16": (folder / "gray16.png", gray3),
    }
    Image.fromarray(PHOTO).save(files["rgb"][0])
    Image.fromarray(PHOTO).convert("RGBA").save(files["rgba"][0])
    Image.fromarray(gray).save(files["gray"][0])
    pal.save(files["palette"][0])
    Image.fromarray(PHOTO).save(files["webp"][0], lossless=True)
    # 16-bit files written by an encoder that shares no code with Pillow or torchvision: v * 257 -> v
    write_png(files["rgb16"][0], PHOTO.astype(np.uint16) * 257, mode="rgb", bit_depth=16)
    write_png(files["gray16"][0], gray.astype(np.uint16) * 257, mode="gray", bit_depth=16)
    return files


def test_every_mode_and_bit_depth_decodes_to_the_same_8bit_rgb(tmp_path: Path) -> None:
    for name, (path, want) in _modes(tmp_path).items():
        got = read_rgb(path)
        assert got.dtype == torch.uint8 and got.shape == (3, 24, 40), name
        assert np.array_equal(got.permute(1, 2, 0).numpy(), want), name
    # CMYK JPEG: lossy, but RGB of the right size and close to the photo
    Image.fromarray(PHOTO).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = read_rgb(tmp_path / "cmyk.jpg").permute(1, 2, 0).numpy().astype(int)
    assert cmyk.shape == (24, 40, 3) and np.abs(cmyk - PHOTO.astype(int)).mean() < 20


def test_in_memory_images_take_the_same_path(tmp_path: Path) -> None:
    gray16 = np.asarray(Image.fromarray(PHOTO).convert("L")).astype(np.uint16) * 257
    want = image_to_rgb8(write_png(tmp_path / "g16.png", gray16, mode="gray", bit_depth=16))
    pil16 = Image.fromarray(gray16)  # mode I;16 (Pillow's own convert("RGB") would clip it to 255)
    assert pil16.mode.startswith("I;16")
    assert torch.equal(image_to_rgb8(pil16), want)
    assert torch.equal(image_to_rgb8(gray16), want)
    assert torch.equal(image_to_rgb8(PHOTO.astype(np.uint16) * 257), image_to_rgb8(PHOTO))
    with pytest.raises(DataError, match=r"\(H, W, 3\) RGB"):
        image_to_rgb8(PHOTO.astype(np.float32))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(PHOTO).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    assert tuple(read_rgb(tmp_path / "rotated.jpg").shape) == (3, 40, 24)
    with Image.open(tmp_path / "rotated.jpg") as im:
        assert tuple(image_to_rgb8(im).shape) == (3, 40, 24)


def test_16bit_photos_predict_like_their_8bit_twin_in_infer_and_predict(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    write_png(photos / "a8.png", PHOTO, mode="rgb")
    write_png(photos / "a16.png", PHOTO.astype(np.uint16) * 257, mode="rgb", bit_depth=16)
    result = invoke(["infer", checkpoints["c19"], photos, "--out", tmp_path / "out", "--format", "trainid"])
    assert result.exit_code == 0, result.output
    a8 = np.asarray(Image.open(tmp_path / "out" / "a8.png"))
    a16 = np.asarray(Image.open(tmp_path / "out" / "a16.png"))
    assert np.array_equal(a8, a16)
    assert np.array_equal(proca.predict(checkpoints["c19"], photos / "a16.png"), a8)
    assert np.array_equal(proca.predict(checkpoints["c19"], PHOTO.astype(np.uint16) * 257), a8)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode_png(np.zeros((1, 1, 3), np.uint8), mode="rgb"))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return bytes(data)


def test_huge_and_bomb_images_are_refused_with_the_limit_named(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    (tmp_path / "big.png").write_bytes(_png_claiming(12000, 12000))  # over proca's 100 MP, under Pillow's bomb
    (tmp_path / "bomb.png").write_bytes(_png_claiming(60000, 60000))  # over Pillow's bomb limit
    for name in ("big.png", "bomb.png"):
        with pytest.raises(DataError, match="over proca's limit of 100,000,000 pixels"):
            read_rgb(tmp_path / name)
    result = invoke(["infer", checkpoints["c19"], tmp_path / "bomb.png", "--out", tmp_path / "out"])
    assert_user_error(result, "bomb.png", "100,000,000 pixels")
    assert not (tmp_path / "out").exists()


class _Local(nn.Module):
    """Logits from 8x8 patches only: tiling at multiples of 8 must give exactly the full-image logits."""

    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_tiles_and_bands_match_the_whole_image_computation() -> None:
    model = _Local().eval()
    x = torch.randn(1, 3, 200, 328)
    with torch.no_grad():
        assert torch.allclose(tiled_logits(model, x, pixel_limit=1000, tile=(96, 128)), model(x), atol=1e-5)
    images = torch.randn(2, 3, 48, 80)
    for flip in (False, True):
        full = predict_probs(model, images, out_size=(301, 413), scales=(0.5, 1.0), flip=flip).argmax(1).byte()
        banded = predict_ids(model, images, out_size=(301, 413), scales=(0.5, 1.0), flip=flip, probs_pixel_limit=1)
        assert torch.equal(full, banded)


@pytest.mark.parametrize("bad", ["nan", "inf", "1e-9", "-1", "5", "0.5,nan"])
def test_bad_scales_are_refused_naming_the_option(bad: str, checkpoints: dict[str, Path], data_root: Path) -> None:
    result = invoke(["eval", checkpoints["c19"], "--data-root", data_root, "--scales", bad, "--device", "cpu"])
    assert_user_error(result, "--scales", "[0.1, 4]")


@pytest.mark.parametrize("bad", ["0x0", "100000x200000", "8x8", "32x-64"])
def test_bad_sizes_are_refused_naming_the_option(bad: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    photo = write_png(tmp_path / "p.png", PHOTO, mode="rgb")
    result = invoke(["infer", checkpoints["c19"], photo, "--out", tmp_path / "o", "--input-size", bad])
    assert_user_error(result, "--input-size", "16..8192")
    assert_user_error(invoke(["synth", "--out", tmp_path / "s", "--size", bad]), "--size", "16..8192")


def test_python_and_config_values_are_validated(checkpoints: dict[str, Path]) -> None:
    for scales in [(float("nan"),), (1e-9,), ()]:
        with pytest.raises(ConfigError, match=r"scales.*\[0.1, 4\]"):
            proca.predict(checkpoints["c19"], PHOTO, scales=scales)
    with pytest.raises(ConfigError, match="input_size 0x0"):
        proca.predict(checkpoints["c19"], PHOTO, input_size=(0, 0))
    with pytest.raises(ConfigError, match=r"sides must stay within 1\.\.8192"):
        predict_probs(_Local(), torch.zeros(1, 3, 2100, 16), out_size=(8, 8), scales=(4.0,))
    from proca.config import resolve_config

    for override in ("eval.scales=[0.0]", "eval.input_size=[0,0]", "ssl.scale=[0.5,100]"):
        with pytest.raises(ConfigError):
            resolve_config(overrides=[override])


def _checkpoint_with(path: Path, **meta: object) -> Path:
    from proca.models import build_model, save_model

    save_model(build_model("deeplabv2_resnet18", num_classes=19), path, metadata=dict(meta))
    return path


@pytest.mark.parametrize("size", [[0, 0], [100000, 200000]])
def test_absurd_eval_input_size_metadata_names_the_key_and_the_fix(
    size: list[int], tmp_path: Path, data_root: Path
) -> None:
    ckpt = _checkpoint_with(tmp_path / "odd.safetensors", eval_input_size=size)
    result = invoke(["eval", ckpt, "--data-root", data_root, "--device", "cpu"])
    assert_user_error(result, "eval_input_size", "--input-size")
    photo = write_png(tmp_path / "p.png", PHOTO, mode="rgb")
    with pytest.raises(CheckpointError, match="eval_input_size"):
        proca.predict(ckpt, photo)
    # the fix named in the message works
    ok = invoke(["eval", ckpt, "--data-root", data_root, "--device", "cpu", "--input-size", "32x64"])
    assert ok.exit_code == 0, ok.output


def test_damaged_metadata_is_refused_on_load(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from proca.models import load_model

    good = _checkpoint_with(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as handle:
        header = dict(handle.metadata())
    key = next(k for k in header if k != "__metadata__")
    meta = json.loads(header[key])
    cases = {
        "num_classes": {**meta, "num_classes": 10**9},
        "class_names": {**meta, "class_names": ["sky", *meta["class_names"][1:]]},
        "eval_input_size": {**meta, "eval_input_size": "big"},
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={**header, key: json.dumps(bad)})
        with pytest.raises(CheckpointError, match=name):
            load_model(path)


def test_infer_never_reads_its_own_outputs_back(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    photos = tmp_path / "in"
    for k in range(2):
        write_png(photos / f"p{k}.png", PHOTO, mode="rgb")
    for _ in range(2):
        result = invoke(["infer", checkpoints["c19"], photos, "--out", photos / "preds", "--force"])
        assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png"))
    assert written == ["p0.png", "p1.png", "preds/p0.png", "preds/p1.png"]


def test_every_writing_command_refuses_to_overwrite_without_force(
    checkpoints: dict[str, Path], data_root: Path, tmp_path: Path
) -> None:
    photo = write_png(tmp_path / "p.png", PHOTO, mode="rgb")
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    ev = ["eval", checkpoints["c19"], "--data-root", data_root, "--device", "cpu", "--json", taken]
    assert_user_error(invoke(ev), "--json", "exists", "--force")
    assert taken.read_text() == "{}"
    assert invoke([*ev, "--force"]).exit_code == 0 and json.loads(taken.read_text())["miou"] is not None
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "iou.png").write_bytes(b"mine")
    report = ["eval", checkpoints["c19"], "--data-root", data_root, "--device", "cpu", "--report", tmp_path / "report"]
    assert_user_error(invoke(report), "--report", "iou.png", "--force")
    assert (tmp_path / "report" / "iou.png").read_bytes() == b"mine"
    assert_user_error(invoke(["demo", "--out", tmp_path / "demo", "--json", taken]), "--json", "exists", "--force")
    assert not (tmp_path / "demo").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p.png").write_bytes(b"mine")
    inf = ["infer", checkpoints["c19"], photo, "--out", tmp_path / "out"]
    assert_user_error(invoke(inf), "p.png", "exists", "--force")
    assert (tmp_path / "out" / "p.png").read_bytes() == b"mine"
    assert invoke([*inf, "--force"]).exit_code == 0
    info = tmp_path / "info.json"
    info.write_text("{}")
    li = ["label-info", "gtav", "--root", data_root / "gtav", "--out", info, "--workers", "1"]
    assert_user_error(invoke(li), "--out", "exists", "--force")
    assert info.read_text() == "{}"
    assert invoke([*li, "--force"]).exit_code == 0 and info.read_text() != "{}"
    dst = tmp_path / "dst.safetensors"
    dst.write_bytes(b"keep")
    assert_user_error(invoke(["convert", checkpoints["c19"], dst]), "already a proca .safetensors checkpoint")
    release = tmp_path / "release.pth"
    _release_file(release)
    assert_user_error(invoke(["convert", release, dst]), "exists", "--force")
    assert dst.read_bytes() == b"keep"
    assert invoke(["convert", release, dst, "--force"]).exit_code == 0
    assert dst.read_bytes() != b"keep"


def _release_file(path: Path) -> None:
    from proca.models import build_model
    from proca.models.legacy import proca_to_release_state_dict

    parts = proca_to_release_state_dict(build_model("deeplabv2_resnet18", num_classes=19).state_dict())
    torch.save({"feature_extractor": parts["feature_extractor"], "classifier": parts["classifier"]}, path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("ran",))


def test_refused_pickles_give_our_message_not_torchs_advice(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"x": _Evil()}, protocol=4))
    zipped = tmp_path / "zipped.pth"
    torch.save({"x": _Evil()}, zipped)
    for path in (plain, zipped):
        text = assert_user_error(invoke(["convert", path, tmp_path / "o.safetensors"]), "refused")
        assert "weights_only" not in text and "ran" not in text.split()
    imagenet = tmp_path / "resnet.pth"
    torch.save({"x": np.zeros(3)}, imagenet)
    from proca.models.backbones import _read_torchvision_state_dict

    with pytest.raises(CheckpointError) as err:
        _read_torchvision_state_dict(imagenet)
    assert "weights_only=False" not in str(err.value) and "refused" in str(err.value)
