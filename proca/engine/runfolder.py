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
}
"""The final output of each stage in RUN (a stage whose final output exists is skipped)."""

RESUME_FREE = {"num_workers", "log_every", "max_nonfinite", "source.lr", "proca.lr", "ssl.lr"}
"""Keys that may differ between a run and its resume: run-time only ones, which do not change the results,
and the stages' learning rates and non-finite limit, so that a run stopped by non-finite losses can go on
with a lower rate (the continuation then differs from the original schedule, by the user's choice)."""


def stage_outputs(stage: str) -> list[str]:
    """The names (in RUN) a stage writes; the first is its final output."""
    names = [FINAL_OUTPUTS[stage]]
    if stage in ("source", "proca", "ssl"):
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
    if resume or force or not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if len(stages) == 1 and not _stage_has_outputs(run_dir, stages[0]) and (run_dir / "config.json").is_file():
        return  # one more stage of an existing run, e.g. --stage prototypes after --stage source
    raise ProcaError(
        f"--out {run_dir} already holds a run; use --resume to continue it or --force to start over "
        "(or choose another --out)."
    )


def clear_run(run_dir: Path, src: str) -> None:
    """Remove what a previous run wrote (only proca's own files)."""
    for stage in STAGES:
        for name in stage_outputs(stage):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    for name in ("config.json", "results.json", f"{src}_label_info.json"):
        (run_dir / name).unlink(missing_ok=True)
    for folder in ("state", "tb"):
        with contextlib.suppress(OSError):
            (run_dir / folder).rmdir()


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
    if any(s in ("source", "prototypes", "proca") for s in stages):
        needed.insert(0, (src, GTA5_LAYOUT if src == "gtav" else SYNTHIA_LAYOUT))
    for name, layout in needed:
        folder = data_root / name
        if not folder.is_dir():
            raise DataError(
                f"dataset folder {folder} does not exist; --data-root must hold {name}/ laid out as {layout} "
                f"(see docs/data.md, or try `proca synth --out {data_root}` for synthetic scenes)."
            )
