"""The training loop: a small :class:`Trainer` that runs a stage's ``train_step`` and calls hooks around it.

A stage (:mod:`proca.engine.stages`) is a typed object that builds its network, optimiser and data, and
implements ``batches(start)`` and ``train_step(micro_batches)``; everything around a step (learning rate,
logging and progress, validation and the best checkpoint, resumable state and the final checkpoint, the
non-finite guard, cross-rank checks) is a :class:`Hook` (:mod:`proca.engine.hooks`). Adding a recipe adds
a stage; the loop does not change.

A step whose loss is not finite on any process changes nothing: the gradients are dropped before the
optimiser step, and every tensor the stage lists in :meth:`TrainingStage.step_state` (BatchNorm running
statistics, prototypes, ...) is restored to its value before the step.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from proca.engine.context import RunContext
from proca.engine.launch import agree_on_error, any_flag
from proca.engine.schedule import BatchPlan, LRSchedule
from proca.errors import ProcaError

__all__ = [
    "Hook",
    "LoopResult",
    "LossTerms",
    "StepContext",
    "StepResult",
    "Trainer",
    "TrainingStage",
    "accumulate_and_step",
]

LossTerms = dict[str, tuple[Tensor, float]]
"""Loss terms of one micro-batch: name -> (value, weight in the total)."""


@dataclass
class StepContext:
    """What a ``train_step`` runs on: network, optimiser, mixed precision and the batch split.

    Attributes:
        net: ``net(x) -> (features, logits)`` (DDP-wrapped under several processes).
        model: the unwrapped model (saved and evaluated).
        optimizer: the stage's optimiser.
        plan: this rank's share of the global batch (micro-batches for gradient accumulation).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
        scaler: the fp16 gradient scaler (disabled otherwise).
        channels_last: inputs in channels_last memory format.
        device: where tensors go.
        watch: tensors the step changes besides the parameters (BatchNorm statistics, prototypes); when one
            is not finite after the backward pass, the step is skipped before the optimiser step. The
            :class:`Trainer` sets it to the stage's :meth:`TrainingStage.step_state`.
    """

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    amp: str
    scaler: torch.amp.GradScaler
    channels_last: bool
    device: torch.device
    watch: Callable[[], list[Tensor]] | None = None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast for the forward pass (bf16/fp16), a no-op without AMP."""
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def images(self, batch: dict[str, Any], key: str = "image") -> Tensor:
        """The batch's images on the device (channels_last when configured)."""
        x = batch[key].to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def labels(self, batch: dict[str, Any]) -> Tensor:
        """The batch's labels on the device."""
        return batch["label"].to(self.device, non_blocking=True)


@dataclass
class StepResult:
    """The outcome of one optimiser step.

    Attributes:
        losses: each loss term (unweighted, averaged over this rank's micro-batches) and ``total``.
        skipped: name of the non-finite loss term when the step was skipped, else None.
    """

    losses: dict[str, float]
    skipped: str | None = None


def accumulate_and_step(
    sc: StepContext, micro_batches: Sequence[Any], compute: Callable[[Any], LossTerms]
) -> StepResult:
    """Forward/backward every micro-batch (gradients accumulate), then one optimiser step.

    Each micro-batch's total is multiplied by :meth:`BatchPlan.weight`, so the step's gradient is that of
    the mean over the global batch whatever the number of processes and micro-batches. DDP synchronises
    gradients only in the last backward. A non-finite term on any process skips the whole step on every
    process (no update; the gradients are dropped); so does a non-finite gradient (without the fp16 scaler, which
    skips those itself) and a non-finite tensor among ``sc.watch()``.
    """
    sc.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    n = len(micro_batches)
    local = sum(len(m) for m in sc.plan.micro_batches)
    ddp = hasattr(sc.net, "no_sync")
    for k, mb in enumerate(micro_batches):
        sync = contextlib.nullcontext() if (k == n - 1 or not ddp) else sc.net.no_sync()  # type: ignore[operator]
        with sync:
            terms = compute(mb)
            bad = next((name for name, (value, _) in terms.items() if not bool(torch.isfinite(value))), None)
            if any_flag(bad is not None, sc.device):
                sc.optimizer.zero_grad(set_to_none=True)
                return StepResult({}, skipped=bad or "a loss term on another process")
            total = sum(w * value for value, w in terms.values())
            assert isinstance(total, Tensor)
            sc.scaler.scale(total * sc.plan.weight(k)).backward()
        share = len(sc.plan.micro_batches[k]) / local
        for name, (value, _) in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) * share
        sums["total"] = sums.get("total", 0.0) + float(total.detach()) * share
    if sc.watch is not None:
        state_ok = all(bool(torch.isfinite(t).all()) for t in sc.watch() if t.is_floating_point())
        if any_flag(not state_ok, sc.device):  # e.g. a NaN target image: finite losses, NaN BatchNorm statistics
            sc.optimizer.zero_grad(set_to_none=True)
            return StepResult({}, skipped="state (BatchNorm statistics or prototypes)")
    if not sc.scaler.is_enabled():  # fp16's scaler skips steps with non-finite gradients itself
        # finite losses can still give non-finite gradients (e.g. attention over an all-zero input)
        grads = [p.grad for group in sc.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads_ok = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        if any_flag(not grads_ok, sc.device):
            sc.optimizer.zero_grad(set_to_none=True)
            return StepResult({}, skipped="gradient")
    sc.scaler.step(sc.optimizer)
    sc.scaler.update()
    return StepResult(sums)


class TrainingStage(abc.ABC):
    """A training stage: its step, its data, and the tensors it keeps besides the model's weights.

    Attributes:
        name: the stage's name (``RUN/<name>.safetensors``, ``<name>.log.jsonl``, ``state/<name>.safetensors``).
        section: its config section (``iters``, ``lr``, ``schedule_length``, ``poly_power``, ``eval_every``).
        sc: the step context (network, optimiser, batch plan, AMP).
        schedule: the learning rate per iteration (see :func:`proca.engine.setup.build_solver`).
    """

    name: str
    section: Any
    sc: StepContext
    schedule: LRSchedule | None = None
    """The learning-rate schedule (None: the section's SGD poly decay)."""

    @abc.abstractmethod
    def batches(self, start: int) -> Iterator[Any]:
        """The steps' inputs from iteration ``start`` on (this rank's micro-batches, one item per step)."""

    @abc.abstractmethod
    def train_step(self, micro_batches: Any) -> StepResult:
        """One optimiser step over this rank's micro-batches."""

    def checkpoint_tensors(self) -> dict[str, Tensor] | None:
        """Tensors saved with every checkpoint of the stage (the prototypes); None: none."""
        return None

    def state_tensors(self) -> dict[str, Tensor]:
        """Training-only tensors of the resumable state (besides the checkpoint tensors)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:  # noqa: B027 - optional
        """Restore :meth:`checkpoint_tensors` and :meth:`state_tensors` from a resumed state."""

    def synced_tensors(self) -> dict[str, dict[str, Tensor]]:
        """Groups of tensors every process must hold identically (checked at the end under several processes)."""
        tensors = self.checkpoint_tensors()
        return {"prototypes": tensors} if tensors else {}

    def kept_model(self) -> nn.Module:
        """The network validated, kept as the best and saved as ``RUN/<name>.safetensors`` (default: ``sc.model``)."""
        return self.sc.model

    def extra_metrics(self) -> dict[str, Any]:
        """More validation results logged with each validation (e.g. a second network's mIoU); default none."""
        return {}

    def step_state(self) -> list[Tensor]:
        """Tensors a step may change besides parameters and optimiser state; restored when it is skipped.

        Default: every buffer of the model (BatchNorm running statistics), the checkpoint tensors and the
        training-only state tensors.
        """
        tensors = [b for b in self.sc.model.buffers()]
        tensors += list((self.checkpoint_tensors() or {}).values())
        tensors += list(self.state_tensors().values())
        return tensors


class Hook:
    """Called by :class:`Trainer` around the loop and every step; override what is needed."""

    def before_train(self, trainer: Trainer) -> None:
        """Before the first step (resume sets ``trainer.start`` here)."""

    def before_step(self, trainer: Trainer, iteration: int) -> None:
        """Before the step that starts at ``iteration`` (0-based)."""

    def after_step(self, trainer: Trainer) -> None:
        """After a step; ``trainer.iteration`` counts completed steps, ``trainer.result`` is the step's."""

    def after_train(self, trainer: Trainer) -> None:
        """After the last step (not after an error)."""


@dataclass
class LoopResult:
    """What :meth:`Trainer.train` returns: the last validation and the best one."""

    last_metrics: dict[str, Any]
    best_miou: float | None
    best_iteration: int | None
    nonfinite_steps: int


@dataclass
class Trainer:
    """Runs ``stage.train_step`` from ``start`` to ``stage.section.iters`` and calls the hooks in order.

    Attributes set while training (read and written by hooks): ``start``, ``iteration`` (completed steps),
    ``result`` (the last :class:`StepResult`), ``lr``, ``logger``, ``best_miou``, ``best_iteration``,
    ``nonfinite_total``, ``last_metrics``.
    """

    ctx: RunContext
    stage: TrainingStage
    hooks: Sequence[Hook]
    start: int = 0
    iteration: int = 0
    result: StepResult | None = None
    lr: float = 0.0
    logger: Any = None
    best_miou: float | None = None
    best_iteration: int | None = None
    nonfinite_total: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Iterations of the stage."""
        return int(self.stage.section.iters)

    def _next(self, stream: Iterator[Any]) -> Any:
        """The next step's input; a user error while loading it on any process stops every process."""
        error: BaseException | None = None
        batch = None
        try:
            batch = next(stream)
        except ProcaError as err:
            error = err
        except RuntimeError as err:  # a ProcaError raised in a DataLoader worker comes back re-raised
            if "DataLoader worker" not in str(err):
                raise
            error = err
        agree_on_error(error, self.ctx.device)
        return batch

    def train(self) -> LoopResult:
        """Run the loop; the stage's final checkpoint is written by the checkpoint hook."""
        from proca.engine.runlog import RunLogger

        for hook in self.hooks:
            hook.before_train(self)
        self.iteration = self.start
        self.stage.sc.watch = self.stage.step_state
        self.logger = RunLogger(
            self.ctx.run_dir,
            self.stage.name,
            total=self.total,
            start=self.start,
            enabled=self.ctx.is_main,
            progress=self.ctx.progress,
        )
        try:
            stream = self.stage.batches(self.start)
            for it in range(self.start, self.total):
                for hook in self.hooks:
                    hook.before_step(self, it)
                batch = self._next(stream)
                saved = [t.detach().clone() for t in self.stage.step_state()]
                result = self.stage.train_step(batch)
                if result.skipped is not None:
                    with torch.no_grad():
                        for tensor, value in zip(self.stage.step_state(), saved, strict=True):
                            tensor.copy_(value)
                self.iteration, self.result = it + 1, result
                for hook in self.hooks:
                    hook.after_step(self)
            for hook in self.hooks:
                hook.after_train(self)
        finally:
            self.logger.close()
        return LoopResult(self.last_metrics, self.best_miou, self.best_iteration, self.nonfinite_total)
