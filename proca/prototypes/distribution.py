"""Class distributions as state: per-class mean and diagonal covariance, updated batch by batch (SePiCo)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from proca.errors import ConfigError
from proca.prototypes.functional import class_sums

__all__ = ["DistributionEstimator"]


class DistributionEstimator(nn.Module):
    """Per-class mean and diagonal (per-channel) variance of pixel features over every pixel seen.

    A batch with ``n_c`` pixels of class c, batch mean ``m_c`` and batch variance ``v_c`` (population) is
    merged into the running ``mean_c``/``var_c`` of ``N_c`` earlier pixels with ``w = n_c / (n_c + N_c)``:
    ``mean_c <- (1 - w) mean_c + w m_c`` and ``var_c <- (1 - w) var_c + w v_c + w (1 - w) (mean_c - m_c)^2``,
    the exact pooled mean and variance (SePiCo's ``ProtoEstimator`` update). Classes absent from a batch are
    untouched. Under ``torch.distributed`` the per-class sums, sums of squares and counts are all-reduced
    first, so every rank holds the same distributions. Math in float64; buffers ``mean``/``var`` float32,
    ``counts`` int64.

    Shape:
        mean (C, A), var (C, A), counts (C,).
    """

    mean: Tensor
    var: Tensor
    counts: Tensor

    def __init__(self, num_classes: int, feature_dim: int, *, ignore_index: int = 255, sync: bool = True) -> None:
        super().__init__()
        if num_classes < 1 or feature_dim < 1:
            raise ConfigError(
                f"DistributionEstimator needs num_classes, feature_dim >= 1, got {num_classes}, {feature_dim}."
            )
        self.num_classes, self.feature_dim, self.ignore_index, self.sync = num_classes, feature_dim, ignore_index, sync
        self.register_buffer("mean", torch.zeros(num_classes, feature_dim))
        self.register_buffer("var", torch.zeros(num_classes, feature_dim))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.int64))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Fold labelled pixels into the distributions.

        Shape:
            features (B, A, H, W) or (N, A); labels (B, H, W) or (N,).
        """
        if features.dim() == 4:
            features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
            labels = labels.reshape(-1)
        if features.shape[1] != self.feature_dim:
            raise ConfigError(f"features of {features.shape[1]} channels do not fit feature_dim {self.feature_dim}.")
        f = features.detach().double()
        sums, counts = class_sums(f, labels, self.num_classes, ignore_index=self.ignore_index)
        squares, _ = class_sums(f * f, labels, self.num_classes, ignore_index=self.ignore_index)
        sums, squares = sums.double(), squares.double()
        if self.sync and dist.is_available() and dist.is_initialized():
            for t in (sums, squares, counts):
                dist.all_reduce(t)
        present = counts > 0
        n = counts.double().clamp_min(1).unsqueeze(1)
        batch_mean = sums / n
        batch_var = (squares / n - batch_mean * batch_mean).clamp_min(0)
        w = (counts.double() / (counts + self.counts).double().clamp_min(1)).unsqueeze(1)
        old_mean, old_var = self.mean.double(), self.var.double()
        new_mean = (1 - w) * old_mean + w * batch_mean
        new_var = (1 - w) * old_var + w * batch_var + w * (1 - w) * (old_mean - batch_mean) ** 2
        keep = present.unsqueeze(1)
        self.mean.copy_(torch.where(keep, new_mean, old_mean))
        self.var.copy_(torch.where(keep, new_var, old_var))
        self.counts.add_(counts.to(self.counts.device))
