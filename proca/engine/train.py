"""``proca train``: the ProCA recipe end to end, resumable, on one device or under torchrun.

Stages run in order in one run folder (RUN) and hand over through files:

=============  ==================================  =============================================
stage          reads                               writes (final file first)
=============  ==================================  =============================================
source         ImageNet weights, source, label     RUN/source.safetensors, source.best.safetensors
               info
prototypes     RUN/source[.best].safetensors       RUN/prototypes.safetensors (not for memory-bank)
proca          RUN/source[.best], prototypes       RUN/proca.safetensors, proca.best.safetensors
pseudo-label   RUN/proca[.best].safetensors        RUN/pseudo_labels/
ssl            ImageNet weights, pseudo labels     RUN/ssl.safetensors, ssl.best.safetensors
=============  ==================================  =============================================

``--stage all`` skips every stage whose final file exists. Training stages write their resumable
state to ``RUN/state/<stage>.safetensors`` every ``checkpoint_every`` iterations; ``--resume``
continues from it exactly. ``RUN/config.json`` holds the resolved configuration, ``RUN/results.json``
the validation results of the stages, ``RUN/<stage>.log.jsonl`` the logs.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proca.config import TrainConfig, resolve_config
from proca.engine.launch import (
    DistInfo,
    barrier,
    cleanup_distributed,
    in_torchrun,
    init_distributed,
    launch_torchrun,
    torchrun_command,
)
from proca.errors import ConfigError, DataError, ProcaError
from proca.io import atomic_write_json

__all__ = ["STAGES", "StageName", "run_pipeline", "run_train", "seeded_run", "stage_outputs"]

STAGES = ("source", "prototypes", "proca", "pseudo-label", "ssl")
StageName = str

_FINAL = {
    "source": "source.safetensors",
    "prototypes": "prototypes.safetensors",
    "proca": "proca.safetensors",
    "pseudo-label": "pseudo_labels",
    "ssl": "ssl.safetensors",
}
# keys that may differ between a run and its resume: run-time only ones, which do not change the results,
# and the stages' learning rates and non-finite limit, so that a run stopped by non-finite losses can go on
# with a lower rate (the continuation then differs from the original schedule, by the user's choice)
_RESUME_FREE = {"num_workers", "log_every", "max_nonfinite", "source.lr", "proca.lr", "ssl.lr"}


def stage_outputs(stage: str) -> list[str]:
    """The names (in RUN) a stage writes; the first is its final output."""
    names = [_FINAL[stage]]
    if stage in ("source", "proca", "ssl"):
        key = stage
        names += [f"{key}.best.safetensors", f"state/{key}.safetensors", f"{key}.log.jsonl", f"tb/{key}"]
    if stage == "pseudo-label":
        names.append("pseudo_labels.partial")
    return names


def _train_args(kwargs: dict[str, Any], device: str) -> list[str]:
    """The ``proca train`` options that reproduce ``kwargs`` without the launch flags."""
    args = ["--src", kwargs["src"], "--tgt", kwargs["tgt"], "--data-root", str(kwargs["data_root"])]
    args += ["--out", str(kwargs["out"]), "--stage", kwargs["stage"]]
    for flag, key in (
        ("--method", "method"),
        ("--arch", "arch"),
        ("--backbone-weights", "backbone_weights"),
        ("--iters", "iters"),
        ("--batch-size", "batch_size"),
        ("--checkpoint-every", "checkpoint_every"),
        ("--config", "config"),
    ):
        if kwargs.get(key) is not None:
            args += [flag, str(kwargs[key])]
    if kwargs.get("input_size") is not None:
        h, w = kwargs["input_size"]
        args += ["--input-size", f"{h}x{w}"]
    for flag, key in (("--resume", "resume"), ("--force", "force"), ("--channels-last", "channels_last")):
        if kwargs.get(key):
            args.append(flag)
    if kwargs.get("skip_bad"):
        args.append("--skip-bad")
    args += ["--seed", str(kwargs["seed"]), "--device", device, "--amp", kwargs["amp"]]
    for item in kwargs.get("overrides") or []:
        args += ["--set", item]
    return args


def _config_from(kwargs: dict[str, Any]) -> TrainConfig:
    return resolve_config(
        kwargs["src"],
        kwargs["tgt"],
        config_file=kwargs.get("config"),
        overrides=kwargs.get("overrides") or [],
        arch=kwargs.get("arch"),
        iters=kwargs.get("iters"),
        batch_size=kwargs.get("batch_size"),
        input_size=kwargs.get("input_size"),
        checkpoint_every=kwargs.get("checkpoint_every"),
        seed=kwargs.get("seed"),
        amp=None if kwargs.get("amp") in (None, "none") else kwargs["amp"],
        channels_last=True if kwargs.get("channels_last") else None,
        method=kwargs.get("method"),
    )


def _stage_has_outputs(run_dir: Path, stage: str) -> bool:
    return any((run_dir / name).exists() for name in stage_outputs(stage))


def _check_run_dir(run_dir: Path, stages: Sequence[str], *, resume: bool, force: bool) -> None:
    """Refuse to mix a new run into an existing folder without --resume or --force."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other; give one of them.")
    if resume or force or not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if len(stages) == 1 and not _stage_has_outputs(run_dir, stages[0]) and (run_dir / "config.json").is_file():
        return  # one more stage of an existing run, e.g. --stage prototypes after --stage source
    raise ProcaError(
        f"--out {run_dir} already holds a run; use --resume to continue it or --force to start over "
        "(or choose another --out)."
    )


def _clear_run(run_dir: Path, src: str) -> None:
    """Remove what a previous run wrote (only proca's own files)."""
    for stage in STAGES:
        for name in stage_outputs(stage):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for name in ("config.json", "results.json", f"{src}_label_info.json"):
        (run_dir / name).unlink(missing_ok=True)
    for folder in ("state", "tb"):
        with contextlib.suppress(OSError):
            (run_dir / folder).rmdir()


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if f"{prefix}{key}" in _RESUME_FREE:
                continue
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _check_data_root(data_root: Path, src: str, stages: Sequence[str]) -> None:
    """Fail before anything is written when the dataset folders the stages read are missing."""
    from proca.data.datasets import CITYSCAPES_LAYOUT, GTA5_LAYOUT, SYNTHIA_LAYOUT

    needed = [("cityscapes", CITYSCAPES_LAYOUT)]
    if any(s in ("source", "prototypes", "proca") for s in stages):
        needed.insert(0, (src, GTA5_LAYOUT if src == "gtav" else SYNTHIA_LAYOUT))
    for name, layout in needed:
        folder = data_root / name
        if not folder.is_dir():
            raise DataError(
                f"dataset folder {folder} does not exist; --data-root must hold {name}/ laid out as {layout} "
                f"(see docs/data.md, or try `proca synth --out {data_root}` for synthetic scenes)."
            )


def _check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    path = run_dir / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = _diff(saved, cfg.model_dump(mode="json"))
    if changed:
        raise ConfigError(
            f"--resume: the options give a different config than {path} (changed: {', '.join(changed[:5])}); "
            "pass the run's original options, or --force to start over."
        )


@contextlib.contextmanager
def seeded_run(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """Deterministic kernels and seeded RNGs for the run; the previous global settings are restored after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    bench = torch.backends.cudnn.benchmark
    try:
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
            torch.backends.cudnn.benchmark = False
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = bench


def run_pipeline(
    cfg: TrainConfig,
    *,
    run_dir: Path,
    data_root: Path,
    stages: Sequence[str],
    dist: DistInfo | None = None,
    backbone_weights: Path | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order in ``run_dir`` (skipping those whose final output exists).

    The run folder must already be checked (see :func:`run_train`); this writes ``config.json`` and
    ``results.json`` there and returns the results: per stage ``miou`` (last validation),
    ``best_miou``, ``best_iteration``, ``seconds`` (only for stages run now; earlier ones are read back
    from ``results.json``).
    """
    from proca.engine.stages import (
        RunContext,
        run_proca_stage,
        run_prototype_stage,
        run_pseudo_label_stage,
        run_source_stage,
        run_ssl_stage,
    )
    from proca.engine.stages.sources import ensure_label_info

    dist = dist or DistInfo()
    ctx = RunContext(
        cfg=cfg, run_dir=run_dir, data_root=data_root, dist=dist, backbone_weights=backbone_weights, progress=progress
    )
    results_path = run_dir / "results.json"
    results: dict[str, dict[str, Any]] = {}
    if results_path.is_file():
        results = json.loads(results_path.read_text(encoding="utf-8"))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    barrier()
    for stage in stages:
        if stage == "prototypes" and cfg.method == "memory-bank":
            ctx.say("[dim]prototypes: not needed by --method memory-bank, skipped[/]")
            results[stage] = {"skipped": "not needed by method memory-bank"}
            if ctx.is_main:
                atomic_write_json(results_path, results)
            continue
        if (run_dir / _FINAL[stage]).exists():
            ctx.say(f"[dim]{stage}: {run_dir / _FINAL[stage]} exists, skipped[/]")
            continue
        ctx.say(f"[bold]{stage}[/]")
        start = time.perf_counter()
        if stage in ("source", "proca") and (cfg.source.class_balanced or cfg.proca.class_balanced):
            ctx.label_info = ensure_label_info(ctx, skip_bad=skip_bad)
        entry: dict[str, Any]
        if stage == "source":
            loop = run_source_stage(ctx)
        elif stage == "proca":
            loop = run_proca_stage(ctx)
        elif stage == "ssl":
            loop = run_ssl_stage(ctx)
        else:
            loop = None
        if loop is not None:
            entry = {
                "miou": loop.last_metrics.get("miou"),
                "best_miou": loop.best_miou,
                "best_iteration": loop.best_iteration,
                "nonfinite_steps": loop.nonfinite_steps,
            }
            if "miou13" in loop.last_metrics:
                entry["miou13"] = loop.last_metrics["miou13"]
        elif stage == "prototypes":
            entry = run_prototype_stage(ctx)
        else:
            entry = run_pseudo_label_stage(ctx)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        results[stage] = entry
        if ctx.is_main:
            atomic_write_json(results_path, results)
            if "miou" in entry and entry["miou"] is not None:
                ctx.say(f"{stage}: mIoU {entry['miou']:.2f} (best {entry['best_miou']:.2f}) in {entry['seconds']} s")
        barrier()
    return results


def run_train(
    *,
    src: str = "gtav",
    tgt: str = "cityscapes",
    data_root: Path = Path("datasets"),
    out: Path = Path("runs/proca"),
    stage: str = "all",
    method: str | None = None,
    arch: str | None = None,
    backbone_weights: Path | None = None,
    input_size: tuple[int, int] | None = None,
    iters: int | None = None,
    batch_size: int | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    force: bool = False,
    seed: int = 0,
    device: str = "auto",
    gpus: int = 0,
    nproc: int = 0,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    amp: str = "none",
    channels_last: bool = False,
    config: Path | None = None,
    overrides: Sequence[str] = (),
    skip_bad: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """CLI entry of ``proca train`` (see ``proca train --help`` for the options).

    With ``gpus`` (CUDA) or ``nproc`` (CPU, gloo) above 0 and outside torchrun, the same command is
    re-run under ``python -m torch.distributed.run`` and this returns ``{}`` when it finishes.

    Returns:
        The stages' results (see :func:`run_pipeline`); ``{}`` in the launching process.

    Raises:
        ProcaError: an existing ``out`` without ``resume``/``force``, bad options or config, a failed stage.
    """
    kwargs = dict(locals())
    if stage != "all" and stage not in STAGES:
        raise ConfigError(f"--stage {stage!r} is not a stage; valid: all, {', '.join(STAGES)}.")
    stages = list(STAGES) if stage == "all" else [stage]
    cfg = _config_from(kwargs)
    out, data_root = Path(out), Path(data_root)
    if gpus and nproc:
        raise ConfigError("--gpus (CUDA) and --nproc (CPU) exclude each other; give one of them.")
    if (gpus or nproc) and not in_torchrun():
        _check_run_dir(out, stages, resume=resume, force=force)
        if gpus:
            if not torch.cuda.is_available():
                raise ConfigError(f"--gpus {gpus}: CUDA is not available here; use --nproc N --device cpu instead.")
            launch_device = "cuda"
        else:
            if device not in ("auto", "cpu"):
                raise ConfigError(f"--nproc runs CPU processes (gloo); --device {device} does not fit, use cpu.")
            launch_device = "cpu"
        _check_data_root(data_root, cfg.src, stages)
        cmd = torchrun_command(
            _train_args(kwargs, launch_device),
            nproc_per_node=gpus or nproc,
            nnodes=nnodes,
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
        )
        threads = None
        if nproc:
            threads = max(1, (torch.get_num_threads() or 1) // nproc)
        launch_torchrun(cmd, threads_per_process=threads)
        return {}

    from proca.engine.device import resolve_device

    run_device = resolve_device(device)
    _check_data_root(data_root, cfg.src, stages)
    dist = init_distributed(run_device)
    try:
        if dist.is_main:
            _check_run_dir(out, stages, resume=resume, force=force)
            if force and out.exists():
                _clear_run(out, src)
            if resume:
                _check_resume_config(out, cfg)
        barrier()
        with seeded_run(cfg, dist.device):
            return run_pipeline(
                cfg,
                run_dir=out,
                data_root=data_root,
                stages=stages,
                dist=dist,
                backbone_weights=backbone_weights,
                progress=progress,
                skip_bad=skip_bad,
            )
    finally:
        cleanup_distributed()
