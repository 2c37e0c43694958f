"""Builders: plain typed functions, one per architecture, and :func:`build_model` over a plain dict.

The DeepLabV2 builders live here; the MiT ones (DAFormer, SegFormer) in :mod:`proca.models.mit_builders`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from torch import nn

from proca.errors import ConfigError
from proca.models.backbones import (
    BACKBONE_FEATURE_DIMS,
    load_imagenet_weights,
    norm_layer,
    resnet_backbone,
    vgg16_backbone,
)
from proca.models.deeplabv2 import DeepLabV2
from proca.models.mit_builders import MIT_BUILDERS
from proca.models.segformer import MiTSegmenter

__all__ = [
    "MODEL_BUILDERS",
    "ModelBuilder",
    "SegmentationModel",
    "build_model",
    "deeplabv2_resnet18",
    "deeplabv2_resnet50",
    "deeplabv2_resnet101",
    "deeplabv2_vgg16",
]

WeightsArg = str | os.PathLike[str] | None
SegmentationModel = DeepLabV2 | MiTSegmenter
"""What a builder returns: same interface (``arch``, ``num_classes``, ``norm``, ``feature_dim``, ``forward``,
``forward_features``, ``extract_features``, ``param_groups``, ``optimizer_family``)."""


class ModelBuilder(Protocol):
    """The signature every builder has."""

    def __call__(
        self, *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
    ) -> SegmentationModel: ...


def _check(num_classes: int, norm: str) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    norm_layer(norm)  # raises ConfigError listing the valid norms


def _finish(backbone: nn.Module, name: str, num_classes: int, weights: WeightsArg, norm: str) -> DeepLabV2:
    if weights is not None:
        load_imagenet_weights(backbone, name, weights)
    return DeepLabV2(
        backbone,
        num_classes=num_classes,
        feature_dim=BACKBONE_FEATURE_DIMS[name],
        arch=f"deeplabv2_{name}",
        norm=norm,
    )


def deeplabv2_resnet101(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> DeepLabV2:
    """DeepLabV2 with a dilated ResNet-101 (the paper's network; 43,901,068 parameters for 19 classes).

    Args:
        num_classes: output classes C.
        backbone_weights: None (random init), a torchvision ``resnet101-5d3b4d8f.pth`` file, or
            ``"imagenet"`` to take it from ``<torch.hub.get_dir()>/checkpoints/``. Never downloaded.
        norm: ``"batch"`` (BatchNorm2d, the release's default) or ``"frozen"`` (FADA/SDCA FrozenBatchNorm).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/8, W/8); features A = 2048.
    """
    _check(num_classes, norm)
    return _finish(resnet_backbone(101, norm=norm), "resnet101", num_classes, backbone_weights, norm)


def deeplabv2_resnet50(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> DeepLabV2:
    """DeepLabV2 with a dilated ResNet-50 (ImageNet file ``resnet50-19c8e357.pth``).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/8, W/8); features A = 2048.
    """
    _check(num_classes, norm)
    return _finish(resnet_backbone(50, norm=norm), "resnet50", num_classes, backbone_weights, norm)


def deeplabv2_resnet18(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> DeepLabV2:
    """DeepLabV2 with a ResNet-18 whose last two stages run at stride 1, dilation 2 and 4 (small, for CPU).

    ImageNet file ``resnet18-5c106cde.pth`` (or torchvision's ``resnet18-f37072fd.pth``).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/8, W/8); features A = 512.
    """
    _check(num_classes, norm)
    return _finish(resnet_backbone(18, norm=norm), "resnet18", num_classes, backbone_weights, norm)


def deeplabv2_vgg16(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> DeepLabV2:
    """DeepLabV2 with the FADA/SDCA VGG-16: pool4/pool5 removed, conv5 dilated 2, fc6/fc7 as dilated convs.

    ImageNet file ``vgg16-397923af.pth`` (``fc6``/``fc7`` stay randomly initialised, as released). VGG-16
    has no normalisation layers: ``norm`` is validated and recorded but changes nothing.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/8, W/8); features A = 1024.
    """
    _check(num_classes, norm)
    return _finish(vgg16_backbone(), "vgg16", num_classes, backbone_weights, norm)


MODEL_BUILDERS: dict[str, Callable[..., SegmentationModel]] = {
    "deeplabv2_resnet101": deeplabv2_resnet101,
    "deeplabv2_resnet50": deeplabv2_resnet50,
    "deeplabv2_resnet18": deeplabv2_resnet18,
    "deeplabv2_vgg16": deeplabv2_vgg16,
    **MIT_BUILDERS,
}


def build_model(
    arch: str, *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> SegmentationModel:
    """Build the architecture named ``arch`` (a key of :data:`MODEL_BUILDERS`).

    Raises:
        ConfigError: unknown ``arch`` (the message lists the valid names), bad ``num_classes`` or ``norm``.
        CheckpointError: ``backbone_weights`` missing or not fitting the backbone.
    """
    try:
        builder = MODEL_BUILDERS[arch]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown architecture {arch!r}; valid: {', '.join(MODEL_BUILDERS)}") from None
    return builder(num_classes=num_classes, backbone_weights=backbone_weights, norm=norm)
