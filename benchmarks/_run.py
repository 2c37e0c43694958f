"""A run folder for the benchmarks: synthetic data on disk, a source checkpoint and prototypes, a RunContext.

Everything timed goes through the product's code: :class:`proca.engine.stages.ProcaStage` is built from
this folder exactly as ``proca train --stage proca`` builds it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from proca.config import resolve_config
from proca.engine.context import RunContext
from proca.engine.launch import DistInfo


def proca_run(
    *, arch: str, source_size: tuple[int, int], target_size: tuple[int, int], amp: str, channels_last: bool,
    dist: DistInfo, root: Path | None = None, source_batch: int = 1,
) -> RunContext:  # fmt: skip
    """A run context whose folder holds what the source and ProCA stages read (data, a random-init source model,
    its prototypes)."""
    from proca.data.synthetic import write_synthetic_datasets
    from proca.engine.prototype_io import save_prototypes
    from proca.models import build_model, save_model
    from proca.prototypes import PrototypeEstimator

    root = Path(root or tempfile.mkdtemp(prefix="proca-bench-"))
    data, run = root / "data", root / "run"
    if dist.is_main and not (data / "cityscapes").is_dir():
        write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=(128, 256), progress=False, force=True)
    precision = "none" if amp == "fp32" else amp
    cfg = resolve_config(
        overrides=[f"arch={arch}", f"amp={precision}", f"channels_last={str(channels_last).lower()}", "num_workers=0",
                   f"proca.source_size=[{source_size[0]}, {source_size[1]}]",
                   f"proca.target_size=[{target_size[0]}, {target_size[1]}]", "proca.class_balanced=false",
                   f"proca.batch_size={2 * dist.world_size}", "source.class_balanced=false",
                   f"source.input_size=[{source_size[0]}, {source_size[1]}]",
                   f"source.batch_size={source_batch * dist.world_size}"]
    )  # fmt: skip
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model = build_model(arch, num_classes=cfg.num_classes)
        save_model(model, run / "source.safetensors", metadata={"stage": "source", "class_set": cfg.class_set})
        estimators: dict[str, Any] = {
            "feature": PrototypeEstimator(cfg.num_classes, model.feature_dim),
            "output": PrototypeEstimator(cfg.num_classes, cfg.num_classes),
        }
        for est in estimators.values():
            est.prototypes.normal_()
            est.counts.fill_(1000)
        save_prototypes(run / "prototypes.safetensors", estimators, {"stage": "prototypes"})
    if dist.distributed:
        torch.distributed.barrier()
    return RunContext(cfg=cfg, run_dir=run, data_root=data, dist=dist, progress=False)


def daformer_run(
    *, arch: str, crop: tuple[int, int], batch: int, amp: str, channels_last: bool, dist: DistInfo,
    root: Path | None = None, overrides: list[str] | None = None,
) -> RunContext:  # fmt: skip
    """A run context for the ``daformer`` stage (``proca train --recipe daformer``): synthetic data on disk,
    DAFormer's resizes (720x1280 source, 512x1024 target) and ``crop`` crops, ``batch`` source + ``batch`` target
    images per step, uniform source sampling (rare-class sampling only changes which images are read)."""
    from proca.data.synthetic import write_synthetic_datasets

    root = Path(root or tempfile.mkdtemp(prefix="proca-bench-"))
    data, run = root / "data", root / "run-daformer"
    if dist.is_main and not (data / "cityscapes").is_dir():
        write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=(128, 256), progress=False, force=True)
    precision = "none" if amp == "fp32" else amp
    cfg = resolve_config(
        overrides=[f"arch={arch}", f"amp={precision}", f"channels_last={str(channels_last).lower()}", "num_workers=0",
                   f"daformer.crop_size=[{crop[0]}, {crop[1]}]", f"daformer.batch_size={batch * dist.world_size}",
                   "daformer.rcs=false", *(overrides or [])]
    )  # fmt: skip
    if dist.is_main:
        run.mkdir(parents=True, exist_ok=True)
    return RunContext(cfg=cfg, run_dir=run, data_root=data, dist=dist, progress=False)
