"""ImageNet initialisation from torchvision weight files: paths, the hub cache, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from proca.errors import CheckpointError
from proca.models import deeplabv2_resnet18, deeplabv2_resnet50, deeplabv2_vgg16
from proca.models.backbones import IMAGENET_FILES, find_imagenet_weights, load_imagenet_weights, vgg16_backbone


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init torchvision ResNet-18 saved like torchvision's resnet18 ImageNet file."""
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), path)
    return path


def test_backbone_weights_from_a_path(resnet18_file: Path) -> None:
    reference = torch.load(resnet18_file, weights_only=True)
    torch.manual_seed(0)
    model = deeplabv2_resnet18(num_classes=19, backbone_weights=resnet18_file)
    state = model.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        torch.testing.assert_close(state[f"backbone.{key}"], reference[key], rtol=0, atol=0)
    assert not any(k.startswith("backbone.fc") for k in state)
    assert abs(state["classifier.conv2d_list.0.weight"].std().item() - 0.01) < 1e-3  # head untouched


def test_frozen_norm_takes_the_weights_too(resnet18_file: Path) -> None:
    reference = torch.load(resnet18_file, weights_only=True)
    model = deeplabv2_resnet18(backbone_weights=str(resnet18_file), norm="frozen")
    torch.testing.assert_close(model.backbone.bn1.running_var, reference["bn1.running_var"], rtol=0, atol=0)
    assert not any(k.endswith("num_batches_tracked") for k in model.state_dict())


def test_imagenet_from_the_hub_cache(resnet18_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    with pytest.raises(CheckpointError) as err:
        find_imagenet_weights("resnet18", "imagenet")
    message = str(err.value)
    assert str(cache) in message
    assert "resnet18-5c106cde.pth" in message and "resnet18-f37072fd.pth" in message
    assert "https://download.pytorch.org/models/resnet18-5c106cde.pth" in message
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(resnet18_file.read_bytes())
    assert find_imagenet_weights("resnet18", "imagenet") == cache / "resnet18-f37072fd.pth"
    model = deeplabv2_resnet18(backbone_weights="imagenet")
    reference = torch.load(resnet18_file, weights_only=True)
    torch.testing.assert_close(model.backbone.conv1.weight, reference["conv1.weight"], rtol=0, atol=0)


def test_missing_weight_file_names_it_and_the_url(tmp_path: Path) -> None:
    missing = tmp_path / "resnet101-5d3b4d8f.pth"
    with pytest.raises(CheckpointError) as err:
        find_imagenet_weights("resnet101", missing)
    message = str(err.value)
    assert str(missing) in message
    assert "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth" in message
    assert "never downloads" in message


def test_weights_for_another_backbone_are_refused(resnet18_file: Path) -> None:
    with torch.device("meta"):
        model = deeplabv2_resnet50()
    with pytest.raises(CheckpointError, match="do not fit resnet50"):
        load_imagenet_weights(model.backbone, "resnet50", resnet18_file)


def test_garbage_weight_file(tmp_path: Path) -> None:
    bad = tmp_path / "resnet18-5c106cde.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        deeplabv2_resnet18(backbone_weights=bad)


def test_vgg16_weights_skip_pool4_and_keep_fc6_fc7(tmp_path: Path) -> None:
    """A torchvision-layout VGG-16 file (features.N with pool4 at 23, classifier.*) built from our shapes."""
    with torch.device("meta"):
        ours = vgg16_backbone().state_dict()
    g = torch.Generator().manual_seed(0)
    file_state = {}
    for key, value in ours.items():
        index, _, rest = key.partition(".")
        if int(index) >= 29:  # fc6/fc7 are not in torchvision's file
            continue
        tv_index = int(index) if int(index) < 23 else int(index) + 1
        file_state[f"features.{tv_index}.{rest}"] = torch.randn(value.shape, generator=g)
    file_state["classifier.0.weight"] = torch.zeros(4, 2)
    path = tmp_path / IMAGENET_FILES["vgg16"][0]
    torch.save(file_state, path)
    torch.manual_seed(0)
    model = deeplabv2_vgg16(backbone_weights=path)
    state = model.state_dict()
    torch.testing.assert_close(state["backbone.21.bias"], file_state["features.21.bias"], rtol=0, atol=0)
    torch.testing.assert_close(state["backbone.23.weight"], file_state["features.24.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["backbone.27.weight"], file_state["features.28.weight"], rtol=0, atol=0)
    assert state["backbone.29.weight"].shape == (1024, 512, 3, 3)
