"""Losses for ProCA, usable in any PyTorch training loop.

- :func:`prototype_contrastive_loss` / :class:`PrototypeContrastiveLoss`: cross entropy of pixel-to-prototype
  cosine similarities (ProCA's feature- and output-level contrast).
- :func:`lovasz_softmax` / :class:`LovaszSoftmaxLoss`: the Lovasz-softmax surrogate of the Jaccard loss.
"""

from __future__ import annotations

from proca.losses.lovasz import LovaszSoftmaxLoss, lovasz_softmax
from proca.losses.prototype import PrototypeContrastiveLoss, prototype_contrastive_loss

__all__ = ["LovaszSoftmaxLoss", "PrototypeContrastiveLoss", "lovasz_softmax", "prototype_contrastive_loss"]
