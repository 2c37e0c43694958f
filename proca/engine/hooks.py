"""The hooks of the training loop: LR schedule, non-finite guard, logging, validation, checkpoints, rank checks.

:func:`default_hooks` gives every training stage the same set, in this order: the first hook
(:class:`ResumeHook`) restores the resumable state before the first step; then the schedule, the guard,
the log, validation, the cross-rank check and the checkpoints (periodic state, final file) run in that order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from proca.engine.context import RunContext
from proca.engine.launch import all_reduce_mean, any_flag, barrier
from proca.engine.schedule import LRSchedule, set_lr
from proca.engine.setup import CHECKPOINT_FILES, wants_release_checkpoint
from proca.engine.trainer import Hook, Trainer
from proca.errors import CheckpointError, ConfigError, ProcaError

__all__ = [
    "CheckpointHook",
    "EstimateHook",
    "EvalHook",
    "LRScheduleHook",
    "LoggingHook",
    "NonFiniteGuard",
    "RankSyncHook",
    "ResumeHook",
    "default_hooks",
    "save_model_file",
    "tensors_identical",
    "validate",
]


class LRScheduleHook(Hook):
    """The stage's learning rate before every step (head groups at their ``lr_mult``)."""

    def before_step(self, trainer: Trainer, iteration: int) -> None:
        schedule = trainer.stage.schedule
        if schedule is None:
            section = trainer.stage.section
            schedule = LRSchedule(section.lr, section.schedule_length, section.poly_power)
        trainer.lr = schedule(iteration)
        set_lr(trainer.stage.sc.optimizer, trainer.lr)


class EstimateHook(Hook):
    """Measures the stage's seconds per iteration and reports them to the run's clock (:mod:`proca.engine.runclock`).

    A step is timed from the first hook's ``before_step`` (this hook runs right after :class:`ResumeHook`) to
    this hook's ``after_step``, so validation and checkpoints (later hooks) are not in it. The first
    ``warmup`` steps of the stage are not counted (one-off start-up costs); after ``measure`` counted steps the
    clock gets the mean, and again every ``measure`` steps and at the end.

    Args:
        clock: the run's :class:`~proca.engine.runclock.RunClock`.
        warmup: steps left out at the start of the stage.
        measure: counted steps between reports.
        timer: the time source (seconds).
    """

    def __init__(self, clock: Any, *, warmup: int = 1, measure: int = 3, timer: Any = time.perf_counter) -> None:
        self.clock = clock
        self.warmup = warmup
        self.measure = measure
        self.timer = timer
        self.seen = 0
        self.counted = 0
        self.seconds = 0.0
        self.began = 0.0

    def before_train(self, trainer: Trainer) -> None:
        self.seen, self.counted, self.seconds = 0, 0, 0.0

    def before_step(self, trainer: Trainer, iteration: int) -> None:
        self.began = self.timer()

    def after_step(self, trainer: Trainer) -> None:
        spent = self.timer() - self.began
        self.seen += 1
        if self.seen <= self.warmup:
            if trainer.iteration == trainer.total:  # a stage no longer than its warm-up: its steps as they were
                self.clock.steps_measured(trainer.stage.name, spent, trainer.iteration)
            return
        self.counted += 1
        self.seconds += spent
        if self.counted % self.measure == 0 or trainer.iteration == trainer.total:
            self.clock.steps_measured(trainer.stage.name, self.seconds / self.counted, trainer.iteration)


class NonFiniteGuard(Hook):
    """Counts skipped (non-finite) steps; ``max_nonfinite`` in a row stop the run with advice."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0

    def after_step(self, trainer: Trainer) -> None:
        result = trainer.result
        assert result is not None
        if result.skipped is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        trainer.nonfinite_total += 1
        done, stage = trainer.iteration, trainer.stage.name
        trainer.logger.log_event(done, "nonfinite", term=result.skipped, in_a_row=self.in_a_row)
        if self.in_a_row >= self.max_in_a_row:
            raise ProcaError(
                f"{stage}: the loss term {result.skipped!r} was not finite in {self.in_a_row} steps in a row "
                f"(last at iteration {done}); lower the learning rate (--set {stage}.lr=...) or check the "
                "data, then --resume."
            )


class LoggingHook(Hook):
    """Losses (averaged over processes) every ``log_every`` steps and at the end; the progress bar always."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every

    def after_step(self, trainer: Trainer) -> None:
        result, done = trainer.result, trainer.iteration
        assert result is not None
        if result.skipped is None and (done % self.log_every == 0 or done == trainer.total):
            losses = all_reduce_mean(result.losses, trainer.ctx.device) if result.losses else {}
            trainer.logger.log_step(done, losses, trainer.lr, nonfinite_total=trainer.nonfinite_total)
        else:
            trainer.logger.advance(done)


def validate(ctx: RunContext, model: nn.Module, *, progress: bool | None = None) -> dict[str, Any]:
    """Validate ``model`` on the run's labelled target data (every process evaluates its share; metrics
    all-reduced): ``tgt_val`` when given, else the target's own labels (Cityscapes val, a labelled card).

    Returns:
        ``{"miou": percent, "per_class": {...}}`` (plus ``miou13`` for SYNTHIA classes).
    """
    from proca.data.targets import target_val_dataset
    from proca.engine.evaluate import evaluate

    cfg = ctx.cfg
    dataset: Any = target_val_dataset(cfg.tgt, cfg.tgt_val, ctx.data_root, class_set=ctx.class_set)
    if dataset is None:
        raise ConfigError(f"--tgt {cfg.tgt} has no labels to validate on; give --tgt-val DIR (labelled data).")
    if cfg.eval.max_images is not None and cfg.eval.max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(cfg.eval.max_images))
    result = evaluate(
        model,
        dataset,
        class_set=ctx.class_set,
        input_size=cfg.eval.input_size,
        scales=cfg.eval.scales,
        flip=cfg.eval.flip,
        device=ctx.device,
        batch_size=cfg.eval.batch_size,
        progress=ctx.progress and ctx.is_main if progress is None else progress,
        num_workers=0 if ctx.device.type == "cpu" else None,
        distributed=ctx.dist.distributed,
    )
    out: dict[str, Any] = {"miou": result.miou}
    if getattr(result, "miou13", None) is not None:
        out["miou13"] = result.miou13
    out["per_class"] = result.per_class
    return out


def save_model_file(
    ctx: RunContext, model: nn.Module, path: Path, stage: str, iteration: int, metrics: dict[str, Any],
    prototypes: dict[str, Tensor] | None,
) -> None:  # fmt: skip
    """Write a stage checkpoint with the run's metadata (resolved config included)."""
    from proca.models import save_model

    cfg = ctx.cfg
    metadata = {
        "stage": stage,
        "iteration": iteration,
        "class_set": cfg.class_set,
        "class_names": list(ctx.class_set.classes),
        "eval_input_size": list(cfg.eval.input_size),
        "config": cfg.model_dump(mode="json"),
        "metrics": dict(metrics),
    }
    save_model(model, path, metadata=metadata, prototypes=prototypes)  # type: ignore[arg-type]


class EvalHook(Hook):
    """Validation every ``eval_every`` steps and at the end; the best is kept as ``RUN/<stage>.best.safetensors``.

    When a later stage starts from this stage's ``release`` checkpoint, a validation that does not beat the best
    writes ``RUN/<stage>.current.safetensors`` (the release's ``model_current.pth``).
    """

    def after_step(self, trainer: Trainer) -> None:
        ctx, stage, done = trainer.ctx, trainer.stage, trainer.iteration
        every = stage.section.eval_every
        if not ctx.validates or not (done == trainer.total or (every and done % every == 0)):
            return
        model = stage.kept_model()
        trainer.last_metrics = validate(ctx, model, progress=False)
        trainer.last_metrics.update(stage.extra_metrics())
        trainer.logger.log_eval(done, {k: v for k, v in trainer.last_metrics.items() if k != "per_class"})
        best = trainer.best_miou is None or trainer.last_metrics["miou"] > trainer.best_miou
        if best:
            trainer.best_miou, trainer.best_iteration = trainer.last_metrics["miou"], done
        if ctx.is_main and (best or wants_release_checkpoint(ctx, stage.name)):
            # as the release: model_best.pth when the validation improved, else model_current.pth
            path = ctx.path(CHECKPOINT_FILES["best" if best else "release"].format(stage=stage.name))
            save_model_file(ctx, model, path, stage.name, done, trainer.last_metrics, stage.checkpoint_tensors())
        model.train()
        trainer.logger.reset_timer(done)


def state_path(trainer: Trainer) -> Path:
    """The stage's resumable state file, ``RUN/state/<stage>.safetensors``."""
    return trainer.ctx.path(f"state/{trainer.stage.name}.safetensors")


class ResumeHook(Hook):
    """Before the first step: continue exactly from ``RUN/state/<stage>.safetensors`` when it exists."""

    def before_train(self, trainer: Trainer) -> None:
        from proca.engine.runlog import truncate_log
        from proca.engine.state import load_training_state, restore_rng

        ctx, stage, path = trainer.ctx, trainer.stage, state_path(trainer)
        if ctx.is_main and path.parent.is_dir():
            # temporary files of a save interrupted by a kill: never valid, each as large as a checkpoint
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):
                leftover.unlink(missing_ok=True)
        if path.is_file():
            try:
                state = load_training_state(path)
            except CheckpointError as err:
                raise CheckpointError(
                    f"{err}; delete {path} to restart the stage {stage.name!r} from its beginning, or use --force"
                ) from None
            if state.info.get("stage") != stage.name:
                raise CheckpointError(f"{path} belongs to stage {state.info.get('stage')!r}; use --force.")
            stage.sc.model.load_state_dict(state.model)
            stage.sc.optimizer.load_state_dict(state.optimizer)
            stage.load_state_tensors(state.extra)
            restore_rng(state.rng)
            trainer.start = int(state.info["iteration"])
            trainer.best_miou, trainer.best_iteration = state.info.get("best_miou"), state.info.get("best_iteration")
            trainer.nonfinite_total = int(state.info.get("nonfinite_total", 0))
            trainer.last_metrics = state.info.get("last_metrics", {})
            if "scaler" in state.info and stage.sc.scaler.is_enabled():
                stage.sc.scaler.load_state_dict(state.info["scaler"])
            if ctx.is_main:
                truncate_log(ctx.path(f"{stage.name}.log.jsonl"), trainer.start)
            ctx.say(f"{stage.name}: resuming at iteration {trainer.start} of {trainer.total}")
        barrier()


class CheckpointHook(Hook):
    """The resumable state every ``checkpoint_every`` steps; the final ``RUN/<stage>.safetensors`` at the end
    (then the state file is removed)."""

    def __init__(self, checkpoint_every: int) -> None:
        self.every = checkpoint_every

    def after_step(self, trainer: Trainer) -> None:
        from proca.engine.state import save_training_state

        done, stage, sc = trainer.iteration, trainer.stage, trainer.stage.sc
        if done % self.every != 0 or done >= trainer.total:
            return
        if trainer.ctx.is_main:
            info: dict[str, Any] = {
                "stage": stage.name,
                "iteration": done,
                # the data streams are addressed by position: step t reads positions t*B .. t*B+B-1
                "stream_position": done * sc.plan.global_batch,
                "world_size": sc.plan.world_size,
                "best_miou": trainer.best_miou,
                "best_iteration": trainer.best_iteration,
                "nonfinite_total": trainer.nonfinite_total,
                "last_metrics": trainer.last_metrics,
                "time": time.time(),
            }
            if sc.scaler.is_enabled():
                info["scaler"] = sc.scaler.state_dict()
            extra = {**(stage.checkpoint_tensors() or {}), **stage.state_tensors()}
            save_training_state(
                state_path(trainer), model=sc.model, optimizer=sc.optimizer, info=info, extra=extra or None
            )
        barrier()
        trainer.logger.reset_timer(done)

    def after_train(self, trainer: Trainer) -> None:
        ctx, stage = trainer.ctx, trainer.stage
        if ctx.is_main:
            path = ctx.path(f"{stage.name}.safetensors")
            save_model_file(
                ctx,
                stage.kept_model(),
                path,
                stage.name,
                trainer.total,
                trainer.last_metrics,
                stage.checkpoint_tensors(),
            )
            state_path(trainer).unlink(missing_ok=True)
        barrier()


def tensors_identical(tensors: dict[str, Tensor]) -> bool:
    """True when every process holds exactly rank 0's tensors (a check of the all-reduce)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    same = True
    for name in sorted(tensors):
        mine = tensors[name]
        ref = mine.clone()
        dist.broadcast(ref, src=0)
        same = same and bool(torch.equal(ref, mine))
    return not any_flag(not same, tensors[next(iter(tensors))].device)


class RankSyncHook(Hook):
    """Under several processes, logs ``<name>_synced`` events: whether every rank holds identical state."""

    def after_train(self, trainer: Trainer) -> None:
        if not trainer.ctx.dist.distributed:
            return
        for name, tensors in trainer.stage.synced_tensors().items():
            trainer.logger.log_event(trainer.total, f"{name}_synced", identical=tensors_identical(tensors))


def default_hooks(ctx: RunContext) -> list[Hook]:
    """The hooks of every training stage, in the order they run (:class:`EstimateHook` when the run has a clock)."""
    cfg = ctx.cfg
    clock = getattr(ctx, "clock", None)
    return [
        ResumeHook(),
        *([EstimateHook(clock)] if clock is not None else []),
        LRScheduleHook(),
        NonFiniteGuard(cfg.max_nonfinite),
        LoggingHook(cfg.log_every),
        EvalHook(),
        RankSyncHook(),
        CheckpointHook(cfg.checkpoint_every),
    ]
