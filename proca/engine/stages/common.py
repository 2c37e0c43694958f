"""What every training stage shares: the run context, data streams, model set-up and the training loop.

A training stage is one documented ``train_step`` (see :mod:`.source`, :mod:`.adapt`, :mod:`.selftrain`)
called by :func:`run_training_loop`, which owns the schedule, logging, validation, checkpointing and
resume; none of those live inside a step.

Determinism: every sample's augmentation is seeded from ``(seed, stream, position in the stream)``
(:class:`SeededSamples`), and the streams of dataset indices are pure functions of their position
(:class:`StepBatchSampler`). So the data of step ``t`` does not depend on the number of DataLoader
workers, the number of processes, or on whether the run was interrupted: resuming at step ``t``
rebuilds exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from proca.config import TrainConfig
from proca.data.classes import ClassSet, get_class_set
from proca.engine.launch import DistInfo, all_reduce_mean, any_flag, barrier
from proca.engine.runlog import RunLogger, truncate_log
from proca.engine.schedule import BatchPlan, plan_batch, poly_lr, set_lr
from proca.engine.state import load_training_state, restore_rng, save_training_state
from proca.errors import CheckpointError, DataError, ProcaError
from proca.models.deeplabv2 import DeepLabV2

__all__ = [
    "STREAM_IDS",
    "FeaturesForward",
    "LoopResult",
    "LossTerms",
    "RunContext",
    "SeededSamples",
    "StepBatchSampler",
    "StepContext",
    "StepResult",
    "accumulate_and_step",
    "build_optimizer",
    "build_stage_model",
    "class_balanced_stream",
    "evaluate_model",
    "make_loader",
    "make_plan",
    "make_scaler",
    "prepare_for_training",
    "prototypes_identical",
    "run_training_loop",
    "sample_seed",
    "save_model_file",
    "supervised_loss",
    "uniform_stream",
]

STREAM_IDS = {"source": 1, "proca_source": 2, "proca_target": 3, "ssl": 4, "memory_bank": 5}
"""Seed streams of the training stages' data (part of every sample's seed) and of the memory bank's sampling."""


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
    """

    cfg: TrainConfig
    run_dir: Path
    data_root: Path
    dist: DistInfo = field(default_factory=DistInfo)
    backbone_weights: Path | None = None
    progress: bool = True
    label_info: Path | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.dist.device

    @property
    def class_set(self) -> ClassSet:
        """The classes of the run."""
        return get_class_set(self.cfg.class_set)

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


# ---------------------------------------------------------------------------------------------- data


def sample_seed(seed: int, stream: int, position: int) -> int:
    """The seed of the sample at ``position`` of data stream ``stream`` (independent of workers and ranks)."""
    return int(np.random.SeedSequence([seed, stream, 0, position]).generate_state(1, np.uint32)[0])


def uniform_stream(num_items: int, *, seed: int, stream: int) -> Callable[[int, int], np.ndarray]:
    """A shuffled stream over ``num_items`` (a fresh permutation per epoch), addressable by position.

    Returns:
        ``fetch(begin, end)`` giving the dataset indices at stream positions ``begin .. end - 1``.
    """
    if num_items <= 0:
        raise DataError("a training dataset is empty; check --data-root.")
    cache: dict[int, np.ndarray] = {}

    def perm(epoch: int) -> np.ndarray:
        if epoch not in cache:
            if len(cache) > 4:
                cache.clear()
            rng = np.random.default_rng(np.random.SeedSequence([seed, stream, 1, epoch]))
            cache[epoch] = rng.permutation(num_items)
        return cache[epoch]

    def fetch(begin: int, end: int) -> np.ndarray:
        return np.array([perm(p // num_items)[p % num_items] for p in range(begin, end)], dtype=np.int64)

    return fetch


def class_balanced_stream(sampler: Any) -> Callable[[int, int], np.ndarray]:
    """Wrap a :class:`proca.data.sampler.ClassBalancedSampler` (common stream) as ``fetch(begin, end)``."""

    def fetch(begin: int, end: int) -> np.ndarray:
        return np.asarray(sampler.stream(begin, end), dtype=np.int64)

    return fetch


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced with all RNGs seeded by ``seed``.

    The transforms draw from torch's (and possibly Python's and NumPy's) global RNG; here those are
    seeded per sample and restored afterwards, so the caller's RNG states are untouched.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
                return self.dataset[int(index)]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start .. end - 1``, this rank's micro-batches of ``(dataset index, sample seed)``.

    Step ``t`` uses stream positions ``t * B .. (t + 1) * B - 1`` (B = the global batch); position ``j``
    of a step goes to the rank and micro-batch :class:`~proca.engine.schedule.BatchPlan` assigns.
    """

    def __init__(
        self, fetch: Callable[[int, int], np.ndarray], plan: BatchPlan, *, start: int, end: int, seed: int, stream: int
    ) -> None:
        self.fetch = fetch
        self.plan = plan
        self.start = start
        self.end = end
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.plan.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.plan.global_batch
        for step in range(self.start, self.end):
            indices = self.fetch(step * b, (step + 1) * b)
            for micro in self.plan.micro_batches:
                yield [(int(indices[j]), sample_seed(self.seed, self.stream, step * b + j)) for j in micro]


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": torch.stack([s["image"].as_subclass(Tensor) for s in samples])}
    if "label" in samples[0]:
        out["label"] = torch.stack([s["label"].as_subclass(Tensor).long() for s in samples])
    out["name"] = [s.get("name", "") for s in samples]
    return out


def make_loader(
    dataset: Dataset, sampler: StepBatchSampler, *, num_workers: int, device: torch.device
) -> Iterator[dict[str, Any]]:
    """A DataLoader over ``SeededSamples(dataset)`` driven by ``sampler`` (one item per micro-batch)."""
    loader = DataLoader(
        SeededSamples(dataset),
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
    return iter(loader)


# --------------------------------------------------------------------------------------------- model


class FeaturesForward(nn.Module):
    """``forward(x) = model.forward_features(x)``, so DDP (which wraps ``forward``) sees both outputs.

    With a ``head`` (the memory-bank variant's projection head) the output is ``(features, logits,
    head(features))``, so the head trains inside the same DDP module.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        features, logits = self.model.forward_features(x)  # type: ignore[operator]
        if self.head is None:
            return features, logits
        return features, logits, self.head(features)


def build_stage_model(ctx: RunContext, init: Path | None, *, imagenet: bool = True) -> DeepLabV2:
    """A model for a stage: loaded from a previous stage's checkpoint, or freshly built.

    Args:
        ctx: run context (architecture, classes, backbone weights).
        init: checkpoint to start from (None: a fresh model).
        imagenet: for a fresh model, load ``ctx.backbone_weights`` (random init with a warning when None).
    """
    from proca.models import build_model, load_model

    cfg = ctx.cfg
    if init is not None:
        loaded = load_model(init)
        model = loaded.model
        if model.arch != cfg.arch or model.num_classes != cfg.num_classes:
            raise CheckpointError(
                f"{init} holds {model.arch} with {model.num_classes} classes but the run is {cfg.arch} with "
                f"{cfg.num_classes}; use --force to start the run over."
            )
        return model
    weights = ctx.backbone_weights if imagenet else None
    if weights is None and imagenet:
        message = (
            f"no --backbone-weights: {cfg.arch} starts from random weights; the paper's numbers need the "
            "ImageNet weights (e.g. resnet101-5d3b4d8f.pth)."
        )
        if ctx.is_main:
            warnings.warn(message, stacklevel=2)
    return build_model(cfg.arch, num_classes=cfg.num_classes, backbone_weights=weights, norm=cfg.norm)


def prepare_for_training(ctx: RunContext, model: nn.Module, head: nn.Module | None = None) -> nn.Module:
    """Move to the device, train mode, channels_last, SyncBatchNorm + DDP under several processes.

    Args:
        ctx: run context.
        model: the segmentation model.
        head: an extra module on the features trained with the model (the memory-bank projection head).

    Returns:
        The network to call in train steps: ``net(x) -> (features, logits)`` (``(features, logits,
        embeddings)`` with a ``head``). ``model`` stays the unwrapped module to save and evaluate.
    """
    modules = [model] if head is None else [model, head]
    for module in modules:
        module.to(ctx.device)
        if ctx.cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        module.train()
    net: nn.Module = FeaturesForward(model, head)
    if ctx.dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        if ctx.device.type != "cpu":
            # SyncBatchNorm needs an accelerator; on CPU (gloo) each process normalises its own share.
            # A frozen-norm model keeps its BatchNorm; the head's BatchNorm always trains.
            for module in modules if ctx.cfg.norm != "frozen" else modules[1:]:
                converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
                assert converted is module
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Each step runs two forward passes (source, target) before one backward. On CUDA, cuDNN's
        # batch norm saves the running statistics for backward, and DDP's buffer broadcast at the
        # second forward modifies them in place: autograd then fails ("modified by an inplace
        # operation", measured on an H100 with NCCL). SyncBatchNorm keeps the statistics equal on
        # every rank there anyway, so buffers are broadcast only on CPU (gloo, no SyncBatchNorm).
        net = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=ctx.device.type == "cpu")
    return net


def build_optimizer(model: DeepLabV2, section: Any) -> torch.optim.SGD:
    """SGD with the release's groups: backbone at lr, head at ``head_lr_mult`` x lr, momentum, weight decay."""
    groups = model.param_groups(section.lr, head_lr_mult=section.head_lr_mult, weight_decay=section.weight_decay)
    return torch.optim.SGD(groups, lr=section.lr, momentum=section.momentum, weight_decay=section.weight_decay)


# ---------------------------------------------------------------------------------------------- step


@dataclass
class StepContext:
    """What a ``train_step`` needs: network, optimiser, mixed precision and the batch split.

    Attributes:
        net: ``net(x) -> (features, logits)`` (DDP-wrapped under several processes).
        model: the unwrapped model.
        optimizer: SGD.
        plan: this rank's share of the global batch (micro-batches for gradient accumulation).
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
        scaler: the fp16 gradient scaler (disabled otherwise).
        channels_last: inputs in channels_last memory format.
        device: where tensors go.
        extra: stage-specific state (prototype estimators, losses).
    """

    net: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    amp: str
    scaler: torch.amp.GradScaler
    channels_last: bool
    device: torch.device
    extra: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class StepResult:
    """The outcome of one optimiser step.

    Attributes:
        losses: each loss term (unweighted, averaged over this rank's micro-batches) and ``total``.
        skipped: name of the non-finite loss term when the step was skipped, else None.
    """

    losses: dict[str, float]
    skipped: str | None = None


LossTerms = dict[str, tuple[Tensor, float]]
"""Loss terms of one micro-batch: name -> (value, weight in the total)."""


def accumulate_and_step(
    sc: StepContext, micro_batches: Sequence[Any], compute: Callable[[Any], LossTerms]
) -> StepResult:
    """Forward/backward every micro-batch (gradients accumulate), then one optimiser step.

    Each micro-batch's total is multiplied by :meth:`BatchPlan.weight`, so the step's gradient is that of
    the mean over the global batch whatever the number of processes and micro-batches. DDP synchronises
    gradients only in the last backward. A non-finite term on any process skips the whole step on every
    process (no update; the gradients are dropped).
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
    sc.scaler.step(sc.optimizer)
    sc.scaler.update()
    return StepResult(sums)


def supervised_loss(logits: Tensor, labels: Tensor, lovasz_weight: float) -> LossTerms:
    """The release's supervised loss: CE + ``lovasz_weight`` * Lovasz-softmax, on logits upsampled to the labels.

    Logits are upsampled bilinearly (``align_corners=True``) to the label size and computed in float32.

    Shape:
        logits (B, C, h, w); labels (B, H, W).
    """
    from proca.losses import lovasz_softmax

    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    terms: LossTerms = {"ce": (F.cross_entropy(up, labels, ignore_index=255), 1.0)}
    if lovasz_weight > 0:
        terms["lovasz"] = (lovasz_softmax(F.softmax(up, dim=1), labels, ignore_index=255), lovasz_weight)
    return terms


# ----------------------------------------------------------------------------------------- evaluation


def evaluate_model(ctx: RunContext, model: nn.Module, *, progress: bool | None = None) -> dict[str, Any]:
    """Validate ``model`` on the target val split (every process evaluates its share; metrics all-reduced).

    Returns:
        ``{"miou": percent, "per_class": {...}}`` (plus ``miou13`` for SYNTHIA classes).
    """
    from proca.data.datasets import CityscapesDataset
    from proca.engine.evaluate import evaluate

    cfg = ctx.cfg
    dataset: Dataset = CityscapesDataset(ctx.data_root / "cityscapes", split="val", class_set=ctx.class_set)
    if cfg.eval.max_images is not None and cfg.eval.max_images < len(dataset):  # type: ignore[arg-type]
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


# ---------------------------------------------------------------------------------------------- loop


@dataclass
class LoopResult:
    """What :func:`run_training_loop` returns: the last validation and the best one."""

    last_metrics: dict[str, Any]
    best_miou: float | None
    best_iteration: int | None
    nonfinite_steps: int


def _checkpoint_metadata(ctx: RunContext, stage: str, iteration: int, metrics: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg
    return {
        "stage": stage,
        "iteration": iteration,
        "class_set": cfg.class_set,
        "class_names": list(ctx.class_set.classes),
        "eval_input_size": list(cfg.eval.input_size),
        "config": cfg.model_dump(mode="json"),
        "metrics": dict(metrics),
    }


def run_training_loop(
    ctx: RunContext,
    *,
    stage: str,
    section: Any,
    sc: StepContext,
    batches: Callable[[int], Iterator[Any]],
    train_step: Callable[[StepContext, Any], StepResult],
    prototypes: Callable[[], dict[str, Tensor]] | None = None,
    load_extra: Callable[[dict[str, Tensor]], None] | None = None,
    state_extra: Callable[[], dict[str, Tensor]] | None = None,
    synced: tuple[str, Callable[[], dict[str, Tensor]]] | None = None,
) -> LoopResult:
    """Run ``train_step`` from the resumed (or first) iteration to ``section.iters``, with everything around it.

    Around each step: the poly learning rate; logging every ``log_every`` steps; validation every
    ``section.eval_every`` steps and at the end (best checkpoint ``RUN/<stage>.best.safetensors``);
    resumable state ``RUN/state/<stage>.safetensors`` every ``checkpoint_every`` steps; the final
    ``RUN/<stage>.safetensors`` at the end (then the state file is removed). Non-finite losses skip the
    step; ``max_nonfinite`` of them in a row stop the run.

    Args:
        ctx: run context.
        stage: stage name (file names).
        section: the stage's config section (iters, schedule, eval_every, ...).
        sc: the step context.
        batches: ``batches(start)`` -> iterator over the steps' inputs from iteration ``start``.
        train_step: the stage's step.
        prototypes: tensors saved with the checkpoints and the state (prototype buffers).
        load_extra: restores those tensors (and ``state_extra``'s) from a resumed state.
        state_extra: tensors saved in the resumable state only, not in the checkpoints (training-only
            state such as the memory-bank variant's projection head and queues).
        synced: ``(name, tensors)``: tensors every process must hold identically, checked at the end under
            several processes (event ``<name>_synced``), besides the prototypes.
    """
    cfg = ctx.cfg
    state_path = ctx.path(f"state/{stage}.safetensors")
    final_path = ctx.path(f"{stage}.safetensors")
    best_path = ctx.path(f"{stage}.best.safetensors")
    start, best, best_it, nonfinite_total = 0, None, None, 0
    last_metrics: dict[str, Any] = {}
    if ctx.dist.is_main and state_path.parent.is_dir():
        # temporary files of a save interrupted by a kill: never valid, each as large as a checkpoint
        for leftover in state_path.parent.glob(f".{state_path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    if state_path.is_file():
        try:
            state = load_training_state(state_path)
        except CheckpointError as err:
            raise CheckpointError(
                f"{err}; delete {state_path} to restart the stage {stage!r} from its beginning, or use --force"
            ) from None
        if state.info.get("stage") != stage:
            raise CheckpointError(f"{state_path} belongs to stage {state.info.get('stage')!r}; use --force.")
        sc.model.load_state_dict(state.model)
        sc.optimizer.load_state_dict(state.optimizer)
        if load_extra is not None:
            load_extra(state.extra)
        restore_rng(state.rng)
        start = int(state.info["iteration"])
        best, best_it = state.info.get("best_miou"), state.info.get("best_iteration")
        nonfinite_total = int(state.info.get("nonfinite_total", 0))
        last_metrics = state.info.get("last_metrics", {})
        if "scaler" in state.info and sc.scaler.is_enabled():
            sc.scaler.load_state_dict(state.info["scaler"])
        if ctx.is_main:
            truncate_log(ctx.path(f"{stage}.log.jsonl"), start)
        ctx.say(f"{stage}: resuming at iteration {start} of {section.iters}")
    barrier()
    logger = RunLogger(ctx.run_dir, stage, total=section.iters, start=start, enabled=ctx.is_main, progress=ctx.progress)
    in_a_row = 0
    try:
        stream = batches(start)
        for it in range(start, section.iters):
            lr = poly_lr(section.lr, it, section.schedule_length, section.poly_power)
            set_lr(sc.optimizer, lr)
            result = train_step(sc, next(stream))
            done = it + 1
            if result.skipped is not None:
                in_a_row += 1
                nonfinite_total += 1
                logger.log_event(done, "nonfinite", term=result.skipped, in_a_row=in_a_row)
                if in_a_row >= cfg.max_nonfinite:
                    raise ProcaError(
                        f"{stage}: the loss term {result.skipped!r} was not finite in {in_a_row} steps in a row "
                        f"(last at iteration {done}); lower the learning rate (--set {stage}.lr=...) or check the "
                        "data, then --resume."
                    )
            else:
                in_a_row = 0
            if result.skipped is None and (done % cfg.log_every == 0 or done == section.iters):
                losses = all_reduce_mean(result.losses, ctx.device) if result.losses else {}
                logger.log_step(done, losses, lr, nonfinite_total=nonfinite_total)
            else:
                logger.advance(done)
            evaluate_now = done == section.iters or (section.eval_every and done % section.eval_every == 0)
            if evaluate_now:
                last_metrics = evaluate_model(ctx, sc.model, progress=False)
                logger.log_eval(done, {k: v for k, v in last_metrics.items() if k != "per_class"})
                if best is None or last_metrics["miou"] > best:
                    best, best_it = last_metrics["miou"], done
                    if ctx.is_main:
                        save_model_file(ctx, sc.model, best_path, stage, done, last_metrics, prototypes)
                sc.model.train()
                logger.reset_timer(done)
            if done % cfg.checkpoint_every == 0 and done < section.iters:
                if ctx.is_main:
                    info = {
                        "stage": stage,
                        "iteration": done,
                        # the data streams are addressed by position: step t reads positions t*B .. t*B+B-1
                        "stream_position": done * sc.plan.global_batch,
                        "world_size": sc.plan.world_size,
                        "best_miou": best,
                        "best_iteration": best_it,
                        "nonfinite_total": nonfinite_total,
                        "last_metrics": last_metrics,
                        "time": time.time(),
                    }
                    if sc.scaler.is_enabled():
                        info["scaler"] = sc.scaler.state_dict()
                    extra = prototypes() if prototypes is not None else {}
                    if state_extra is not None:
                        extra = {**extra, **state_extra()}
                    save_training_state(
                        state_path, model=sc.model, optimizer=sc.optimizer, info=info, extra=extra or None
                    )
                barrier()
                logger.reset_timer(done)
        if prototypes is not None and ctx.dist.distributed:
            logger.log_event(section.iters, "prototypes_synced", identical=prototypes_identical(prototypes()))
        if synced is not None and ctx.dist.distributed:
            logger.log_event(section.iters, f"{synced[0]}_synced", identical=prototypes_identical(synced[1]()))
        if ctx.is_main:
            save_model_file(ctx, sc.model, final_path, stage, section.iters, last_metrics, prototypes)
            state_path.unlink(missing_ok=True)
        barrier()
    finally:
        logger.close()
    return LoopResult(last_metrics, best, best_it, nonfinite_total)


def prototypes_identical(tensors: dict[str, Tensor]) -> bool:
    """True when every process holds exactly rank 0's prototype tensors (a check of the all-reduce)."""
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


def save_model_file(
    ctx: RunContext,
    model: nn.Module,
    path: Path,
    stage: str,
    iteration: int,
    metrics: dict[str, Any],
    prototypes: Callable[[], dict[str, Tensor]] | None,
) -> None:
    """Write a stage checkpoint with the run's metadata (resolved config included)."""
    from proca.models import save_model

    save_model(
        model,  # type: ignore[arg-type]
        path,
        metadata=_checkpoint_metadata(ctx, stage, iteration, metrics),
        prototypes=prototypes() if prototypes is not None else None,
    )


def make_plan(ctx: RunContext, global_batch: int, per_device: int | None) -> BatchPlan:
    """This rank's share of a global batch."""
    return plan_batch(global_batch, ctx.dist.world_size, ctx.dist.rank, per_device)


def make_scaler(ctx: RunContext) -> torch.amp.GradScaler:
    """The fp16 gradient scaler (disabled for fp32 and bf16)."""
    return torch.amp.GradScaler(ctx.device.type, enabled=ctx.cfg.amp == "fp16")
