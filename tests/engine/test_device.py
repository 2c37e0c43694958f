"""Device names and the CPU count that caps DataLoader workers."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from proca.engine import device as D
from proca.engine.loop import default_num_workers


def test_usable_cpus_follows_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert D.usable_cpus() == 3


def test_usable_cpus_falls_back_to_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert D.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert D.usable_cpus() == 1


def test_cap_workers_lowers_and_says_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    lines: list[str] = []
    assert D.cap_workers(8, say=lines.append) == 2
    assert lines == ["DataLoader workers: 8 requested, 2 CPU(s) usable by this process; using 2."]
    assert D.cap_workers(2, say=lines.append) == 2 and D.cap_workers(0, say=lines.append) == 0
    assert len(lines) == 1
    assert D.cap_workers(8, say=None) == 2


def test_cap_workers_default_prints_one_stderr_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a line on stderr, not a warning with a source path
        assert D.cap_workers(4) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "DataLoader workers: 4 requested, 1 CPU(s) usable by this process; using 1."


def test_default_num_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_num_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_num_workers(torch.device("cuda")) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert default_num_workers(torch.device("cuda")) == 4


def test_evaluate_caps_requested_workers(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from proca.data.classes import CITYSCAPES_19
    from proca.engine.evaluate import evaluate

    class Tiny(torch.nn.Module):
        num_classes = 19

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 19, *x.shape[-2:])

    data = [{"image": torch.zeros(3, 4, 8), "label": torch.zeros(4, 8, dtype=torch.long), "name": "a"}]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    seen: dict[str, int] = {}
    import proca.engine.evaluate as E

    real = E.iterate_batches

    def spy(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        seen["workers"] = int(kw["num_workers"])  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(E, "iterate_batches", spy)
    result = evaluate(Tiny(), data, class_set=CITYSCAPES_19, input_size=None, num_workers=0, progress=False)
    assert result.num_images == 1 and seen["workers"] == 0
    evaluate(Tiny(), data, class_set=CITYSCAPES_19, input_size=None, num_workers=3, progress=False)
    assert seen["workers"] == 1
    assert "3 requested, 1 CPU(s) usable" in capsys.readouterr().err
