"""DAFormer and SegFormer networks: builders, shapes, parameter groups, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proca.errors import CheckpointError, ConfigError
from proca.models import (
    MODEL_BUILDERS,
    DeepLabV2,
    MiTSegmenter,
    build_model,
    count_parameters,
    daformer_mit_b0,
    load_model,
    save_model,
    segformer_mit_b0,
)
from proca.models.segformer import no_weight_decay_names

# Full models with 19 classes (encoder counts are in test_mix_transformer.py). DAFormer's paper gives
# 85.2M for MiT-B5; SegFormer's 3.7M (B0), 13.7M (B1) and 84.7M (B5) on Cityscapes.
MODEL_PARAMETERS = {
    "daformer_mit_b0": 6_900_595,
    "daformer_mit_b1": 16_863_699,
    "daformer_mit_b2": 27_908_563,
    "daformer_mit_b3": 47_784_403,
    "daformer_mit_b4": 64_554_963,
    "daformer_mit_b5": 85_155_283,
    "segformer_mit_b0": 3_719_027,
    "segformer_mit_b1": 13_682_131,
    "segformer_mit_b2": 27_361_235,
    "segformer_mit_b3": 47_237_075,
    "segformer_mit_b4": 64_007_635,
    "segformer_mit_b5": 84_607_955,
}
FEATURE_DIMS = {"daformer": 256, "segformer_mit_b0": 256, "segformer_mit_b1": 256, "segformer": 768}


def _feature_dim(name: str) -> int:
    return FEATURE_DIMS.get(name, FEATURE_DIMS[name.split("_")[0]])


@pytest.fixture(scope="module", params=["daformer_mit_b0", "segformer_mit_b0"])
def small(request: pytest.FixtureRequest) -> MiTSegmenter:
    torch.manual_seed(0)
    model = build_model(request.param, num_classes=7)
    assert isinstance(model, MiTSegmenter)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode comparisons mean something
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", list(MODEL_PARAMETERS))
def test_every_builder_by_name(name: str) -> None:
    assert name in MODEL_BUILDERS
    with torch.device("meta"):
        model = build_model(name)
    assert isinstance(model, MiTSegmenter)
    assert (model.arch, model.num_classes, model.norm) == (name, 19, "batch")
    assert model.feature_dim == _feature_dim(name)
    assert model.optimizer_family == "adamw"
    assert count_parameters(model) == MODEL_PARAMETERS[name]


def test_optimizer_family_of_deeplabv2() -> None:
    assert DeepLabV2.optimizer_family == "sgd"


def test_forward_shapes(small: MiTSegmenter) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stages = small.backbone(x)
        features, logits = small.forward_features(x)
        plain = small(x)
        extracted = small.extract_features(x)
    assert [tuple(s.shape) for s in stages] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 160, 4, 4), (2, 256, 2, 2)]
    assert tuple(features.shape) == (2, small.feature_dim, 16, 16)
    assert tuple(logits.shape) == (2, 7, 16, 16)
    torch.testing.assert_close(plain, logits, rtol=0, atol=0)
    torch.testing.assert_close(extracted, features, rtol=0, atol=0)


def test_odd_input_size(small: MiTSegmenter) -> None:
    with torch.no_grad():
        features, logits = small.forward_features(torch.randn(1, 3, 50, 70))
    assert tuple(logits.shape) == (1, 7, 13, 18) and features.shape[2:] == logits.shape[2:]


def test_trains_one_step() -> None:
    torch.manual_seed(0)
    model = daformer_mit_b0(num_classes=3).train()
    opt = torch.optim.AdamW(model.param_groups(6e-5), lr=6e-5)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 8, 8))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()


def test_param_groups_no_decay_rule(small: MiTSegmenter) -> None:
    groups = small.param_groups(1e-3, head_lr_mult=10.0, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    for g in groups:
        assert set(g) == {"params", "lr", "weight_decay", "name", "lr_mult"}
    assert by_name["backbone"]["lr"] == 1e-3 and by_name["backbone"]["lr_mult"] == 1.0
    assert by_name["head"]["lr"] == pytest.approx(1e-2) and by_name["head_no_decay"]["lr_mult"] == 10.0
    assert by_name["backbone"]["weight_decay"] == 0.01 and by_name["head"]["weight_decay"] == 0.01
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and by_name["head_no_decay"]["weight_decay"] == 0.0
    # Every parameter exactly once.
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(small.parameters()))
    names = {id(p): n for n, p in small.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert no_decay == no_weight_decay_names(small)
    for name in ("backbone.norm1.weight", "backbone.patch_embed1.norm.bias", "backbone.block1.0.norm2.weight",
                 "backbone.block1.0.attn.norm.weight"):  # fmt: skip
        assert name in no_decay
    assert any(n.startswith("decode_head.") and ".bn." in n for n in no_decay)  # head BatchNorms
    assert not any(n.endswith("conv.weight") or ".q." in n or "fc1" in n for n in no_decay)
    frozen = build_model("segformer_mit_b0", num_classes=2)
    frozen.backbone.patch_embed1.requires_grad_(False)
    kept = {id(p) for g in frozen.param_groups(1e-3) for p in g["params"]}
    assert id(frozen.backbone.patch_embed1.proj.weight) not in kept


@pytest.mark.parametrize("norm", ["frozen", "group"])
def test_norm_only_batch(norm: str) -> None:
    with pytest.raises(ConfigError, match="valid: batch"):
        daformer_mit_b0(norm=norm)
    with pytest.raises(ConfigError, match="num_classes"):
        segformer_mit_b0(num_classes=0)


def test_backbone_weights_through_builder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = daformer_mit_b0()
    state = {k: v.clone() + 1.0 for k, v in source.backbone.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save(state, tmp_path / "mit_b0.pth")
    for name in ("daformer_mit_b0", "segformer_mit_b0"):
        model = build_model(name, backbone_weights=tmp_path / "mit_b0.pth")
        for key, value in model.backbone.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="do not fit mit_b1"):
        build_model("daformer_mit_b1", backbone_weights=tmp_path / "mit_b0.pth")


def test_save_load_round_trip(tmp_path: Path, small: MiTSegmenter) -> None:
    path = tmp_path / f"{small.arch}.safetensors"
    protos = {"feature.prototypes": torch.randn(7, small.feature_dim), "feature.counts": torch.arange(7)}
    save_model(small, path, metadata={"stage": "source", "iteration": 3}, prototypes=protos)
    loaded = load_model(path)
    model = loaded.model
    assert isinstance(model, MiTSegmenter) and not model.training
    assert (model.arch, model.num_classes, model.norm, model.feature_dim) == (
        small.arch, 7, "batch", small.feature_dim,
    )  # fmt: skip
    assert loaded.metadata["arch"] == small.arch and loaded.metadata["iteration"] == 3
    torch.testing.assert_close(loaded.prototypes["feature.prototypes"], protos["feature.prototypes"])
    assert list(model.state_dict()) == list(small.state_dict())
    for key, value in small.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), rtol=0, atol=0)


def test_load_refuses_frozen_norm_metadata(tmp_path: Path, small: MiTSegmenter) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_model(small, path)
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["proca"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    meta["norm"] = "frozen"
    save_file(tensors, str(path), metadata={"proca": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="only batch"):
        load_model(path)


def test_state_dict_layout(small: MiTSegmenter) -> None:
    keys = list(small.state_dict())
    assert keys[0] == "backbone.patch_embed1.proj.weight"
    if small.arch.startswith("daformer"):
        for key in (
            "decode_head.embed_layers.0.proj.weight",
            "decode_head.embed_layers.3.proj.bias",
            "decode_head.fuse_layer.aspp_modules.0.conv.weight",
            "decode_head.fuse_layer.aspp_modules.0.bn.running_var",
            "decode_head.fuse_layer.aspp_modules.1.depthwise_conv.conv.weight",
            "decode_head.fuse_layer.aspp_modules.3.pointwise_conv.bn.weight",
            "decode_head.fuse_layer.bottleneck.conv.weight",
            "decode_head.conv_seg.weight",
        ):
            assert key in keys, key
        sd = small.state_dict()
        assert tuple(sd["decode_head.fuse_layer.aspp_modules.2.depthwise_conv.conv.weight"].shape) == (1024, 1, 3, 3)
        assert tuple(sd["decode_head.fuse_layer.bottleneck.conv.weight"].shape) == (256, 1024, 3, 3)
    else:
        for key in ("decode_head.linear_c1.proj.weight", "decode_head.linear_c4.proj.weight",
                    "decode_head.linear_fuse.conv.weight", "decode_head.linear_fuse.bn.bias",
                    "decode_head.linear_pred.weight"):  # fmt: skip
            assert key in keys, key
