"""SegFormer's Mix Transformer (MiT) encoder, B0-B5, with NVlabs' state-dict layout.

Written from the SegFormer paper (Xie et al., NeurIPS 2021) and the facts of NVlabs'
``mmseg/models/backbones/mix_transformer.py``: overlapping patch embeddings (7x7 stride 4, then 3x3
stride 2), efficient self-attention whose keys/values are spatially reduced by a strided conv
(ratios 8, 4, 2, 1), a Mix-FFN with a 3x3 depth-wise conv, stochastic depth rising linearly from 0 to
``drop_path_rate`` over all blocks, and a LayerNorm after each stage. Parameter names are NVlabs'
(``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``block1.0.attn.sr.weight``,
``block1.0.mlp.dwconv.dwconv.weight``, ``norm1.weight`` ...), so their ImageNet files
``mit_b0.pth`` ... ``mit_b5.pth`` load key for key (:func:`load_mit_weights`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.errors import CheckpointError, ConfigError
from proca.models._keys import mismatch_summary
from proca.safeload import read_torch_file

__all__ = [
    "MIT_VARIANTS",
    "DropPath",
    "MiTConfig",
    "MixTransformer",
    "load_mit_weights",
    "mix_transformer",
]


@dataclass(frozen=True)
class MiTConfig:
    """Hyper-parameters of one MiT variant (NVlabs' ``mit_bX`` classes)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    drop_path_rate: float = 0.1


_WIDE = (64, 128, 320, 512)
MIT_VARIANTS: dict[str, MiTConfig] = {
    "mit_b0": MiTConfig(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTConfig(embed_dims=_WIDE, depths=(2, 2, 2, 2)),
    "mit_b2": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 6, 3)),
    "mit_b3": MiTConfig(embed_dims=_WIDE, depths=(3, 4, 18, 3)),
    "mit_b4": MiTConfig(embed_dims=_WIDE, depths=(3, 8, 27, 3)),
    "mit_b5": MiTConfig(embed_dims=_WIDE, depths=(3, 6, 40, 3)),
}
"""The official variants: qkv bias on, dropout 0, stochastic depth 0.1, heads (1, 2, 5, 8), MLP ratio 4."""

_BLOCK_EPS = 1e-6  # NVlabs pass LayerNorm(eps=1e-6) as norm_layer: block norm1/norm2 and the stage norms
# The patch-embedding norm and the attention's reduction norm are plain nn.LayerNorm (eps=1e-5), as released.


def _init_weights(module: nn.Module) -> None:
    """NVlabs' init: linear trunc-normal(0.02) with zero bias, LayerNorm (1, 0), conv N(0, sqrt(2 / fan_out))."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``p``.

    Survivors are scaled by ``1 / (1 - p)``; in eval mode (or with ``p == 0``) the input passes unchanged.

    Shape:
        Any (B, ...) -> same.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (padding = kernel // 2), then LayerNorm over tokens.

    Shape:
        (B, C_in, H, W) -> tokens (B, h*w, C), with h, w = the conv's output size.
    """

    def __init__(self, in_channels: int, embed_dim: int, *, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a sequence reduced ``sr_ratio`` x per side.

    The reduction is a ``sr_ratio`` x ``sr_ratio`` conv with the same stride (``sr``) and a LayerNorm
    (``norm``); neither exists for ``sr_ratio == 1``.

    Shape:
        tokens (B, N, C) with N = h * w -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(reduced)
        kv = self.kv(x).reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # scale head_dim ** -0.5, as released
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3x3 depth-wise conv applied to a token sequence laid out on its (h, w) grid.

    Shape:
        (B, N, C) -> (B, N, C).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=True)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, _, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """``fc2(GELU(dwconv(fc1(x))))``: the depth-wise conv gives the positional information (no position embedding).

    Shape:
        (B, N, C) -> (B, N, C).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class MiTBlock(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``.

    Shape:
        (B, N, C) -> (B, N, C).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixTransformer(nn.Module):
    """The MiT encoder: four stages, each patch embedding -> blocks -> LayerNorm.

    Stages are the attributes ``patch_embed{i}``, ``block{i}`` and ``norm{i}`` (i = 1..4), NVlabs' names.

    Args:
        config: a :class:`MiTConfig` (see :data:`MIT_VARIANTS`).
        in_channels: image channels.

    Attributes:
        embed_dims: channels (C_1, C_2, C_3, C_4) of the four outputs.

    Shape:
        (B, 3, H, W) -> list of four maps (B, C_i, H / s_i, W / s_i) with strides s = 4, 8, 16, 32
        (each conv rounds up: ``ceil``-like ``(n + 2p - k) // s + 1``).
    """

    def __init__(self, config: MiTConfig, *, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        self.embed_dims = config.embed_dims
        total = sum(config.depths)
        # Linear stochastic-depth rule, in Python (torch.linspace would fail inside a meta-device context).
        rates = [config.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        # NVlabs' registration order (all patch embeddings, then block/norm per stage): same state-dict order.
        for i, dim in enumerate(config.embed_dims, start=1):
            kernel, stride = (7, 4) if i == 1 else (3, 2)
            previous = in_channels if i == 1 else config.embed_dims[i - 2]
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(previous, dim, kernel_size=kernel, stride=stride))
        start = 0
        for i, (dim, depth) in enumerate(zip(config.embed_dims, config.depths, strict=True), start=1):
            blocks = [
                MiTBlock(dim, config.num_heads[i - 1], config.mlp_ratios[i - 1], config.sr_ratios[i - 1], rate)
                for rate in rates[start : start + depth]
            ]
            setattr(self, f"block{i}", nn.ModuleList(blocks))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=_BLOCK_EPS))
            start += depth
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def mix_transformer(variant: str) -> MixTransformer:
    """The MiT encoder ``variant`` (``"mit_b0"`` ... ``"mit_b5"``), randomly initialised as NVlabs do.

    Raises:
        ConfigError: unknown variant (the message lists the valid ones).
    """
    if variant not in MIT_VARIANTS:
        raise ConfigError(f"unknown MiT variant {variant!r}; valid: {', '.join(MIT_VARIANTS)}")
    return MixTransformer(MIT_VARIANTS[variant])


def load_mit_weights(encoder: MixTransformer, variant: str, weights: str | os.PathLike[str]) -> Path:
    """Load NVlabs' ImageNet-1K file (``mit_bX.pth``) into ``encoder``; every encoder key is required.

    The file is read with ``torch.load(weights_only=True)``; a ``state_dict`` wrapper and ``module.``
    prefixes are removed and the classification head (``head.*``) is dropped.

    Args:
        encoder: built by :func:`mix_transformer` for ``variant``.
        variant: ``"mit_b0"`` ... ``"mit_b5"``.
        weights: the file, or ``"imagenet"`` for ``<torch.hub.get_dir()>/checkpoints/mit_bX.pth``.

    Returns:
        The file that was read.

    Raises:
        CheckpointError: missing or unreadable file, or missing / unexpected / wrong-shaped keys (the message
            names them and the file that would fit).
    """
    from proca.models.backbones import find_imagenet_weights  # late: backbones imports this module's names

    path = find_imagenet_weights(variant, weights)
    obj = read_torch_file(path, what="ImageNet weights file", expected=f"NVlabs' {variant}.pth")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"ImageNet weights {path} are not a state dict (name -> tensor); give NVlabs' {variant}.pth"
        )
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in {variant}"
        for k in set(state) & set(own)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"ImageNet weights {path} do not fit {variant} ({mismatch_summary(missing, unexpected, wrong)}); "
            f"use NVlabs' SegFormer ImageNet-1K file {variant}.pth"
        )
    with torch.no_grad():
        encoder.load_state_dict(state, strict=True)
    return path
