"""Training stages, evaluation, inference and pseudo labels: composes models, data, losses and prototypes.

Submodules are imported on first use of a name, so ``import proca.engine`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConfusionMatrix",
    "EvalResult",
    "ProgressBar",
    "PseudoLabelStats",
    "SegMetrics",
    "cap_workers",
    "evaluate",
    "export_model",
    "generate_pseudo_labels",
    "predict_probs",
    "resolve_device",
    "run_eval",
    "run_export",
    "run_infer",
    "run_pseudo_label",
    "usable_cpus",
]

_LAZY = {
    "resolve_device": "proca.engine.device",
    "cap_workers": "proca.engine.device",
    "usable_cpus": "proca.engine.device",
    "ProgressBar": "proca.engine.progress",
    "ConfusionMatrix": "proca.engine.metrics",
    "SegMetrics": "proca.engine.metrics",
    "predict_probs": "proca.engine.predict",
    "EvalResult": "proca.engine.results",
    "evaluate": "proca.engine.evaluate",
    "export_model": "proca.engine.export",
    "run_export": "proca.engine.commands.export",
    "run_eval": "proca.engine.commands.eval",
    "PseudoLabelStats": "proca.engine.pseudo_label",
    "generate_pseudo_labels": "proca.engine.pseudo_label",
    "run_pseudo_label": "proca.engine.commands.pseudo_label",
    "run_infer": "proca.engine.commands.infer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proca.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
