"""The five stages of the ProCA recipe, each one documented ``train_step`` (or pass) plus its driver.

- :mod:`.source`: stage 1, :func:`~.source.source_train_step` (CE + 0.75 Lovasz, class-balanced source).
- :mod:`.prototypes`: stage 2, :func:`~.prototypes.init_prototypes` (one eval pass, both levels).
- :mod:`.adapt`: stage 3, :func:`~.adapt.proca_train_step` (supervised + feature/output prototype contrast).
- :mod:`.memory_bank`: stage 3 with ``--method memory-bank``, :func:`~.memory_bank.memory_bank_train_step`.
- :mod:`.pseudo`: stage 4, per-class percentile pseudo labels.
- :mod:`.selftrain`: stage 5, :func:`~.selftrain.ssl_train_step` (CE on pseudo labels).
- :mod:`.common`: the loop around a step (schedule, logging, validation, checkpoints, resume) and data streams.
"""

from __future__ import annotations

from proca.engine.stages.adapt import proca_train_step, run_proca_stage
from proca.engine.stages.common import RunContext, StepContext, StepResult, run_training_loop
from proca.engine.stages.memory_bank import memory_bank_train_step, run_memory_bank_stage
from proca.engine.stages.prototypes import init_prototypes, load_prototypes, run_prototype_stage, save_prototypes
from proca.engine.stages.pseudo import run_pseudo_label_stage
from proca.engine.stages.selftrain import run_ssl_stage, ssl_train_step
from proca.engine.stages.source import run_source_stage, source_train_step

__all__ = [
    "RunContext",
    "StepContext",
    "StepResult",
    "init_prototypes",
    "load_prototypes",
    "memory_bank_train_step",
    "proca_train_step",
    "run_memory_bank_stage",
    "run_proca_stage",
    "run_prototype_stage",
    "run_pseudo_label_stage",
    "run_source_stage",
    "run_ssl_stage",
    "run_training_loop",
    "save_prototypes",
    "source_train_step",
    "ssl_train_step",
]
