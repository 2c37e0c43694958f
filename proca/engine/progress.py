"""One rich progress bar for every proca loop: evaluation, pseudo labels, inference, training stages."""

from __future__ import annotations

from types import TracebackType
from typing import Any

__all__ = ["ProgressBar"]


class ProgressBar:
    """A rich progress bar: description, bar, ``done/total``, elapsed time, ETA and one info field.

    Silent (every method does nothing) when ``enabled`` is false, e.g. on ranks other than 0. Use it as a
    context manager, or call :meth:`start` and :meth:`close`.

    Args:
        total: steps (images, iterations) of the whole task.
        description: the bold text in front of the bar.
        completed: steps already done (a resumed stage starts there).
        enabled: show the bar.
        elapsed: show the elapsed-time column.

    Example:
        >>> with ProgressBar(100, "eval", enabled=False) as bar:
        ...     bar.advance(4, metric="mIoU 51.20")
        ...     bar.update(completed=10, info="loss=0.31 lr=2.5e-4")
    """

    def __init__(
        self, total: int, description: str, *, completed: int = 0, enabled: bool = True, elapsed: bool = True
    ) -> None:
        self.total = total
        self.description = description
        self.completed = completed
        self.enabled = enabled
        self.elapsed = elapsed
        self._progress: Any = None
        self._task: Any = None

    def start(self) -> ProgressBar:
        """Show the bar (no-op when disabled or already shown)."""
        if self.enabled and self._progress is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
            if self.elapsed:
                columns.append(TimeElapsedColumn())
            columns += [TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
            self._progress = Progress(*columns)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.completed, info="")
        return self

    def advance(self, n: int = 1, metric: str | None = None) -> None:
        """Count ``n`` more steps done; ``metric`` (when given) replaces the info field."""
        self.completed += n
        if self._progress is not None:
            fields = {} if metric is None else {"info": metric}
            self._progress.update(self._task, advance=n, **fields)

    def update(self, *, completed: int | None = None, info: str | None = None, total: int | None = None) -> None:
        """Move the bar to ``completed`` steps, replace the info field, or change the total."""
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if self._progress is not None:
            fields: dict[str, Any] = {}
            if completed is not None:
                fields["completed"] = completed
            if info is not None:
                fields["info"] = info
            if total is not None:
                fields["total"] = total
            self._progress.update(self._task, **fields)

    def close(self) -> None:
        """Stop showing the bar (it stays on screen at its last state)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
