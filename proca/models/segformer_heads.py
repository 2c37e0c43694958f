"""Decode heads on the four MiT stage maps: DAFormer's context-aware fusion head and SegFormer's all-MLP head.

Both produce a fused feature at 1/4 resolution (the prototype feature) and logits from it through
``Dropout2d(0.1)`` and a 1x1 classifier. Module names follow the mmsegmentation layouts of DAFormer
(``embed_layers``, ``fuse_layer.aspp_modules``, ``fuse_layer.bottleneck``, ``conv_seg``) and NVlabs'
SegFormer (``linear_c1`` ... ``linear_c4``, ``linear_fuse``, ``linear_pred``); a conv + BatchNorm + ReLU
block keeps mmcv's ``conv`` / ``bn`` names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DAFormerHead", "SegFormerHead"]


def _kaiming(conv: nn.Conv2d) -> None:
    """mmcv's ``ConvModule`` init: Kaiming-normal (fan_out, ReLU), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm2d -> ReLU, with mmcv ``ConvModule``'s ``conv`` / ``bn`` names.

    Shape:
        (B, C_in, h, w) -> (B, C_out, h', w').
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0, dilation: int = 1,
        groups: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)
        _kaiming(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depth-wise 3x3 (dilated) ConvBNReLU, then point-wise 1x1 ConvBNReLU (mmcv's ``DepthwiseSeparableConvModule``).

    Shape:
        (B, C_in, h, w) -> (B, C_out, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int) -> None:
        super().__init__()
        self.depthwise_conv = ConvBNReLU(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels
        )
        self.pointwise_conv = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbed(nn.Module):
    """A per-pixel linear layer (``proj``) on a feature map, as SegFormer's ``MLP``.

    Shape:
        (B, C_in, h, w) -> (B, C_out, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        out = self.proj(x.flatten(2).transpose(1, 2))
        return out.transpose(1, 2).reshape(b, -1, h, w)


def _to_size(x: Tensor, size: torch.Size) -> Tensor:
    return x if x.shape[2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SepASPPFusion(nn.Module):
    """DAFormer's fusion: depth-wise separable ASPP without image pooling, then a 3x3 bottleneck.

    Dilation 1 is a 1x1 ConvBNReLU; each other dilation is a :class:`SeparableConvBNReLU`. The branch
    outputs are concatenated and reduced by a 3x3 ConvBNReLU (``bottleneck``).

    Shape:
        (B, C_in, h, w) -> (B, A, h, w).
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int] = (1, 6, 12, 18)) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            ConvBNReLU(in_channels, channels, 1) if d == 1 else SeparableConvBNReLU(in_channels, channels, dilation=d)
            for d in dilations
        ]
        self.aspp_modules = nn.ModuleList(branches)
        self.bottleneck = ConvBNReLU(len(dilations) * channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(nn.Module):
    """DAFormer's context-aware fusion head (``daformer_sepaspp_mitb5.py``).

    Each level i gets a linear embedding to ``embed_dim`` channels (``embed_layers[i]``, no norm, no
    activation), is upsampled bilinearly to the 1/4 map, and the four are concatenated (4 x 256) and
    fused by :class:`SepASPPFusion` (dilations 1, 6, 12, 18, no pooling, 3x3 bottleneck to 256). The
    classifier is ``Dropout2d(0.1)`` and a 1x1 conv ``conv_seg`` (N(0, 0.01) weights, zero bias).

    Args:
        in_channels: the encoder's four channel counts.
        num_classes: classes C.
        embed_dim: channels A of every embedding and of the fused feature (256 in DAFormer).
        dropout: ``Dropout2d`` rate before the classifier.

    Shape:
        four maps (B, C_i, H/4 ... H/32) -> feature (B, A, H/4, W/4) (:meth:`fuse`) -> logits (B, C, H/4, W/4).
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, *, embed_dim: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.embed_layers = nn.ModuleDict({str(i): LinearEmbed(c, embed_dim) for i, c in enumerate(in_channels)})
        self.fuse_layer = SepASPPFusion(embed_dim * len(in_channels), embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(embed_dim, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)  # type: ignore[arg-type]  # bias=True
        self.channels = embed_dim

    def fuse(self, feats: Sequence[Tensor]) -> Tensor:
        size = feats[0].shape[2:]
        embedded = [_to_size(layer(x), size) for layer, x in zip(self.embed_layers.values(), feats, strict=True)]
        return self.fuse_layer(torch.cat(embedded, dim=1))

    def classify(self, feature: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(feature))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.classify(self.fuse(feats))


class SegFormerHead(nn.Module):
    """SegFormer's all-MLP head (NVlabs' ``SegFormerHead``).

    Each level i gets a linear layer to ``embed_dim`` (``linear_c{i}``), is upsampled bilinearly to the
    1/4 map; the maps are concatenated in NVlabs' order (c4, c3, c2, c1), fused by a 1x1 ConvBNReLU
    (``linear_fuse``), then ``Dropout2d(0.1)`` and a 1x1 conv ``linear_pred`` (PyTorch's default init, as
    released).

    Args:
        in_channels: the encoder's four channel counts.
        num_classes: classes C.
        embed_dim: A (NVlabs' configs: 256 for B0 and B1, 768 for B2-B5).
        dropout: ``Dropout2d`` rate before the classifier.

    Shape:
        four maps (B, C_i, H/4 ... H/32) -> feature (B, A, H/4, W/4) (:meth:`fuse`) -> logits (B, C, H/4, W/4).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, *, embed_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c4 = LinearEmbed(c4, embed_dim)
        self.linear_c3 = LinearEmbed(c3, embed_dim)
        self.linear_c2 = LinearEmbed(c2, embed_dim)
        self.linear_c1 = LinearEmbed(c1, embed_dim)
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)
        self.channels = embed_dim

    def fuse(self, feats: Sequence[Tensor]) -> Tensor:
        c1, c2, c3, c4 = feats
        size = c1.shape[2:]
        parts = [
            _to_size(self.linear_c4(c4), size),
            _to_size(self.linear_c3(c3), size),
            _to_size(self.linear_c2(c2), size),
            self.linear_c1(c1),
        ]
        return self.linear_fuse(torch.cat(parts, dim=1))

    def classify(self, feature: Tensor) -> Tensor:
        return self.linear_pred(self.dropout(feature))

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        return self.classify(self.fuse(feats))
