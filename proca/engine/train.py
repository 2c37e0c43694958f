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

``--recipe daformer`` runs one stage instead, ``daformer`` (ImageNet weights, source, target ->
``RUN/daformer.safetensors``, ``daformer.best.safetensors``), see :mod:`proca.engine.stages.daformer`.

``--stage all`` skips every stage whose final file exists. Training stages write their resumable
state to ``RUN/state/<stage>.safetensors`` every ``checkpoint_every`` iterations; ``--resume``
continues from it exactly. ``RUN/config.json`` holds the resolved configuration (torchrun's processes
read it), ``RUN/inputs.json`` the data it reads (checked on ``--resume``), ``RUN/results.json`` the validation
results of the stages, ``RUN/<stage>.log.jsonl`` the logs.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proca.config import TrainConfig, load_config_file, resolve_config
from proca.engine.launch import (
    DistInfo,
    barrier,
    cleanup_distributed,
    in_torchrun,
    init_distributed,
    launch_torchrun,
    torchrun_command,
)
from proca.engine.runclock import RunClock, budgets_for, count_images
from proca.engine.runfolder import (
    FINAL_OUTPUTS,
    INPUTS_FILE,
    STAGES,
    RunLock,
    check_data_identity,
    check_data_root,
    check_label_info_identity,
    check_recipe,
    check_resume_config,
    check_run_dir,
    clear_run,
    find_label_info,
    stage_outputs,
)
from proca.errors import ConfigError, DataError
from proca.io import atomic_write_json

__all__ = ["STAGES", "RunOptions", "run_pipeline", "run_train", "seeded_run", "stage_outputs", "train_config"]


@dataclass(frozen=True)
class RunOptions:
    """The options of a run that are not config keys: where the data and the run folder are, what to run.

    Attributes:
        data_root: folder holding ``gtav/``, ``synthia/``, ``cityscapes/``.
        out: the run folder.
        stage: ``all`` or one of :data:`STAGES` (with ``recipe="daformer"``: ``all`` or ``daformer``).
        recipe: ``proca`` (the five stages) or ``daformer`` (one online self-training stage).
        backbone_weights: ImageNet weights for fresh models (None: random init).
        resume: continue an interrupted run in ``out``.
        force: start over in an existing ``out``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        skip_bad: skip unreadable label files when the label info is generated.
        progress: progress bars.
    """

    data_root: Path = Path("datasets")
    out: Path = Path("runs/proca")
    stage: str = "all"
    recipe: str = "proca"
    backbone_weights: Path | None = None
    resume: bool = False
    force: bool = False
    device: str = "auto"
    skip_bad: bool = False
    progress: bool = True

    @property
    def stages(self) -> list[str]:
        """The stages to run, in order."""
        if self.recipe == "daformer":
            if self.stage not in ("all", "daformer"):
                raise ConfigError(f"--stage {self.stage} belongs to --recipe proca; --recipe daformer has one stage.")
            return ["daformer"]
        if self.recipe != "proca":
            raise ConfigError(f"--recipe {self.recipe!r} is not a recipe; valid: proca, daformer.")
        if self.stage != "all" and self.stage not in STAGES:
            raise ConfigError(f"--stage {self.stage!r} is not a stage; valid: all, {', '.join(STAGES)}.")
        return list(STAGES) if self.stage == "all" else [self.stage]

    def to_json(self) -> str:
        """The options as JSON (the argument of the torchrun workers)."""
        return json.dumps(
            {k: None if v is None else (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        )

    @classmethod
    def from_json(cls, text: str) -> RunOptions:
        data = json.loads(text)
        for key in ("data_root", "out", "backbone_weights"):
            if data.get(key) is not None:
                data[key] = Path(data[key])
        return cls(**data)


def train_config(
    *,
    src: str | None = None,
    tgt: str | None = None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    resume_dir: Path | None = None,
) -> TrainConfig:
    """The run's config: the preset of ``src``/``tgt`` (given, else the config file's, else gtav -> cityscapes),
    then the config file, ``--set`` overrides and the options the user gave (:func:`proca.config.resolve_config`).

    With ``resume_dir`` holding a ``config.json`` (``--resume``), that run's config is the starting point instead
    of the preset: ``proca train --out RUN --resume`` continues with the options the run was started with, and
    what is given on top of it is checked against :data:`~proca.engine.runfolder.RESUME_FREE` later.
    """
    saved = _saved_config(resume_dir) if resume_dir is not None else None
    if saved is not None:
        base = dict(saved)
        for flag, key, given in (("--src", "src", src), ("--tgt", "tgt", tgt)):
            if given is not None and _dataset_spec(given) != _dataset_spec(str(base.get(key))):
                raise ConfigError(
                    f"--resume: this run was started with {flag} {base.get(key)}, not {given}; leave {flag} out to "
                    "continue it, or start a new run with another --out."
                )
        return resolve_config(
            str(base.get("src", "gtav")), str(base.get("tgt", "cityscapes")), config_file=config_file,
            overrides=overrides, base=base, **dict(options or {}),
        )  # fmt: skip
    if src is None or tgt is None:
        loaded = load_config_file(config_file) if config_file is not None else {}
        src = src or str(loaded.get("src", "gtav"))
        tgt = tgt or str(loaded.get("tgt", "cityscapes"))
    return resolve_config(src, tgt, config_file=config_file, overrides=overrides, **dict(options or {}))


def _dataset_spec(spec: str) -> str:
    """A ``--src``/``--tgt`` value as compared on resume: a built-in name as is, a path resolved."""
    from proca.data.registry import BUILTIN_DATASETS

    if spec in BUILTIN_DATASETS or spec in ("gtav", "synthia"):
        return spec
    return str(Path(spec).expanduser().resolve())


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/config.json`` as a dict (None: no such file; an unreadable one is refused)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {path} ({err}); start a new run with another --out (or --force).") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} does not hold a config (a JSON object); start a new run with another --out.")
    return doc


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


def _run_stage(ctx: Any, stage: str, skip_bad: bool) -> dict[str, Any]:
    from proca.engine.stages import (
        ADAPTATION_METHODS,
        DAFormerStage,
        SelfTrainingStage,
        SourceStage,
        run_prototype_stage,
        run_pseudo_label_stage,
        train_stage,
    )
    from proca.engine.streams import ensure_label_info, training_workers
    from proca.engine.trainer import TrainingStage

    cfg = ctx.cfg
    balanced = cfg.source.class_balanced or cfg.proca.class_balanced
    if (
        (stage in ("source", "proca") and balanced)
        or (stage in ("source", "prototypes", "proca") and skip_bad)
        or (stage == "daformer" and (cfg.daformer.rcs or skip_bad))
    ):
        ctx.label_info = ensure_label_info(ctx, skip_bad=skip_bad, workers=training_workers(ctx, announce=False))
    if stage == "prototypes":
        return run_prototype_stage(ctx)
    if stage == "pseudo-label":
        return run_pseudo_label_stage(ctx)
    classes: dict[str, Callable[[Any], TrainingStage]] = {
        "source": SourceStage,
        "proca": ADAPTATION_METHODS[cfg.method],
        "ssl": SelfTrainingStage,
        "daformer": DAFormerStage,
    }
    loop = train_stage(ctx, classes[stage](ctx))
    entry: dict[str, Any] = {
        "miou": loop.last_metrics.get("miou"),
        "best_miou": loop.best_miou,
        "best_iteration": loop.best_iteration,
        "nonfinite_steps": loop.nonfinite_steps,
    }
    if "miou13" in loop.last_metrics:
        entry["miou13"] = loop.last_metrics["miou13"]
    return entry


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
    clock: RunClock | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order in ``run_dir`` (skipping those whose final output exists).

    The run folder must already be checked (see :func:`run_train`); this writes ``config.json`` and
    ``results.json`` there and returns the results: per stage ``miou`` (last validation),
    ``best_miou``, ``best_iteration``, ``seconds`` (only for stages run now; earlier ones are read back
    from ``results.json``). At each stage start a line gives ``stage k/N``, the elapsed time and the
    estimated time left (``clock``; default: one over the stages to run, images counted in ``data_root``).
    """
    from proca.engine.context import RunContext

    dist = dist or DistInfo()
    ctx = RunContext(
        cfg=cfg,
        run_dir=run_dir,
        data_root=data_root,
        dist=dist,
        backbone_weights=backbone_weights,
        progress=progress,
        skip_bad=skip_bad,
    )
    if clock is None:
        todo = [s for s in stages if not (run_dir / FINAL_OUTPUTS[s]).exists()]
        if cfg.method == "memory-bank":
            todo = [s for s in todo if s != "prototypes"]
        clock = RunClock(budgets_for(cfg, todo, count_images(data_root, cfg.src)), say=ctx.say)
    ctx.clock = clock
    results_path = run_dir / "results.json"
    results: dict[str, dict[str, Any]] = {}
    if results_path.is_file():
        results = json.loads(results_path.read_text(encoding="utf-8"))
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    barrier()
    if not ctx.validates:
        ctx.say(
            f"validation: skipped, the target {cfg.tgt} has no labels; each stage's last checkpoint is used "
            "(give --tgt-val DIR with labelled data to validate)"
        )
    for stage in stages:
        if stage == "prototypes" and cfg.method == "memory-bank":
            ctx.say("[dim]prototypes: not needed by --method memory-bank, skipped[/]")
            results[stage] = {"skipped": "not needed by method memory-bank"}
            if ctx.is_main:
                atomic_write_json(results_path, results)
            continue
        if (run_dir / FINAL_OUTPUTS[stage]).exists():
            ctx.say(f"[dim]{stage}: {run_dir / FINAL_OUTPUTS[stage]} exists, skipped[/]")
            continue
        clock.stage_started(stage)
        start = time.perf_counter()
        entry = _run_stage(ctx, stage, skip_bad)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        clock.stage_finished(stage)
        results[stage] = entry
        if ctx.is_main:
            atomic_write_json(results_path, results)
            if "miou" in entry and entry["miou"] is not None:
                ctx.say(f"{stage}: mIoU {entry['miou']:.2f} (best {entry['best_miou']:.2f}) in {entry['seconds']} s")
        barrier()
    if len(clock.done) > 1:
        ctx.say(clock.finished_line())
    return results


def check_target(cfg: TrainConfig, data_root: Path) -> None:
    """The target and the validation data exist and are well formed; a run without labelled target data asks
    for no checkpoint that only validation can pick (``release``).

    Raises:
        ProcaError: a card's mistake, a folder without images, a missing --tgt-val, an ``init_from`` of release
            without validation.
    """
    from proca.data.classes import get_class_set
    from proca.data.targets import resolve_eval_dataset, resolve_target

    target = resolve_target(cfg.tgt, data_root)  # a card's keys and files, a folder's images
    if cfg.tgt_val is not None:
        resolve_eval_dataset(cfg.tgt_val, data_root, class_set=get_class_set(cfg.class_set), flag="--tgt-val")
    if cfg.tgt_val is None and not target.labelled:
        for key, choice in (
            ("prototypes.init_from", cfg.prototypes.init_from),
            ("proca.init_from", cfg.proca.init_from),
            ("pseudo_label.init_from", cfg.pseudo_label.init_from),
        ):
            if choice == "release":
                raise ConfigError(
                    f"{key}=release picks a checkpoint by validation, but the target {cfg.tgt} has no labels; "
                    f"set {key}=last, or give --tgt-val DIR with labelled data."
                )


def check_inputs(cfg: TrainConfig, run: RunOptions) -> None:
    """What can be checked before anything is written or loaded: ``--out`` can be written, the dataset folders
    and the files the stages read are there (the validation labels included; a card's keys and files; a folder
    target's images), the label info is current, and the ImageNet weights file exists."""
    from proca.data.targets import resolve_target
    from proca.io import check_writable

    check_writable(run.out, "--out", folder=True)
    check_data_root(run.data_root, cfg.src, run.stages, cfg.tgt)
    check_target(cfg, run.data_root)
    check_stage_data(cfg, run)
    folder = resolve_target(cfg.tgt, run.data_root).folder
    out = run.out.absolute()
    if folder is not None and (out == folder or folder in out.parents):
        raise ConfigError(
            f"--out {run.out} lies inside --tgt {cfg.tgt}: the run's pseudo labels would be read back as target "
            "images; choose an --out outside the target folder."
        )
    weights = run.backbone_weights
    fresh = {"source", "ssl", "daformer"} & set(run.stages) and not (cfg.ssl.init == "proca" and run.stages == ["ssl"])
    if weights is not None and fresh and str(weights) != "imagenet" and not Path(weights).is_file():
        raise ConfigError(
            f"--backbone-weights {weights}: no such file; give the ImageNet weights file "
            "(see docs/pretrained.md), or leave the option out for random init."
        )


def check_stage_data(cfg: TrainConfig, run: RunOptions) -> None:
    """The datasets the stages read list all their files (no decoding): the source pairs, the target train
    images, the target's val images and labels every training stage validates on; and the label info the
    source stages would use is current (:func:`proca.data.label_info.check_label_info_current`)."""
    from proca.data.classes import get_class_set
    from proca.data.datasets import GTA5Dataset, SynthiaDataset
    from proca.data.registry import BUILTIN_DATASETS, open_target_images, open_target_val

    stages = set(run.stages)
    class_set = get_class_set(cfg.class_set)
    if stages & {"source", "prototypes", "proca", "daformer"}:
        src_root = run.data_root / cfg.src
        if cfg.source_key == "card":
            from proca.data.cards import card_dataset

            # the card's keys, its images, its labels and their pairing (label values are checked when read)
            card_dataset(cfg.src, class_set=class_set, needs_labels="--src")
        elif cfg.src == "synthia":
            SynthiaDataset(src_root)
        else:
            GTA5Dataset(src_root, class_set=class_set)
    if stages & {"proca", "pseudo-label", "ssl", "daformer"}:
        open_target_images(cfg.tgt, run.data_root, class_set=class_set)
    # every training stage validates: on --tgt-val (checked by check_target) or a built-in target's val split
    if stages & {"source", "proca", "ssl", "daformer"} and cfg.tgt_val is None and cfg.tgt in BUILTIN_DATASETS:
        try:
            open_target_val(cfg.tgt, run.data_root, class_set=class_set)
        except DataError as err:
            title = BUILTIN_DATASETS[cfg.tgt].title
            raise DataError(f"{err} (every training stage validates on {title} val, with its labels)") from None
    uses_info = (
        (cfg.source.class_balanced and "source" in stages)
        or (cfg.proca.class_balanced and "proca" in stages)
        or (cfg.daformer.rcs and "daformer" in stages)
    )
    found = find_label_info(run.data_root, cfg.src, run.out)
    scans = stages & {"source", "proca", "daformer"}
    if cfg.source_key != "card" and (uses_info or run.skip_bad) and scans and found is not None:
        from proca.data.label_info import check_label_info_current, read_label_info

        check_label_info_current(read_label_info(found), found, run.data_root / cfg.src, cfg.src, run_dir=run.out)


def _prepare_run_dir(cfg: TrainConfig, run: RunOptions) -> None:
    """The checks (and ``--force`` clearing) made once, by the process that was started, before any writing.

    A run that continues in an existing folder (``--resume``, or one more ``--stage``) must read the data it
    started on (``RUN/inputs.json``: data root, image names, label-info file); ``--resume`` also refuses changed
    config keys other than :data:`~proca.engine.runfolder.RESUME_FREE`. ``RUN/inputs.json`` is written here.
    """
    check_recipe(run.out, run.recipe, force=run.force)
    check_run_dir(run.out, run.stages, resume=run.resume, force=run.force)
    if run.force and run.out.exists():
        clear_run(run.out, cfg.source_key, run.stages)
    flag = "--resume" if run.resume else f"--stage {run.stage}"
    changes = check_resume_config(run.out, cfg) if run.resume else {}  # first: names a changed --src/--tgt
    record = check_data_identity(run.out, run.data_root, cfg.src, cfg.tgt, flag=flag)
    found = find_label_info(run.data_root, cfg.src, run.out)
    if found is not None and (run.out / INPUTS_FILE).is_file():
        check_label_info_identity(run.out, found, write=False)
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.out / INPUTS_FILE, record)
    if changes:  # config.json is rewritten with them when the run starts
        from rich.console import Console

        shown = ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())
        Console(stderr=True, highlight=False).print(f"resume: {shown} ({run.out / 'config.json'} updated)")


def run_local(cfg: TrainConfig, run: RunOptions, *, checked: bool = False) -> dict[str, dict[str, Any]]:
    """Run the pipeline in this process (one of torchrun's when started by it).

    Args:
        cfg: the resolved config.
        run: the run options.
        checked: the run folder was already checked by the launching process (torchrun workers).
    """
    from proca.engine.device import resolve_device

    run_device = resolve_device(run.device)
    check_inputs(cfg, run)
    dist = init_distributed(run_device)
    lock = RunLock(run.out)
    try:
        if dist.is_main and not checked:
            lock.acquire()
            _prepare_run_dir(cfg, run)
        barrier()
        with seeded_run(cfg, dist.device):
            return run_pipeline(
                cfg,
                run_dir=run.out,
                data_root=run.data_root,
                stages=run.stages,
                dist=dist,
                backbone_weights=run.backbone_weights,
                progress=run.progress,
                skip_bad=run.skip_bad,
            )
    finally:
        lock.release()
        cleanup_distributed()


def run_train(
    cfg: TrainConfig,
    run: RunOptions,
    *,
    gpus: int = 0,
    nproc: int = 0,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    debug: bool = False,
) -> dict[str, dict[str, Any]]:
    """CLI entry of ``proca train`` (see ``proca train --help`` for the options).

    With ``gpus`` (CUDA) or ``nproc`` (CPU, gloo) above 0 and outside torchrun, the run folder is checked,
    the resolved config written to ``RUN/config.json``, and ``python -m proca.engine.worker`` started under
    ``python -m torch.distributed.run``; its processes read that config. This returns ``{}`` when they finish.

    Returns:
        The stages' results (see :func:`run_pipeline`); ``{}`` in the launching process.

    Raises:
        ProcaError: an existing ``out`` without ``resume``/``force``, bad options or config, a failed stage.
    """
    if gpus and nproc:
        raise ConfigError("--gpus (CUDA) and --nproc (CPU) exclude each other; give one of them.")
    if not (gpus or nproc) or in_torchrun():
        return run_local(cfg, run)
    if gpus:
        if not torch.cuda.is_available():
            raise ConfigError(f"--gpus {gpus}: CUDA is not available here; use --nproc N --device cpu instead.")
        device = "cuda"
    else:
        if run.device not in ("auto", "cpu"):
            raise ConfigError(f"--nproc runs CPU processes (gloo); --device {run.device} does not fit, use cpu.")
        device = "cpu"
    check_inputs(cfg, run)
    cmd = torchrun_command(
        [RunOptions(**{**asdict(run), "device": device}).to_json(), *(["debug"] if debug else [])],
        nproc_per_node=gpus or nproc,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
    )
    with RunLock(run.out):  # held by the launching process while torchrun's processes write the folder
        _prepare_run_dir(cfg, run)
        atomic_write_json(run.out / "config.json", cfg.model_dump(mode="json"))
        threads = max(1, (torch.get_num_threads() or 1) // nproc) if nproc else None
        launch_torchrun(cmd, threads_per_process=threads)
    return {}
