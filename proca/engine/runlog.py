"""Per-stage training logs: a rich progress bar, ``RUN/<stage>.log.jsonl`` and optional TensorBoard events.

The JSONL file holds one object per logged step (``iteration``, each loss, ``lr``, ``sec_per_iter``)
and one per validation (``"event": "eval"``). Lines are appended and flushed; after a kill the last
line may be partial, and :func:`truncate_log` (called on resume) rewrites the file atomically with
only the complete records up to the resumed iteration. TensorBoard is used when the optional
``tensorboard`` package is installed; nothing changes without it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from proca.io import atomic_write_text

__all__ = ["RunLogger", "read_log", "truncate_log"]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The complete JSON records of a ``.log.jsonl`` file (a partial last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_log(path: str | Path, max_iteration: int) -> None:
    """Keep only the complete records with ``iteration <= max_iteration`` (used when resuming)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_log(path) if int(r.get("iteration", 0)) <= max_iteration]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Progress bar, JSONL records and TensorBoard scalars of one stage (active on rank 0 only).

    Args:
        run_dir: the run folder.
        stage: stage name (file ``<stage>.log.jsonl``, TensorBoard folder ``tb/<stage>``).
        total: iterations of the stage.
        start: iteration to start from (resume).
        enabled: False on ranks other than 0: every method does nothing.
        progress: show the rich progress bar.
    """

    def __init__(
        self, run_dir: Path, stage: str, *, total: int, start: int = 0, enabled: bool = True, progress: bool = True
    ) -> None:
        self.enabled = enabled
        self.stage = stage
        self.path = Path(run_dir) / f"{stage}.log.jsonl"
        self._file: IO[str] | None = None
        self._tb: Any = None
        self._progress: Any = None
        self._last_time = time.perf_counter()
        self._last_iter = start
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb" / stage), purge_step=start or None)
        except Exception:  # tensorboard is an optional extra; without it there are no event files
            self._tb = None
        if progress:
            from proca.engine.progress import ProgressBar

            self._progress = ProgressBar(total, stage, completed=start, elapsed=False).start()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            self._file.flush()

    def advance(self, iteration: int, losses: dict[str, float] | None = None, lr: float | None = None) -> None:
        """Move the progress bar to ``iteration`` and show ``losses``/``lr``."""
        if self._progress is not None:
            info = "" if losses is None else " ".join(f"{k}={v:.4g}" for k, v in losses.items())
            if lr is not None:
                info += f" lr={lr:.3g}"
            self._progress.update(completed=iteration, info=info or None)

    def log_step(self, iteration: int, losses: dict[str, float], lr: float, **extra: Any) -> None:
        """Record one training step (``iteration`` counts completed steps)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        steps = max(1, iteration - self._last_iter)
        sec = (now - self._last_time) / steps
        self._last_time, self._last_iter = now, iteration
        self._write({"iteration": iteration, **losses, "lr": lr, "sec_per_iter": round(sec, 5), **extra})
        if self._tb is not None:
            for name, value in losses.items():
                self._tb.add_scalar(f"loss/{name}", value, iteration)
            self._tb.add_scalar("lr", lr, iteration)
        self.advance(iteration, losses, lr)

    def log_eval(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Record a validation result (``miou`` and friends)."""
        if not self.enabled:
            return
        self._write({"event": "eval", "iteration": iteration, **metrics})
        if self._tb is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"val/{name}", value, iteration)

    def log_event(self, iteration: int, event: str, **fields: Any) -> None:
        """Record another event (a skipped non-finite step, a checkpoint)."""
        if self.enabled:
            self._write({"event": event, "iteration": iteration, **fields})

    def reset_timer(self, iteration: int) -> None:
        """Exclude the time spent since the last record (evaluation, checkpointing) from sec_per_iter."""
        self._last_time, self._last_iter = time.perf_counter(), iteration

    def close(self) -> None:
        """Stop the bar, close the files."""
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
