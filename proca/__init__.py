"""proca: Prototypical Contrast Adaptation for domain-adaptive semantic segmentation.

The library floor is import-light: ``import proca`` pulls in nothing heavy. Use the
subpackages directly: :mod:`proca.losses`, :mod:`proca.prototypes`, :mod:`proca.models`,
:mod:`proca.data`; the training and evaluation engine lives in :mod:`proca.engine`.

Three one-call helpers load on first use (then torch comes along): :func:`predict` (a photo ->
train ids), :func:`colorize` and :func:`overlay`, from :mod:`proca.engine.api`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "colorize", "overlay", "predict"]

_LAZY = {"predict": "proca.engine.api", "colorize": "proca.engine.api", "overlay": "proca.engine.api"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proca' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
