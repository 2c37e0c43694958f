"""proca: Prototypical Contrast Adaptation for domain-adaptive semantic segmentation.

The library floor is import-light: ``import proca`` pulls in nothing heavy. Use the
subpackages directly: :mod:`proca.losses`, :mod:`proca.prototypes`, :mod:`proca.models`,
:mod:`proca.data`; the training and evaluation engine lives in :mod:`proca.engine`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
