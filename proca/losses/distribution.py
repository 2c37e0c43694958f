"""SePiCo's distribution-aware contrast: pixels against class means plus a diagonal-covariance term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["distribution_contrastive_loss"]


def distribution_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    temperature: float = 100.0,
    ratio: float = 1.0,
    ignore_index: int = 255,
) -> Tensor:
    """The upper bound of the expected contrast over features drawn from the class distributions (SePiCo's DistCL).

    With L2-normalised pixel features f, class means mu_c and diagonal variances s_c (scaled
    ``s'_c = ratio * s_c / temperature``), the logits are ``z_c = (f . mu_c + 0.5 f^2 . s'_c) / temperature``
    and the loss of a pixel of class y is ``CE(z, y) + 0.5 f^2 . s'_y / temperature``, averaged over the
    labelled pixels (0 with none). ``mean``/``var`` are treated as constants.

    Shape:
        features (B, A, H, W) or (N, A); labels (B, H, W) or (N,); mean, var (C, A) -> scalar.
    """
    if features.dim() == 4:
        features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        labels = labels.reshape(-1)
    keep = labels != ignore_index
    f = F.normalize(features[keep].float(), dim=1)
    y = labels[keep].long()
    if y.numel() == 0:
        return features.sum() * 0.0
    mu, s = mean.detach().float(), var.detach().float() * (ratio / temperature)
    f2 = f * f
    logits = (f @ mu.t() + 0.5 * f2 @ s.t()) / temperature
    ce = F.cross_entropy(logits, y, reduction="none")
    return (ce + 0.5 * (f2 * s[y]).sum(1) / temperature).mean() + torch.zeros((), device=f.device)
