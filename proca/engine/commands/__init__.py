"""The bodies of the ``proca`` commands that print with rich, one module per command.

- :mod:`~proca.engine.commands.adapt_bn`: ``proca adapt-bn`` (:func:`run_adapt_bn`, AdaBN).
- :mod:`~proca.engine.commands.eval`: ``proca eval`` (:func:`run_eval`, the per-class table).
- :mod:`~proca.engine.commands.pseudo_label`: ``proca pseudo-label`` (:func:`run_pseudo_label`).
- :mod:`~proca.engine.commands.infer`: ``proca infer`` (:func:`run_infer`).
- :mod:`~proca.engine.commands.convert`: ``proca convert`` (:func:`run_convert`).
- :mod:`~proca.engine.commands.export`: ``proca export`` (:func:`run_export`).

Each turns paths and options into calls of the library (:mod:`proca.engine.adabn`, :mod:`proca.engine.evaluate`,
:mod:`proca.engine.pseudo_label`, :mod:`proca.engine.predict`, :mod:`proca.models.legacy`) and prints the
outcome; submodules load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["run_adapt_bn", "run_convert", "run_eval", "run_export", "run_infer", "run_pseudo_label"]

_LAZY = {
    "run_adapt_bn": "proca.engine.commands.adapt_bn",
    "run_convert": "proca.engine.commands.convert",
    "run_eval": "proca.engine.commands.eval",
    "run_export": "proca.engine.commands.export",
    "run_infer": "proca.engine.commands.infer",
    "run_pseudo_label": "proca.engine.commands.pseudo_label",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proca.engine.commands' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
