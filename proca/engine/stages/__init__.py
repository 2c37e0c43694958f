"""The five stages of the ProCA recipe: each training stage a typed object with its own ``train_step``.

- :mod:`.source`: stage 1, :class:`~.source.SourceStage` (CE + 0.75 Lovasz, class-balanced source).
- :mod:`.prototypes`: stage 2, :func:`~.prototypes.init_prototypes` (one eval pass, both levels).
- :mod:`.adapt`: stage 3, :class:`~.adapt.ProcaStage` (supervised + feature/output prototype contrast).
- :mod:`.memory_bank`: stage 3 with ``--method memory-bank``, :class:`~.memory_bank.MemoryBankStage`.
- :mod:`.pseudo`: stage 4, per-class percentile pseudo labels.
- :mod:`.selftrain`: stage 5, :class:`~.selftrain.SelfTrainingStage` (CE on pseudo labels).
- :mod:`.daformer`: ``--recipe daformer``, :class:`~.daformer.DAFormerStage` (DAFormer/MIC online
  self-training with an optional prototype contrast; its pieces in :mod:`.daformer_ops`).
- :mod:`.base`: the supervised loss and the step context every training stage builds.

No stage imports another; the pipeline (:mod:`proca.engine.train`) picks the adaptation stage from
:data:`ADAPTATION_METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

from proca.engine.context import RunContext
from proca.engine.stages.adapt import ProcaStage, proca_train_step
from proca.engine.stages.base import supervised_loss, train_stage
from proca.engine.stages.daformer import DAFormerStage
from proca.engine.stages.memory_bank import MemoryBankStage, memory_bank_train_step
from proca.engine.stages.prototypes import init_prototypes, load_prototypes, run_prototype_stage, save_prototypes
from proca.engine.stages.pseudo import run_pseudo_label_stage
from proca.engine.stages.selftrain import SelfTrainingStage, ssl_train_step
from proca.engine.stages.source import SourceStage, source_train_step
from proca.engine.trainer import TrainingStage

ADAPTATION_METHODS: dict[str, Callable[[RunContext], TrainingStage]] = {
    "prototype": ProcaStage,
    "memory-bank": MemoryBankStage,
}
"""The adaptation stage of each ``method``; a new method adds a stage class here."""

__all__ = [
    "ADAPTATION_METHODS",
    "DAFormerStage",
    "MemoryBankStage",
    "ProcaStage",
    "SelfTrainingStage",
    "SourceStage",
    "init_prototypes",
    "load_prototypes",
    "memory_bank_train_step",
    "proca_train_step",
    "run_prototype_stage",
    "run_pseudo_label_stage",
    "save_prototypes",
    "source_train_step",
    "ssl_train_step",
    "supervised_loss",
    "train_stage",
]
