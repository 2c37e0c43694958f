"""Training stages, evaluation, inference and pseudo labels: composes models, data, losses and prototypes.

Submodules are imported on first use of a name, so ``import proca.engine`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfusionMatrix",
    "EvalResult",
    "PseudoLabelStats",
    "SegMetrics",
    "evaluate",
    "generate_pseudo_labels",
    "predict_probs",
    "resolve_device",
    "run_eval",
    "run_infer",
    "run_pseudo_label",
]

_LAZY = {
    "resolve_device": "proca.engine.device",
    "ConfusionMatrix": "proca.engine.metrics",
    "SegMetrics": "proca.engine.metrics",
    "predict_probs": "proca.engine.inference",
    "EvalResult": "proca.engine.evaluate",
    "evaluate": "proca.engine.evaluate",
    "run_eval": "proca.engine.evaluate",
    "PseudoLabelStats": "proca.engine.pseudo_label",
    "generate_pseudo_labels": "proca.engine.pseudo_label",
    "run_pseudo_label": "proca.engine.pseudo_label",
    "run_infer": "proca.engine.infer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proca.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
