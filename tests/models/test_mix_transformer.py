"""The Mix Transformer encoder: NVlabs' key layout, official parameter counts, shapes, ImageNet files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from proca.errors import CheckpointError, ConfigError
from proca.models.backbones import IMAGENET_FILES
from proca.models.deeplabv2 import count_parameters
from proca.models.mix_transformer import MIT_VARIANTS, DropPath, load_mit_weights, mix_transformer

# Encoder parameters per variant, equal to NVlabs' mix_transformer.py (checked offline against it:
# same 176 ... 1052 keys in the same order and shapes; the paper rounds them to 3.4M ... 81.4M).
ENCODER_PARAMETERS = {
    "mit_b0": 3_319_392,
    "mit_b1": 13_151_424,
    "mit_b2": 24_196_288,
    "mit_b3": 44_072_128,
    "mit_b4": 60_842_688,
    "mit_b5": 81_443_008,
}
ENCODER_KEYS = {"mit_b0": 176, "mit_b1": 176, "mit_b2": 332, "mit_b3": 572, "mit_b4": 832, "mit_b5": 1052}


@pytest.fixture(scope="module")
def b0() -> torch.nn.Module:
    torch.manual_seed(0)
    return mix_transformer("mit_b0").eval()


@pytest.mark.parametrize("variant", list(MIT_VARIANTS))
def test_parameter_counts(variant: str) -> None:
    with torch.device("meta"):
        encoder = mix_transformer(variant)
    assert count_parameters(encoder) == ENCODER_PARAMETERS[variant]
    assert len(encoder.state_dict()) == ENCODER_KEYS[variant]
    assert not list(encoder.buffers())


def test_official_key_names(b0: torch.nn.Module) -> None:
    keys = list(b0.state_dict())
    assert keys[:6] == [
        "patch_embed1.proj.weight",
        "patch_embed1.proj.bias",
        "patch_embed1.norm.weight",
        "patch_embed1.norm.bias",
        "patch_embed2.proj.weight",
        "patch_embed2.proj.bias",
    ]
    for key in (
        "block1.0.norm1.weight",
        "block1.0.attn.q.weight",
        "block1.0.attn.q.bias",
        "block1.0.attn.kv.weight",
        "block1.0.attn.proj.weight",
        "block1.0.attn.sr.weight",
        "block1.0.attn.norm.bias",
        "block1.1.mlp.fc1.weight",
        "block1.1.mlp.dwconv.dwconv.weight",
        "block1.1.mlp.fc2.bias",
        "block1.1.norm2.weight",
        "norm1.weight",
        "norm4.bias",
    ):
        assert key in keys, key
    assert "block4.0.attn.sr.weight" not in keys  # sr_ratio 1 in the last stage: no reduction
    assert tuple(b0.state_dict()["patch_embed1.proj.weight"].shape) == (32, 3, 7, 7)
    assert tuple(b0.state_dict()["patch_embed2.proj.weight"].shape) == (64, 32, 3, 3)
    assert tuple(b0.state_dict()["block1.0.attn.sr.weight"].shape) == (32, 32, 8, 8)
    assert tuple(b0.state_dict()["block3.0.attn.sr.weight"].shape) == (160, 160, 2, 2)
    assert tuple(b0.state_dict()["block1.0.mlp.dwconv.dwconv.weight"].shape) == (128, 1, 3, 3)


def test_stage_maps(b0: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = b0(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]
    assert all(o.is_contiguous() and torch.isfinite(o).all() for o in outs)


def test_stochastic_depth_rule() -> None:
    with torch.device("meta"):
        encoder = mix_transformer("mit_b2")
    rates = [getattr(b.drop_path, "p", 0.0) for i in range(1, 5) for b in getattr(encoder, f"block{i}")]
    assert len(rates) == 16 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    assert rates == pytest.approx([0.1 * i / 15 for i in range(16)])
    drop = DropPath(0.5).train()
    out = drop(torch.ones(64, 3, 2))
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(DropPath(0.5).eval()(torch.ones(4, 3)), torch.ones(4, 3))


def test_unknown_variant() -> None:
    with pytest.raises(ConfigError, match="mit_b0, mit_b1"):
        mix_transformer("mit_b9")


def _official_file(encoder: torch.nn.Module, path: Path, *, wrap: bool = False) -> dict[str, torch.Tensor]:
    """An NVlabs-layout file: the encoder's keys plus the classification head."""
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=g) for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.randn(1000, 256, generator=g)
    state["head.bias"] = torch.randn(1000, generator=g)
    torch.save({"state_dict": state} if wrap else state, path)
    return state


@pytest.mark.parametrize("wrap", [False, True])
def test_load_official_layout(tmp_path: Path, wrap: bool) -> None:
    path = tmp_path / "mit_b0.pth"
    state = _official_file(mix_transformer("mit_b0"), path, wrap=wrap)
    encoder = mix_transformer("mit_b0")
    assert load_mit_weights(encoder, "mit_b0", path) == path
    loaded = encoder.state_dict()
    assert set(loaded) == set(state) - {"head.weight", "head.bias"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_imagenet_from_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert IMAGENET_FILES["mit_b5"] == ("mit_b5.pth",)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    state = _official_file(mix_transformer("mit_b0"), tmp_path / "checkpoints" / "mit_b0.pth")
    encoder = mix_transformer("mit_b0")
    load_mit_weights(encoder, "mit_b0", "imagenet")
    torch.testing.assert_close(encoder.state_dict()["norm4.weight"], state["norm4.weight"], rtol=0, atol=0)


def test_wrong_files(tmp_path: Path) -> None:
    encoder = mix_transformer("mit_b0")
    path = tmp_path / "mit_b0.pth"
    state = _official_file(encoder, path)

    missing = dict(state)
    del missing["block2.1.mlp.fc2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing block2\.1\.mlp\.fc2\.weight.*mit_b0\.pth"):
        load_mit_weights(encoder, "mit_b0", tmp_path / "missing.pth")

    wrong = dict(state)
    wrong["norm1.weight"] = torch.zeros(33)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=re.escape("norm1.weight (33,) in the file vs (32,) in mit_b0")):
        load_mit_weights(encoder, "mit_b0", tmp_path / "wrong.pth")

    extra = dict(state)
    extra["pos_embed1"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected pos_embed1"):
        load_mit_weights(encoder, "mit_b0", tmp_path / "extra.pth")

    with pytest.raises(CheckpointError, match="do not fit mit_b1"):  # a B0 file for B1
        load_mit_weights(mix_transformer("mit_b1"), "mit_b1", path)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_mit_weights(encoder, "mit_b0", tmp_path / "nope.pth")

    torch.save({"state_dict": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_mit_weights(encoder, "mit_b0", tmp_path / "list.pth")
    # Nothing was half-loaded by the failures above.
    assert not torch.equal(encoder.state_dict()["norm1.weight"], state["norm1.weight"])
