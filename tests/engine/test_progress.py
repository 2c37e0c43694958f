"""The one progress bar: counts, info field, a resumed start, silent when disabled."""

from __future__ import annotations

import pytest

from proca.engine.progress import ProgressBar


def test_progress_bar_counts_and_fields() -> None:
    with ProgressBar(10, "stage", completed=3) as bar:
        bar.advance(2, metric="mIoU 12.50")
        task = bar._progress.tasks[0]
        assert task.completed == 5 and task.total == 10 and task.fields["info"] == "mIoU 12.50"
        bar.update(completed=8, info="loss=0.3 lr=1e-3")
        task = bar._progress.tasks[0]
        assert task.completed == 8 and task.fields["info"] == "loss=0.3 lr=1e-3"
        bar.advance()
        assert bar._progress.tasks[0].fields["info"] == "loss=0.3 lr=1e-3"  # no metric: the field stays
        bar.update(total=20)
        assert bar._progress.tasks[0].total == 20 and bar.completed == 9
    assert bar._progress is None


def test_disabled_progress_bar_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    bar = ProgressBar(4, "eval", enabled=False).start()
    bar.advance(4, metric="x")
    bar.update(completed=2, info="y")
    bar.close()
    assert bar._progress is None and bar.completed == 2
    assert capsys.readouterr() == ("", "")
