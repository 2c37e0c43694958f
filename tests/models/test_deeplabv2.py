"""DeepLabV2 and the builders: parameter counts, key names, shapes, head init, parameter groups."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from proca.errors import ConfigError
from proca.models import (
    MODEL_BUILDERS,
    DeepLabV2,
    build_model,
    count_parameters,
    deeplabv2_resnet18,
    deeplabv2_resnet101,
)


def _meta(arch: str, **kwargs: object) -> DeepLabV2:
    with torch.device("meta"):
        return build_model(arch, **kwargs)  # type: ignore[arg-type]


def test_resnet101_has_the_release_parameter_count() -> None:
    with torch.device("meta"):
        model = deeplabv2_resnet101(num_classes=19)
        reference = torchvision.models.resnet101()
    assert count_parameters(model) == 43_901_068
    # The same number from torchvision's ResNet-101 without fc plus four 3x3 2048->19 convs with bias.
    backbone = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert backbone + 4 * (2048 * 19 * 9 + 19) == 43_901_068


@pytest.mark.parametrize(
    ("arch", "params", "feature_dim"),
    [
        ("deeplabv2_resnet50", 24_908_940, 2048),
        ("deeplabv2_resnet18", 11_526_796, 512),
        ("deeplabv2_vgg16", 29_573_004, 1024),
    ],
)
def test_other_architectures(arch: str, params: int, feature_dim: int) -> None:
    model = _meta(arch)
    assert count_parameters(model) == params
    assert model.feature_dim == feature_dim
    assert model.arch == arch
    assert model.num_classes == 19


def test_state_dict_keys_follow_the_release() -> None:
    keys = set(_meta("deeplabv2_resnet101").state_dict())
    assert {"backbone.conv1.weight", "backbone.layer4.2.bn3.running_var", "backbone.layer3.22.conv2.weight"} <= keys
    assert {f"classifier.conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias")} <= keys
    assert not any(k.startswith(("backbone.fc", "backbone.avgpool")) for k in keys)
    vgg = set(_meta("deeplabv2_vgg16").state_dict())
    assert {"backbone.0.weight", "backbone.27.weight", "backbone.29.weight", "backbone.31.bias"} <= vgg
    assert "backbone.30.weight" not in vgg


def test_resnet101_dilation_like_torchvision() -> None:
    model = _meta("deeplabv2_resnet101")
    backbone = model.backbone
    assert backbone.layer3[0].conv2.stride == (1, 1) and backbone.layer3[0].conv2.dilation == (1, 1)
    assert backbone.layer3[1].conv2.dilation == (2, 2)
    assert backbone.layer4[0].conv2.dilation == (2, 2)
    assert backbone.layer4[2].conv2.dilation == (4, 4)


def test_resnet18_last_stages_are_dilated() -> None:
    backbone = _meta("deeplabv2_resnet18").backbone
    for stage, dilation in ((backbone.layer3, 2), (backbone.layer4, 4)):
        for block in stage:
            for conv in (block.conv1, block.conv2):
                assert conv.stride == (1, 1)
                assert conv.dilation == conv.padding == (dilation, dilation)
        assert stage[0].downsample[0].stride == (1, 1)


def test_vgg16_layout() -> None:
    body = list(_meta("deeplabv2_vgg16").backbone.children())
    assert len(body) == 33
    assert sum(isinstance(m, nn.MaxPool2d) for m in body) == 3  # pool4 and pool5 removed
    for i in (23, 25, 27):
        assert body[i].dilation == body[i].padding == (2, 2)
    for i, cin in ((29, 512), (31, 1024)):
        assert (body[i].in_channels, body[i].out_channels, body[i].kernel_size) == (cin, 1024, (3, 3))
        assert body[i].dilation == body[i].padding == (4, 4)


@pytest.mark.parametrize("arch", ["deeplabv2_resnet18", "deeplabv2_vgg16"])
def test_forward_shapes_and_one_pass_features(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        features, logits = model.forward_features(x)
        again = model(x)
    assert features.shape == (2, model.feature_dim, 8, 6)
    assert logits.shape == (2, 7, 8, 6)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_head_init_and_dilations() -> None:
    torch.manual_seed(0)
    head = deeplabv2_resnet18(num_classes=19).classifier
    assert [c.dilation for c in head.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert [c.padding for c in head.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    for conv in head.conv2d_list:
        assert conv.bias is not None
        assert abs(conv.weight.std().item() - 0.01) < 5e-4
        assert abs(conv.weight.mean().item()) < 5e-4


def test_head_sums_the_four_branches() -> None:
    head = deeplabv2_resnet18(num_classes=3).classifier
    x = torch.randn(1, 512, 5, 5)
    expected = sum(conv(x) for conv in head.conv2d_list)
    torch.testing.assert_close(head(x), expected)


def test_param_groups() -> None:
    model = deeplabv2_resnet18(num_classes=5)
    groups = model.param_groups(1e-3)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 1e-3 and groups[1]["lr"] == pytest.approx(1e-2)
    assert all(g["weight_decay"] == 5e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    torch.optim.SGD(model.param_groups(2.5e-4, head_lr_mult=1.0, weight_decay=0.0), lr=2.5e-4, momentum=0.9)


def test_frozen_norm() -> None:
    model = _meta("deeplabv2_resnet101", norm="frozen")
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 104 and all(m.eps == 0.0 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    keys = set(model.state_dict())
    batch_keys = {k for k in _meta("deeplabv2_resnet101").state_dict() if not k.endswith("num_batches_tracked")}
    assert keys == batch_keys
    assert model.norm == "frozen"


def test_builder_errors() -> None:
    with pytest.raises(
        ConfigError, match="deeplabv2_resnet101, deeplabv2_resnet50, deeplabv2_resnet18, deeplabv2_vgg16"
    ):
        build_model("deeplabv3_resnet101")
    with pytest.raises(ConfigError, match="batch, frozen"):
        build_model("deeplabv2_resnet18", norm="sync")
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("deeplabv2_resnet18", num_classes=0)
    with pytest.raises(TypeError):
        deeplabv2_resnet18(19)  # type: ignore[misc]  # keyword-only
    assert list(MODEL_BUILDERS)[:4] == [
        "deeplabv2_resnet101",
        "deeplabv2_resnet50",
        "deeplabv2_resnet18",
        "deeplabv2_vgg16",
    ]
    assert list(MODEL_BUILDERS)[4:] == [f"{h}_mit_b{i}" for h in ("daformer", "segformer") for i in range(6)]


def test_import_stays_on_the_library_floor() -> None:
    code = (
        "import sys, proca.models, proca.models.legacy; "
        "bad = [m for m in sys.modules if m.startswith(('proca.data', 'proca.engine', 'proca.losses', "
        "'proca.prototypes', 'proca.cli', 'proca.config'))]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
