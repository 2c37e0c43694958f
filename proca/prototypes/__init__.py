"""Class prototypes for ProCA: per-class feature means and the helpers that label pixels for them.

- :func:`class_sums`: per-class feature sums and pixel counts in O(N * A) memory.
- :class:`PrototypeEstimator`: the running-mean (or EMA) prototypes as module state, synchronised
  across ranks under ``torch.distributed``, saved to safetensors.
- :class:`DistributionEstimator`: per-class mean and diagonal variance (SePiCo's distribution-aware form).
- :func:`confident_labels`: argmax labels kept where the prediction is confident.
- :func:`downsample_labels`: nearest-neighbour label maps on the feature grid, as the release.
"""

from __future__ import annotations

from proca.prototypes.distribution import DistributionEstimator
from proca.prototypes.estimator import PrototypeEstimator
from proca.prototypes.functional import accumulation_dtype, class_sums, confident_labels, downsample_labels

__all__ = [
    "DistributionEstimator",
    "PrototypeEstimator",
    "accumulation_dtype",
    "class_sums",
    "confident_labels",
    "downsample_labels",
]
