"""Dilated backbones at output stride 8, laid out like the release's feature extractors.

Each backbone is a torchvision :class:`~torchvision.models._utils.IntermediateLayerGetter` (as in
the release), so the state-dict keys are the release's keys without any renaming:
``conv1.weight``, ``layer4.2.bn3.running_var`` (ResNets) or ``0.weight`` ... ``31.bias`` (VGG-16).
Calling a backbone returns a dict whose ``"out"`` entry is the feature map.

ImageNet weights come from torchvision's ``.pth`` files, given as a path or found in torch's hub
checkpoint cache. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

from proca.errors import CheckpointError, ConfigError
from proca.models._keys import mismatch_summary

__all__ = [
    "BACKBONE_FEATURE_DIMS",
    "IMAGENET_FILES",
    "NORMS",
    "Norm",
    "find_imagenet_weights",
    "load_imagenet_weights",
    "norm_layer",
    "resnet_backbone",
    "vgg16_backbone",
]

Norm = Literal["batch", "frozen"]
NORMS: tuple[str, ...] = ("batch", "frozen")

BACKBONE_FEATURE_DIMS: dict[str, int] = {"resnet101": 2048, "resnet50": 2048, "resnet18": 512, "vgg16": 1024}

# torchvision's ImageNet files per backbone: the release's file name first, then the current torchvision name
# (the same IMAGENET1K_V1 weights re-saved). Either one is accepted.
IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet101": ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth"),
    "resnet50": ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth"),
    "resnet18": ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
    "vgg16": ("vgg16-397923af.pth",),
    # NVlabs SegFormer's ImageNet-1K Mix Transformer encoders (their release, user supplied).
    "mit_b0": ("mit_b0.pth",),
    "mit_b1": ("mit_b1.pth",),
    "mit_b2": ("mit_b2.pth",),
    "mit_b3": ("mit_b3.pth",),
    "mit_b4": ("mit_b4.pth",),
    "mit_b5": ("mit_b5.pth",),
}
_DOWNLOAD_ROOT = "https://download.pytorch.org/models/"
_MIT_SOURCE = "NVlabs SegFormer's ImageNet-1K release (github.com/NVlabs/SegFormer, README 'Training')"


def _where_to_get(backbone: str) -> str:
    """Where the user can fetch ``backbone``'s ImageNet file (proca never downloads)."""
    if backbone.startswith("mit_"):
        return _MIT_SOURCE
    return _DOWNLOAD_ROOT + IMAGENET_FILES[backbone][0]


# VGG-16 ``features`` indices: pool4 (23) and pool5 (30) are removed, so conv5_x move down by one.
_VGG_POOL4 = 23
_VGG_CONV5 = (23, 25, 27)  # indices of conv5_1..conv5_3 after pool4 is removed
_VGG_FC6, _VGG_FC7 = 29, 31


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The normalisation layer constructor for ``norm``.

    ``"batch"`` is :class:`torch.nn.BatchNorm2d`; ``"frozen"`` is torchvision's
    :class:`~torchvision.ops.FrozenBatchNorm2d` with ``eps=0``, which computes exactly what the
    release's FADA/SDCA ``FrozenBatchNorm2d`` computes (``weight * running_var.rsqrt()``, no eps).
    """
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "frozen":
        return partial(FrozenBatchNorm2d, eps=0.0)
    raise ConfigError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def _dilate_basic_stage(stage: nn.Sequential, dilation: int) -> None:
    """Turn a strided BasicBlock stage into a stride-1 stage whose 3x3 convs all use ``dilation``."""
    for block in stage:
        assert isinstance(block, tv_resnet.BasicBlock)
        for conv in (block.conv1, block.conv2):
            conv.stride = (1, 1)
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def resnet_backbone(depth: int, *, norm: str = "batch") -> IntermediateLayerGetter:
    """A torchvision ResNet without avgpool/fc whose last two stages are dilated (output stride 8).

    ResNet-50/101 use torchvision's ``replace_stride_with_dilation=[False, True, True]`` exactly as
    the release does. torchvision's BasicBlock refuses dilation, so for ResNet-18 the strided convs of
    ``layer3`` and ``layer4`` are set to stride 1 and every 3x3 conv of those stages to dilation 2
    and 4 (padding equal to the dilation).

    Args:
        depth: 18, 50 or 101.
        norm: ``"batch"`` or ``"frozen"`` (see :func:`norm_layer`).

    Shape:
        Input (B, 3, H, W); output dict with ``"out"``: (B, A, ceil(H/8), ceil(W/8)), A = 2048 (512 for
        ResNet-18).
    """
    layer = norm_layer(norm)
    if depth == 101:
        net = tv_resnet.resnet101(weights=None, replace_stride_with_dilation=[False, True, True], norm_layer=layer)
    elif depth == 50:
        net = tv_resnet.resnet50(weights=None, replace_stride_with_dilation=[False, True, True], norm_layer=layer)
    elif depth == 18:
        net = tv_resnet.resnet18(weights=None, norm_layer=layer)
        _dilate_basic_stage(net.layer3, 2)
        _dilate_basic_stage(net.layer4, 4)
    else:
        raise ConfigError(f"unsupported ResNet depth {depth}; valid: 18, 50, 101")
    return IntermediateLayerGetter(net, return_layers={"layer4": "out"})


def vgg16_backbone() -> IntermediateLayerGetter:
    """The FADA/SDCA/ProCA VGG-16 backbone (output stride 8, 1024 features).

    torchvision's VGG-16 ``features`` with pool4 and pool5 removed, conv5_1..conv5_3 dilated by 2,
    then ``fc6`` and ``fc7`` as 3x3 convs (512->1024 and 1024->1024) with dilation = padding = 4,
    each followed by ReLU. Module indices (and so state-dict keys) are those of the release.

    Shape:
        Input (B, 3, H, W); output dict with ``"out"``: (B, 1024, H/8, W/8) for H, W divisible by 8.
    """
    features = list(tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False).children())
    for module in features:  # torchvision's VGG init (without building its 120M-parameter classifier)
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
    kept = features[:_VGG_POOL4] + features[_VGG_POOL4 + 1 : 30]
    for i in _VGG_CONV5:
        conv = kept[i]
        assert isinstance(conv, nn.Conv2d)
        conv.dilation = (2, 2)
        conv.padding = (2, 2)
    fc6 = nn.Conv2d(512, 1024, kernel_size=3, padding=4, dilation=4)
    fc7 = nn.Conv2d(1024, 1024, kernel_size=3, padding=4, dilation=4)
    body = nn.Sequential(*kept, fc6, nn.ReLU(inplace=True), fc7, nn.ReLU(inplace=True))
    return IntermediateLayerGetter(body, return_layers={str(len(body) - 1): "out"})


def find_imagenet_weights(backbone: str, weights: str | os.PathLike[str]) -> Path:
    """Resolve ``weights`` (a path, or ``"imagenet"`` for torch's hub cache) to an existing file.

    Args:
        backbone: ``resnet101``, ``resnet50``, ``resnet18``, ``vgg16`` or ``mit_b0`` ... ``mit_b5``.
        weights: a torchvision (NVlabs for MiT) ``.pth`` file, or ``"imagenet"`` to use
            ``<torch.hub.get_dir()>/checkpoints/``
            with one of the file names in :data:`IMAGENET_FILES`.

    Raises:
        CheckpointError: the file is missing; the message says where it was looked for and where to get it.
    """
    names = IMAGENET_FILES[backbone]
    url = _where_to_get(backbone)
    if str(weights) == "imagenet":
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        for name in names:
            if (cache / name).is_file():
                return cache / name
        raise CheckpointError(
            f"ImageNet weights for {backbone} not found: looked for {' or '.join(names)} in {cache}; "
            f"download {url} yourself (proca never downloads) and put it there or pass its path as backbone_weights"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"ImageNet weights file {path} does not exist; {backbone} needs {names[0]}, "
            f"which you can download from {url} (proca never downloads)"
        )
    return path


def _read_torchvision_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from proca.safeload import read_torch_file

    obj = read_torch_file(path, what="ImageNet weights file", expected="a torchvision .pth state dict")
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"ImageNet weights {path} are not a torchvision state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _vgg_key(key: str) -> str | None:
    """Map a torchvision VGG-16 key to our backbone's key (None: not part of the backbone)."""
    if not key.startswith("features."):
        return None
    index_text, _, rest = key.removeprefix("features.").partition(".")
    index = int(index_text)
    if index < _VGG_POOL4:
        return f"{index}.{rest}"
    return f"{index - 1}.{rest}"


def load_imagenet_weights(module: nn.Module, backbone: str, weights: str | os.PathLike[str]) -> Path:
    """Load torchvision ImageNet weights into a backbone built by this module.

    ResNets drop ``fc.*``; VGG-16 drops ``classifier.*`` and keeps ``fc6``/``fc7`` at their random
    init (as the release does). Every other key must match.

    Returns:
        The file that was read.

    Raises:
        CheckpointError: missing file, unreadable file, or keys/shapes that do not fit ``backbone``.
    """
    path = find_imagenet_weights(backbone, weights)
    state = _read_torchvision_state_dict(path)
    if backbone == "vgg16":
        mapped = {}
        for key, value in state.items():
            new = _vgg_key(key)
            if new is not None:
                mapped[new] = value
        state = mapped
        expected = {k for k in module.state_dict() if not k.startswith((f"{_VGG_FC6}.", f"{_VGG_FC7}."))}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        expected = set(module.state_dict())
        # Old torchvision files predate num_batches_tracked; BatchNorm fills it in on load.
        expected = {k for k in expected if not k.endswith("num_batches_tracked")}
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in module.state_dict()}
    own = module.state_dict()
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"ImageNet weights {path} do not fit {backbone} ({mismatch_summary(missing, unexpected, wrong)}); "
            "use torchvision's "
            f"{IMAGENET_FILES[backbone][0]}"
        )
    module.load_state_dict(state, strict=False)
    return path
