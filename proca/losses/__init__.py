"""Losses for ProCA, usable in any PyTorch training loop.

- :func:`prototype_contrastive_loss` / :class:`PrototypeContrastiveLoss`: cross entropy of pixel-to-prototype
  cosine similarities (ProCA's feature- and output-level contrast).
- :func:`lovasz_softmax` / :class:`LovaszSoftmaxLoss`: the Lovasz-softmax surrogate of the Jaccard loss.
- :func:`distribution_contrastive_loss`: SePiCo's distribution-aware contrast (class means + diagonal covariance).
- :class:`MemoryBank`, :class:`ProjectionHead`, :func:`sample_anchors`, :func:`memory_bank_contrastive_loss` /
  :class:`MemoryBankContrastiveLoss`: the memory-bank variant (per-class queues of pixel embeddings).
"""

from __future__ import annotations

from proca.losses.distribution import distribution_contrastive_loss
from proca.losses.lovasz import LovaszSoftmaxLoss, lovasz_softmax
from proca.losses.memory_bank import (
    MemoryBank,
    MemoryBankContrastiveLoss,
    ProjectionHead,
    memory_bank_contrastive_loss,
    sample_anchors,
)
from proca.losses.prototype import PrototypeContrastiveLoss, prototype_contrastive_loss

__all__ = [
    "LovaszSoftmaxLoss",
    "MemoryBank",
    "MemoryBankContrastiveLoss",
    "ProjectionHead",
    "PrototypeContrastiveLoss",
    "distribution_contrastive_loss",
    "lovasz_softmax",
    "memory_bank_contrastive_loss",
    "prototype_contrastive_loss",
    "sample_anchors",
]
