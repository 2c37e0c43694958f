"""The run context: what every stage of a run shares (config, run folder, data root, process, devices)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from proca.config import TrainConfig
from proca.data.classes import ClassSet, get_class_set
from proca.engine.launch import DistInfo

if TYPE_CHECKING:
    from proca.data.targets import Target

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """Everything a stage needs besides its own config section.

    Attributes:
        cfg: the resolved configuration.
        run_dir: the run folder (RUN).
        data_root: folder holding ``gtav/``, ``synthia/``, ``cityscapes/``.
        dist: this process's rank, world size and device.
        backbone_weights: ImageNet weights for fresh models (None: random init, with a warning).
        progress: show progress bars (rank 0).
        label_info: path of the source label info (set by the driver before the source stages).
        results: per-stage validation results the driver collects (``{"source": {...}}``).
        clock: the whole run's :class:`~proca.engine.runclock.RunClock` (stage k/N, elapsed, ETA); None: none.
        skip_bad: ``--skip-bad``: source pairs the label info left out (unreadable, image/label sizes differ)
            are not trained on, also without class-balanced sampling.
    """

    cfg: TrainConfig
    run_dir: Path
    data_root: Path
    dist: DistInfo = field(default_factory=DistInfo)
    backbone_weights: Path | None = None
    progress: bool = True
    label_info: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock: Any = None
    skip_bad: bool = False

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.dist.device

    @property
    def class_set(self) -> ClassSet:
        """The classes of the run."""
        return get_class_set(self.cfg.class_set)

    @cached_property
    def target(self) -> Target:
        """The resolved target (``cfg.tgt``: a built-in dataset, a dataset card or a folder of images)."""
        from proca.data.targets import resolve_target

        return resolve_target(self.cfg.tgt, self.data_root)

    @property
    def validates(self) -> bool:
        """True when the run has labelled target data to validate on (``tgt_val``, or the target's own labels)."""
        return self.cfg.tgt_val is not None or self.target.labelled

    @property
    def is_main(self) -> bool:
        """True on the process that writes files."""
        return self.dist.is_main

    def path(self, name: str) -> Path:
        """A file in the run folder."""
        return self.run_dir / name

    def say(self, message: str) -> None:
        """Print a line on rank 0."""
        if self.is_main:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(message)
