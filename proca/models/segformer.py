"""MiT encoder + decode head: the DAFormer and SegFormer networks, with DeepLabV2's interface."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from proca.models.mix_transformer import MixTransformer
from proca.models.segformer_heads import DAFormerHead, SegFormerHead

__all__ = ["MiTSegmenter", "no_weight_decay_names"]

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_POSITION_WORDS = ("pos_block", "pos_embed")


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: every normalisation layer's, and position-like ones.

    Normalisation layers are found by type (LayerNorm, BatchNorm, GroupNorm), so the heads' BatchNorms are
    included; "position-like" are names containing ``pos_block`` or ``pos_embed`` (MiT has none: its
    position information comes from the Mix-FFN's depth-wise conv).
    """
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        if isinstance(sub, _NORM_TYPES):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in sub.named_parameters(recurse=False))
    names.update(n for n, _ in module.named_parameters() if any(word in n for word in _POSITION_WORDS))
    return names


class MiTSegmenter(nn.Module):
    """A Mix Transformer encoder with a DAFormer or SegFormer decode head; logits at stride 4.

    Built by the functions in :mod:`proca.models.mit_builders`. State-dict keys are ``backbone.*``
    (NVlabs' MiT names) and ``decode_head.*`` (mmsegmentation's head names).

    Args:
        backbone: the encoder, returning four maps.
        decode_head: a :class:`DAFormerHead` or :class:`SegFormerHead` on those maps.
        num_classes: classes C.
        arch: builder name recorded in checkpoints (for example ``"daformer_mit_b5"``).
        norm: recorded in checkpoints; always ``"batch"`` (the heads' BatchNorm2d).

    Attributes:
        num_classes: C.
        feature_dim: A, channels of the prototype feature: the head's fused feature before dropout and
            classifier (as SePiCo takes it), 256 for DAFormer.
        arch: builder name.
        norm: ``"batch"``.
        optimizer_family: ``"adamw"``: these networks are trained with AdamW (DAFormer, SegFormer).

    Shape:
        Input (B, 3, H, W) normalised images; features (B, A, H/4, W/4), logits (B, C, H/4, W/4) (rounded up).
    """

    optimizer_family: ClassVar[str] = "adamw"

    def __init__(
        self,
        backbone: MixTransformer,
        decode_head: DAFormerHead | SegFormerHead,
        *,
        num_classes: int,
        arch: str = "custom",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.num_classes = num_classes
        self.feature_dim = decode_head.channels
        self.arch = arch
        self.norm = norm

    def extract_features(self, x: Tensor) -> Tensor:
        """The fused head feature (the prototype feature).

        Shape:
            x (B, 3, H, W) -> (B, A, H/4, W/4).
        """
        return self.decode_head.fuse(self.backbone(x))

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits from one pass.

        Shape:
            x (B, 3, H, W) -> features (B, A, H/4, W/4), logits (B, C, H/4, W/4).
        """
        features = self.extract_features(x)
        return features, self.decode_head.classify(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits at stride 4.

        Shape:
            x (B, 3, H, W) -> (B, C, H/4, W/4).
        """
        return self.decode_head.classify(self.extract_features(x))

    def param_groups(
        self, lr: float, *, head_lr_mult: float = 10.0, weight_decay: float = 0.01
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups as DAFormer/SegFormer: head at ``lr * head_lr_mult``, no decay on norms.

        Four groups, each with ``params``, ``lr``, ``weight_decay``, ``name`` and ``lr_mult`` (as
        :meth:`DeepLabV2.param_groups`): ``backbone`` and ``head`` with ``weight_decay``, and
        ``backbone_no_decay`` / ``head_no_decay`` with 0 (see :func:`no_weight_decay_names`). Empty groups
        and parameters with ``requires_grad=False`` are left out.
        """
        skip = no_weight_decay_names(self)
        groups: list[dict[str, Any]] = []
        for part, mult in (("backbone", 1.0), ("head", head_lr_mult)):
            module = self.backbone if part == "backbone" else self.decode_head
            prefix = "backbone." if part == "backbone" else "decode_head."
            params = [(prefix + n, p) for n, p in module.named_parameters() if p.requires_grad]
            for suffix, decay in (("", weight_decay), ("_no_decay", 0.0)):
                chosen = [p for n, p in params if (n in skip) == (suffix == "_no_decay")]
                if chosen:
                    groups.append(
                        {
                            "params": chosen,
                            "lr": lr * mult,
                            "weight_decay": decay,
                            "name": part + suffix,
                            "lr_mult": mult,
                        }
                    )
        return groups

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, feature_dim={self.feature_dim}, norm={self.norm!r}"
