"""Run ``proca train`` from Python in tests: keyword arguments split into config options and run options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proca.config import TRAIN_OPTIONS


def train(*, config: Path | None = None, overrides: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``run_train`` with the CLI's split: ``TRAIN_OPTIONS`` names go to the config, the rest are run options."""
    from proca.engine.train import RunOptions, run_train, train_config

    options = {k: kwargs.pop(k) for k in list(kwargs) if k in TRAIN_OPTIONS}
    launch = {k: kwargs.pop(k) for k in ("gpus", "nproc", "nnodes", "node_rank", "rdzv_endpoint") if k in kwargs}
    cfg = train_config(config_file=config, overrides=overrides or [], options=options)
    return run_train(cfg, RunOptions(**kwargs), **launch)
