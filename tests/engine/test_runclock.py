"""The whole run's clock and the hook that measures it, with fake timings (no training)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from proca.engine.hooks import EstimateHook
from proca.engine.runclock import IMAGE_COST, STEP_COST, RunClock, StageBudget, budgets_for, format_duration


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


BUDGETS = [
    StageBudget("source", 100, 40),
    StageBudget("prototypes", 0, 160),
    StageBudget("proca", 50, 40),
    StageBudget("pseudo-label", 0, 160),
    StageBudget("ssl", 20, 40),
]


def _trainer(name: str, total: int) -> SimpleNamespace:
    return SimpleNamespace(stage=SimpleNamespace(name=name), iteration=0, total=total)


def _run_steps(hook: EstimateHook, trainer: SimpleNamespace, time: FakeTime, costs: list[float]) -> None:
    for cost in costs:
        hook.before_step(trainer, trainer.iteration)  # type: ignore[arg-type]
        time.now += cost
        trainer.iteration += 1
        hook.after_step(trainer)  # type: ignore[arg-type]


def test_format_duration() -> None:
    assert format_duration(44.6) == "45 s"
    assert format_duration(400) == "6 min 40 s"
    assert format_duration(7500) == "2 h 5 min"


def test_the_estimate_is_printed_after_a_few_measured_iterations_and_extrapolates_every_stage() -> None:
    time, lines = FakeTime(), []
    clock = RunClock(BUDGETS, start=time.now - 10, tail_images=12, say=lines.append, clock=time)  # 10 s of data
    clock.stage_started("source")
    assert lines[-1].startswith("[bold]stage 1/5 source[/]") and "ETA after the first iterations" in lines[-1]
    hook = EstimateHook(clock, warmup=1, measure=3, timer=time)
    trainer = _trainer("source", 100)
    hook.before_train(trainer)  # type: ignore[arg-type]
    _run_steps(hook, trainer, time, [5.0, 1.0, 1.0])  # the first (warm-up) step is not counted
    assert len(lines) == 1  # two counted steps: no estimate yet
    _run_steps(hook, trainer, time, [1.0])
    assert clock.step_cost["source"] == pytest.approx(1.0)
    # left: 96 source its + 50 proca + 20 ssl its at the relative costs, and every forward-only image
    images = 40 + 160 + 40 + 160 + 40 + 12
    left = 96 * 1.0 + 50 * STEP_COST["proca"] + 20 * STEP_COST["ssl"] + images * IMAGE_COST
    assert clock.remaining() == pytest.approx(left)
    elapsed = 10 + 8.0
    assert lines[-1] == (
        f"estimated total {format_duration(elapsed + left)} (measured 1.00 s/iteration; {format_duration(left)} left)"
    )
    _run_steps(hook, trainer, time, [2.0] * 3)  # the cost changes: the clock follows the running mean
    assert clock.step_cost["source"] == pytest.approx(9.0 / 6)
    assert sum("estimated total" in line for line in lines) == 1  # printed once, refreshed at stage starts


def test_finished_stages_count_with_their_time_and_measure_the_image_cost() -> None:
    time, lines = FakeTime(), []
    clock = RunClock(BUDGETS, say=lines.append, clock=time)
    clock.stage_started("source")
    clock.steps_measured("source", 2.0, 100)
    time.now += 300.0
    clock.stage_finished("source")
    clock.stage_started("prototypes")
    assert lines[-1].startswith("[bold]stage 2/5 prototypes[/]") and "elapsed 5 min 0 s" in lines[-1]
    time.now += 16.0  # 160 images: 0.1 s an image, more than the prior
    clock.stage_finished("prototypes")
    clock.stage_started("proca")
    left = 50 * 2.0 * STEP_COST["proca"] + 20 * 2.0 * STEP_COST["ssl"] + (40 + 160 + 40) * 0.1
    assert clock.remaining() == pytest.approx(left)
    assert f"ETA of the whole run {format_duration(left)}" in lines[-1]
    assert f"estimated total {format_duration(316 + left)}" in lines[-1]
    assert lines[-1].startswith("[bold]stage 3/5 proca[/]")
    clock.steps_measured("proca", 3.0, 10)  # the stage's own measurement replaces the relative cost
    assert clock.remaining() == pytest.approx(40 * 3.0 + 20 * 2.0 * STEP_COST["ssl"] + 240 * 0.1)


def test_budgets_of_the_demo_config() -> None:
    from proca.engine.demo import demo_config

    cfg = demo_config(0)
    budgets = budgets_for(
        cfg, ["source", "prototypes", "proca", "pseudo-label", "ssl"], {"source": 160, "target_train": 160, "val": 60}
    )
    assert [(b.name, b.iters, b.images) for b in budgets] == [
        ("source", cfg.source.iters, 60),  # eval_every 0: one validation at the end
        ("prototypes", 0, 160),
        ("proca", cfg.proca.iters, 60),
        ("pseudo-label", 0, 160),
        ("ssl", cfg.ssl.iters, 60),
    ]
    paper = cfg.model_copy(update={"source": cfg.source.model_copy(update={"iters": 2500, "eval_every": 1000})})
    assert budgets_for(paper, ["source"], {"val": 10})[0].images == 30  # at 1000, 2000 and the end


def test_count_images_of_the_synthetic_layout(tmp_path: Path) -> None:
    from proca.data.synthetic import write_synthetic_datasets
    from proca.engine.runclock import count_images

    write_synthetic_datasets(tmp_path, seed=0, num_train=3, num_val=2, size=(32, 64), progress=False)
    assert count_images(tmp_path, "gtav") == {"source": 3, "target_train": 3, "val": 2}
    assert count_images(tmp_path / "nowhere", "gtav") == {"source": 0, "target_train": 0, "val": 0}


def test_stages_shorter_than_the_warm_up_still_give_an_estimate() -> None:
    time, lines = FakeTime(), []
    clock = RunClock([StageBudget("source", 1, 0), StageBudget("prototypes", 0, 10), StageBudget("proca", 1, 0)],
                     say=lines.append, clock=time)  # fmt: skip
    clock.stage_started("prototypes")  # forward-only cost known, no iteration measured: no ETA, no error
    time.now += 1.0
    clock.stage_finished("prototypes")
    assert clock.remaining() is None and "ETA after the first iterations" in clock.line()
    clock.stage_started("source")
    hook = EstimateHook(clock, warmup=1, measure=3, timer=time)
    trainer = _trainer("source", 1)
    hook.before_train(trainer)  # type: ignore[arg-type]
    _run_steps(hook, trainer, time, [2.0])  # the only step is the warm-up one: reported at the end
    assert clock.step_cost["source"] == pytest.approx(2.0) and "estimated total" in lines[-1]
