"""The run folder: what each stage writes there, and the checks made before a run writes anything."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proca.config import TrainConfig
from proca.errors import ConfigError, DataError, ProcaError

__all__ = [
    "FINAL_OUTPUTS",
    "RESUME_FREE",
    "STAGES",
    "RunLock",
    "check_data_root",
    "check_resume_config",
    "check_run_dir",
    "clear_run",
    "stage_outputs",
]

STAGES = ("source", "prototypes", "proca", "pseudo-label", "ssl")

FINAL_OUTPUTS = {
    "source": "source.safetensors",
    "prototypes": "prototypes.safetensors",
    "proca": "proca.safetensors",
    "pseudo-label": "pseudo_labels",
    "ssl": "ssl.safetensors",
    "daformer": "daformer.safetensors",
}
"""The final output of each stage in RUN (a stage whose final output exists is skipped); ``daformer`` is the one
stage of ``--recipe daformer``."""

RESUME_FREE = {"num_workers", "log_every", "max_nonfinite", "source.lr", "proca.lr", "ssl.lr", "daformer.lr"}
"""Keys that may differ between a run and its resume: run-time only ones, which do not change the results,
and the stages' learning rates and non-finite limit, so that a run stopped by non-finite losses can go on
with a lower rate (the continuation then differs from the original schedule, by the user's choice)."""


def stage_outputs(stage: str) -> list[str]:
    """The names (in RUN) a stage writes; the first is its final output."""
    names = [FINAL_OUTPUTS[stage]]
    if stage in ("source", "proca", "ssl", "daformer"):
        names += [f"{stage}.best.safetensors", f"{stage}.current.safetensors", f"state/{stage}.safetensors"]
        names += [f"{stage}.log.jsonl", f"tb/{stage}"]
    if stage == "pseudo-label":
        names.append("pseudo_labels.partial")
    return names


def _stage_has_outputs(run_dir: Path, stage: str) -> bool:
    return any((run_dir / name).exists() for name in stage_outputs(stage))


def check_run_dir(run_dir: Path, stages: Sequence[str], *, resume: bool, force: bool) -> None:
    """Refuse to mix a new run into an existing folder without --resume or --force."""
    if resume and force:
        raise ConfigError("--resume and --force contradict each other; give one of them.")
    if resume or force or not run_dir.exists() or not any(p.name != RunLock.NAME for p in run_dir.iterdir()):
        return
    if len(stages) == 1 and not _stage_has_outputs(run_dir, stages[0]) and (run_dir / "config.json").is_file():
        return  # one more stage of an existing run, e.g. --stage prototypes after --stage source
    raise ProcaError(
        f"--out {run_dir} already holds a run; use --resume to continue it or --force to start over "
        "(or choose another --out)."
    )


def clear_run(run_dir: Path, src: str, stages: Sequence[str] = STAGES) -> None:
    """Remove what a previous run wrote for ``stages`` and every later stage (only proca's own files).

    ``--force --stage X`` clears X and the stages after it, never the outputs of earlier stages that X
    reads; ``--force`` with every stage also removes ``config.json`` and the generated label info.
    """
    cleared: tuple[str, ...]
    if list(stages) == ["daformer"]:
        first, cleared = 0, ("daformer",)
    else:
        first = min(STAGES.index(s) for s in stages)
        cleared = STAGES[first:]
    for stage in cleared:
        for name in stage_outputs(stage):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    results = run_dir / "results.json"
    if first == 0:
        for name in ("config.json", "results.json", f"{src}_label_info.json"):
            (run_dir / name).unlink(missing_ok=True)
    elif results.is_file():
        from proca.io import atomic_write_json

        kept = {k: v for k, v in json.loads(results.read_text(encoding="utf-8")).items() if k not in cleared}
        atomic_write_json(results, kept)
    for folder in ("state", "tb"):
        with contextlib.suppress(OSError):
            (run_dir / folder).rmdir()


class RunLock:
    """``RUN/.proca.lock``: one live process per run folder (pid and host inside; stale locks are taken over).

    A second ``proca train`` (new run, ``--resume`` or ``--force``) into a folder a live process is writing is
    refused with one line naming the owner. A lock left by a process that no longer runs on this host is
    replaced; one from another host is refused (it cannot be checked from here) with how to remove it.
    """

    NAME = ".proca.lock"

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / self.NAME
        self.held = False
        self.created = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        import os

        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def acquire(self) -> None:
        import os
        import socket
        import time

        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        from proca.io import atomic_write_text

        # written whole under a private name, then hard-linked: the link fails when a lock exists (exclusive)
        mine = self.path.with_name(f"{self.NAME}.{me['pid']}.tmp")
        atomic_write_text(mine, json.dumps(me))
        try:
            for _ in range(2):
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    owner = self._owner()
                    alive = owner is not None and self._alive(int(owner.get("pid", -1)))
                    if owner is None or (owner.get("host") == me["host"] and not alive):
                        self.path.unlink(missing_ok=True)  # stale (dead owner) or unreadable: take it over
                        continue
                    where = "this host" if owner.get("host") == me["host"] else f"host {owner.get('host')}"
                    raise ProcaError(
                        f"--out {self.path.parent} is in use by process {owner.get('pid')} on {where}; wait for "
                        f"it to finish, or stop it (if it is gone, delete {self.path})."
                    ) from None
                self.held = True
                return
        finally:
            mine.unlink(missing_ok=True)
        raise ProcaError(f"could not lock --out {self.path.parent}; delete {self.path} if no run is using it.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.created:  # a start that failed before writing anything leaves no folder behind
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            if f"{prefix}{key}" in RESUME_FREE:
                continue
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> None:
    """Refuse ``--resume`` when the options give another config than ``RUN/config.json`` (but :data:`RESUME_FREE`)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = _diff(saved, cfg.model_dump(mode="json"))
    if changed:
        raise ConfigError(
            f"--resume: the options give a different config than {path} (changed: {', '.join(changed[:5])}); "
            "pass the run's original options, or --force to start over."
        )


def check_data_root(data_root: Path, src: str, stages: Sequence[str]) -> None:
    """Fail before anything is written when the dataset folders the stages read are missing."""
    from proca.data.datasets import CITYSCAPES_LAYOUT, GTA5_LAYOUT, SYNTHIA_LAYOUT

    needed = [("cityscapes", CITYSCAPES_LAYOUT)]
    if any(s in ("source", "prototypes", "proca", "daformer") for s in stages):
        needed.insert(0, (src, GTA5_LAYOUT if src == "gtav" else SYNTHIA_LAYOUT))
    for name, layout in needed:
        folder = data_root / name
        if not folder.is_dir():
            raise DataError(
                f"dataset folder {folder} does not exist; --data-root must hold {name}/ laid out as {layout} "
                f"(see docs/data.md, or try `proca synth --out {data_root}` for synthetic scenes)."
            )
