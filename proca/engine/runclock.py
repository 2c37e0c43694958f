"""The whole run's clock: ``stage k/N``, elapsed time and an estimate of the time left, from measured costs.

A run (``proca train`` of several stages, ``proca demo``) is a list of :class:`StageBudget`: the training
iterations of each stage and the images it runs the network over without training (validation, prototype
initialisation, pseudo labels). The clock prices them with two unit costs measured on this machine while
the run goes on:

- **seconds per iteration** of each training stage, measured by :class:`proca.engine.hooks.EstimateHook`
  after a few iterations (the first iteration, which pays one-off start-up costs, is not counted). A stage
  not measured yet is priced from a measured one with :data:`STEP_COST` (relative costs per iteration);
- **seconds per image** of a forward-only pass, measured from the finished prototype and pseudo-label
  stages; before those, priced at :data:`IMAGE_COST` source iterations.

Finished stages count with their real time. The estimate is printed once the first stage has measured its
iterations and again at every stage start, so it improves as the run goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_COST",
    "STEP_COST",
    "RunClock",
    "StageBudget",
    "budgets_for",
    "count_images",
    "format_duration",
]

STEP_COST = {"source": 1.0, "proca": 1.04, "ssl": 0.87}
"""Seconds per iteration of each training stage relative to a source iteration, measured on the CPU with the
ResNet-18 demo model at 96x192 (source 1.43, ProCA 1.48, self-training 1.24 CPU-s; docs/demo.md)."""

IMAGE_COST = 0.045
"""A forward-only image (validation, prototypes, pseudo labels) in source iterations (same measurements:
prototypes 160 images in ~10 s, pseudo labels ~11.5 s, one 60-image validation 4.2 s at 1.43 s/iteration)."""


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"6 min 40 s"``, ``"2 h 5 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"


@dataclass(frozen=True)
class StageBudget:
    """The work of one stage: ``iters`` training iterations and ``images`` forward-only images."""

    name: str
    iters: int = 0
    images: int = 0


def _validations(iters: int, eval_every: int) -> int:
    """Validations of a training stage: every ``eval_every`` iterations and once at the end."""
    every = int(eval_every or 0)
    marks = set(range(every, iters + 1, every)) if every > 0 else set()
    return len(marks | {iters}) if iters > 0 else 0


def count_images(data_root: Path, src: str) -> dict[str, int]:
    """Images of the source train set and of the Cityscapes train and val splits (0 where not found)."""
    root = Path(data_root)
    city = root / "cityscapes" / "leftImg8bit"
    source = {"gtav": root / "gtav" / "images", "synthia": root / "synthia" / "RAND_CITYSCAPES" / "RGB"}.get(src)

    def pngs(folder: Path | None, pattern: str) -> int:
        return sum(1 for _ in folder.glob(pattern)) if folder is not None and folder.is_dir() else 0

    return {
        "source": pngs(source, "*.png"),
        "target_train": pngs(city / "train", "*/*.png"),
        "val": pngs(city / "val", "*/*.png"),
    }


def budgets_for(cfg: Any, stages: Sequence[str], images: dict[str, int]) -> list[StageBudget]:
    """The budget of each of ``stages`` under ``cfg``, with ``images`` as counted by :func:`count_images`."""
    val = images.get("val", 0)
    if cfg.eval.max_images is not None:
        val = min(val, int(cfg.eval.max_images))
    val *= len(cfg.eval.scales) * (2 if cfg.eval.flip else 1)
    out = []
    for stage in stages:
        if stage in ("source", "proca", "ssl"):
            section = getattr(cfg, stage)
            iters = int(section.iters)
            out.append(StageBudget(stage, iters, val * _validations(iters, section.eval_every)))
        elif stage == "prototypes":
            count = images.get("source", 0)
            if cfg.prototypes.max_images is not None:
                count = min(count, int(cfg.prototypes.max_images))
            out.append(StageBudget(stage, 0, 0 if cfg.method == "memory-bank" else count))
        else:  # pseudo labels: the target train split
            out.append(StageBudget(stage, 0, images.get("target_train", 0)))
    return out


class RunClock:
    """The run's stages, what they cost so far, and the estimate of the rest.

    Args:
        budgets: the stages to run, in order.
        start: ``clock()`` value when the run started (default: now); work before the first stage, such as
            writing the demo's data, counts in the elapsed time.
        tail_images: forward-only images after the last stage (the demo's example strips).
        say: prints one line (rank 0 only; a no-op elsewhere).
        clock: the time source (seconds).
    """

    def __init__(
        self,
        budgets: Sequence[StageBudget],
        *,
        start: float | None = None,
        tail_images: int = 0,
        say: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budgets = list(budgets)
        self.clock = clock
        self.start = clock() if start is None else start
        self.tail_images = tail_images
        self.say = say or (lambda message: None)
        self.step_cost: dict[str, float] = {}
        self.image_seconds: list[tuple[int, float]] = []
        self.done: dict[str, float] = {}
        self.current: str | None = None
        self.current_start = self.start
        self.current_done = 0
        self.announced = False

    # ------------------------------------------------------------------ what the run reports

    def stage_started(self, name: str) -> None:
        """A stage starts: print ``stage k/N name, elapsed, ETA``."""
        self.current, self.current_start, self.current_done = name, self.clock(), 0
        self.say(self.line())

    def steps_measured(self, name: str, seconds_per_iter: float, done: int) -> None:
        """The measured cost of ``name``'s iterations so far, with ``done`` iterations completed.

        The first measurement of the run prints ``estimated total ... (measured ... s/iteration)``.
        """
        self.step_cost[name] = seconds_per_iter
        if name == self.current:
            self.current_done = done
        if not self.announced:
            self.announced = True
            remaining = self.remaining() or 0.0
            total = self.elapsed() + remaining
            self.say(
                f"estimated total {format_duration(total)} (measured {seconds_per_iter:.2f} s/iteration; "
                f"{format_duration(remaining)} left)"
            )

    def stage_finished(self, name: str) -> None:
        """A stage ended: its real time replaces its estimate; forward-only stages measure the image cost."""
        seconds = self.clock() - self.current_start
        self.done[name] = seconds
        budget = self._budget(name)
        if budget is not None and budget.iters == 0 and budget.images > 0:
            self.image_seconds.append((budget.images, seconds))
        self.current = None

    # ------------------------------------------------------------------ the estimate

    def elapsed(self) -> float:
        return self.clock() - self.start

    def _budget(self, name: str) -> StageBudget | None:
        return next((b for b in self.budgets if b.name == name), None)

    def _source_step(self) -> float | None:
        """Seconds of a source iteration: measured, else derived from another measured stage."""
        if "source" in self.step_cost:
            return self.step_cost["source"]
        for name, cost in self.step_cost.items():
            return cost / STEP_COST.get(name, 1.0)
        return None

    def _step(self, name: str) -> float | None:
        if name in self.step_cost:
            return self.step_cost[name]
        base = self._source_step()
        return None if base is None else base * STEP_COST.get(name, 1.0)

    def _image(self) -> float | None:
        if self.image_seconds:
            images = sum(n for n, _ in self.image_seconds)
            return sum(s for _, s in self.image_seconds) / images
        base = self._source_step()
        return None if base is None else base * IMAGE_COST

    def remaining(self) -> float | None:
        """Estimated seconds left (None until a stage has measured its iterations)."""
        image = self._image()
        if image is None:
            return None
        left = self.tail_images * image
        for budget in self.budgets:
            if budget.name in self.done:
                continue
            step = self._step(budget.name) if budget.iters else 0.0
            if step is None:  # no training stage measured yet (e.g. every stage shorter than its warm-up)
                return None
            iters = budget.iters
            if budget.name == self.current:
                iters -= self.current_done
                if not budget.iters:  # a forward-only stage under way: what it has spent counts as done
                    left -= min(self.clock() - self.current_start, budget.images * image)
            left += iters * step + budget.images * image
        return max(0.0, left)

    def line(self) -> str:
        """``stage k/N name, elapsed ..., ETA of the whole run ...`` (the ETA once costs are measured)."""
        names = [b.name for b in self.budgets]
        parts = []
        if self.current in names:
            parts.append(f"[bold]stage {names.index(self.current) + 1}/{len(names)} {self.current}[/]")
        parts.append(f"elapsed {format_duration(self.elapsed())}")
        remaining = self.remaining()
        if remaining is None:
            parts.append("ETA after the first iterations")
        else:
            total = format_duration(self.elapsed() + remaining)
            parts.append(f"ETA of the whole run {format_duration(remaining)} (estimated total {total})")
        return ", ".join(parts)

    def finished_line(self) -> str:
        """The last line: every stage done, in how long."""
        return f"all {len(self.budgets)} stages done, elapsed {format_duration(self.elapsed())}"
