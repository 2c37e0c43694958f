"""DeepLabV2: a dilated backbone (output stride 8) and the ASPP-v2 classifier of the release."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["ASPPClassifierV2", "DeepLabV2", "count_parameters"]


class ASPPClassifierV2(nn.Module):
    """The ASPP-v2 head: parallel dilated 3x3 convs from the features straight to classes, summed.

    As released: one conv per dilation (padding = dilation), bias on, weights drawn from
    N(0, 0.01); the biases keep PyTorch's default conv init (the release does not touch them).
    The convs live in ``conv2d_list`` so the keys are the release's ``conv2d_list.{i}.{weight,bias}``.

    Args:
        in_channels: feature channels A.
        num_classes: output classes C.
        dilations: one conv per entry.

    Shape:
        Input (B, A, h, w); output (B, C, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        convs = [
            nn.Conv2d(in_channels, num_classes, kernel_size=3, stride=1, padding=d, dilation=d, bias=True)
            for d in dilations
        ]
        for conv in convs:
            nn.init.normal_(conv.weight, 0.0, 0.01)
        self.conv2d_list = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLabV2 = dilated backbone + ASPP-v2 head; logits at stride 8.

    Built by the functions in :mod:`proca.models.builders`. State-dict keys are the release's:
    ``backbone.*`` is the release's ``feature_extractor`` state dict as is, and ``classifier.*`` is
    its ``classifier`` state dict under a ``classifier.`` prefix.

    Args:
        backbone: a module returning a tensor or a dict with an ``"out"`` tensor (B, A, h, w).
        num_classes: number of classes C.
        feature_dim: backbone channels A.
        arch: builder name recorded in checkpoints (for example ``"deeplabv2_resnet101"``).
        norm: normalisation used in the backbone, recorded in checkpoints (``"batch"`` or ``"frozen"``).

    Attributes:
        num_classes: C.
        feature_dim: A.
        arch: builder name.
        norm: ``"batch"`` or ``"frozen"``.
        optimizer_family: ``"sgd"``: trained with SGD + momentum, as released.

    Shape:
        Input (B, 3, H, W) normalised images; logits (B, C, H/8, W/8) (rounded up).
    """

    optimizer_family: ClassVar[str] = "sgd"

    def __init__(
        self, backbone: nn.Module, *, num_classes: int, feature_dim: int, arch: str = "custom", norm: str = "batch"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = ASPPClassifierV2(feature_dim, num_classes)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.arch = arch
        self.norm = norm

    def extract_features(self, x: Tensor) -> Tensor:
        """Backbone features.

        Shape:
            x (B, 3, H, W) -> (B, A, H/8, W/8).
        """
        out = self.backbone(x)
        if isinstance(out, dict):
            out = out["out"]
        return out

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits from one pass (ProCA needs both).

        Shape:
            x (B, 3, H, W) -> features (B, A, H/8, W/8), logits (B, C, H/8, W/8).
        """
        features = self.extract_features(x)
        return features, self.classifier(features)

    def forward(self, x: Tensor) -> Tensor:
        """Logits at stride 8.

        Shape:
            x (B, 3, H, W) -> (B, C, H/8, W/8).
        """
        return self.classifier(self.extract_features(x))

    def param_groups(
        self, lr: float, *, head_lr_mult: float = 10.0, weight_decay: float = 5e-4
    ) -> list[dict[str, Any]]:
        """SGD parameter groups as released: backbone at ``lr``, head at ``lr * head_lr_mult``.

        Weight decay applies to every parameter (BatchNorm included), as in the release. Each group
        also carries ``name`` (``"backbone"`` / ``"head"``) and ``lr_mult`` so a schedule can rescale it.
        Parameters with ``requires_grad=False`` are left out.
        """
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.classifier.parameters() if p.requires_grad]
        return [
            {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone", "lr_mult": 1.0},
            {
                "params": head,
                "lr": lr * head_lr_mult,
                "weight_decay": weight_decay,
                "name": "head",
                "lr_mult": head_lr_mult,
            },
        ]

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, num_classes={self.num_classes}, feature_dim={self.feature_dim}, norm={self.norm!r}"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers excluded), counted from shapes only (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
