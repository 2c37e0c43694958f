"""Builders for the MiT networks: ``daformer_mit_b0`` ... ``daformer_mit_b5``, ``segformer_mit_b0`` ... ``_b5``.

Same signature as the DeepLabV2 builders; every one takes

- ``num_classes``: output classes C;
- ``backbone_weights``: None (random init, NVlabs' scheme), NVlabs' ImageNet-1K ``mit_bX.pth`` for the
  builder's variant (user supplied; ``head.*`` is dropped, every encoder key is required), or ``"imagenet"``
  for ``<torch.hub.get_dir()>/checkpoints/mit_bX.pth``. Never downloaded;
- ``norm``: only ``"batch"``. The encoder normalises with LayerNorm and the heads' BatchNorm2d starts from
  random init, so a frozen BatchNorm would never learn.

and returns a :class:`~proca.models.segformer.MiTSegmenter` whose logits are at stride 4.
"""

from __future__ import annotations

import os

from proca.errors import ConfigError
from proca.models.mix_transformer import MIT_VARIANTS, load_mit_weights, mix_transformer
from proca.models.segformer import MiTSegmenter
from proca.models.segformer_heads import DAFormerHead, SegFormerHead

__all__ = [
    "MIT_BUILDERS",
    "SEGFORMER_EMBED_DIMS",
    "daformer_mit_b0",
    "daformer_mit_b1",
    "daformer_mit_b2",
    "daformer_mit_b3",
    "daformer_mit_b4",
    "daformer_mit_b5",
    "segformer_mit_b0",
    "segformer_mit_b1",
    "segformer_mit_b2",
    "segformer_mit_b3",
    "segformer_mit_b4",
    "segformer_mit_b5",
]

WeightsArg = str | os.PathLike[str] | None

# NVlabs' local_configs/segformer/B*/: decoder_params embed_dim.
SEGFORMER_EMBED_DIMS: dict[str, int] = {
    "mit_b0": 256, "mit_b1": 256, "mit_b2": 768, "mit_b3": 768, "mit_b4": 768, "mit_b5": 768,
}  # fmt: skip
DAFORMER_EMBED_DIM = 256


def _build(head: str, variant: str, num_classes: int, weights: WeightsArg, norm: str) -> MiTSegmenter:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if norm != "batch":
        raise ConfigError(
            f"norm {norm!r} is not supported by {head}_{variant}; valid: batch (the encoder uses LayerNorm and the "
            "head's BatchNorm starts from random init, so it cannot be frozen)"
        )
    encoder = mix_transformer(variant)
    if weights is not None:
        load_mit_weights(encoder, variant, weights)
    dims = MIT_VARIANTS[variant].embed_dims
    if head == "daformer":
        decode_head: DAFormerHead | SegFormerHead = DAFormerHead(dims, num_classes, embed_dim=DAFORMER_EMBED_DIM)
    else:
        decode_head = SegFormerHead(dims, num_classes, embed_dim=SEGFORMER_EMBED_DIMS[variant])
    return MiTSegmenter(encoder, decode_head, num_classes=num_classes, arch=f"{head}_{variant}", norm=norm)


def daformer_mit_b0(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer head on MiT-B0 (small, for CPU tests and demos).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b0", num_classes, backbone_weights, norm)


def daformer_mit_b1(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer head on MiT-B1.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b1", num_classes, backbone_weights, norm)


def daformer_mit_b2(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer head on MiT-B2.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b2", num_classes, backbone_weights, norm)


def daformer_mit_b3(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer head on MiT-B3.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b3", num_classes, backbone_weights, norm)


def daformer_mit_b4(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer head on MiT-B4.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b4", num_classes, backbone_weights, norm)


def daformer_mit_b5(*, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch") -> MiTSegmenter:
    """DAFormer (Hoyer et al., CVPR 2022): MiT-B5 + context-aware fusion head, the paper's network.

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("daformer", "mit_b5", num_classes, backbone_weights, norm)


def segformer_mit_b0(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B0: MiT-B0 + all-MLP head (embed 256).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("segformer", "mit_b0", num_classes, backbone_weights, norm)


def segformer_mit_b1(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B1: MiT-B1 + all-MLP head (embed 256).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 256.
    """
    return _build("segformer", "mit_b1", num_classes, backbone_weights, norm)


def segformer_mit_b2(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B2: MiT-B2 + all-MLP head (embed 768).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 768.
    """
    return _build("segformer", "mit_b2", num_classes, backbone_weights, norm)


def segformer_mit_b3(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B3: MiT-B3 + all-MLP head (embed 768).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 768.
    """
    return _build("segformer", "mit_b3", num_classes, backbone_weights, norm)


def segformer_mit_b4(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B4: MiT-B4 + all-MLP head (embed 768).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 768.
    """
    return _build("segformer", "mit_b4", num_classes, backbone_weights, norm)


def segformer_mit_b5(
    *, num_classes: int = 19, backbone_weights: WeightsArg = None, norm: str = "batch"
) -> MiTSegmenter:
    """SegFormer-B5: MiT-B5 + all-MLP head (embed 768).

    Shape:
        (B, 3, H, W) -> logits (B, C, H/4, W/4); features A = 768.
    """
    return _build("segformer", "mit_b5", num_classes, backbone_weights, norm)


MIT_BUILDERS = {
    "daformer_mit_b0": daformer_mit_b0,
    "daformer_mit_b1": daformer_mit_b1,
    "daformer_mit_b2": daformer_mit_b2,
    "daformer_mit_b3": daformer_mit_b3,
    "daformer_mit_b4": daformer_mit_b4,
    "daformer_mit_b5": daformer_mit_b5,
    "segformer_mit_b0": segformer_mit_b0,
    "segformer_mit_b1": segformer_mit_b1,
    "segformer_mit_b2": segformer_mit_b2,
    "segformer_mit_b3": segformer_mit_b3,
    "segformer_mit_b4": segformer_mit_b4,
    "segformer_mit_b5": segformer_mit_b5,
}
