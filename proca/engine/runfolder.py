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
    "INPUTS_FILE",
    "RESUME_FREE",
    "STAGES",
    "RunLock",
    "check_data_identity",
    "check_data_root",
    "check_label_info_identity",
    "check_recipe",
    "check_resume_config",
    "check_run_dir",
    "clear_run",
    "data_identity",
    "file_digest",
    "find_label_info",
    "folder_recipe",
    "label_info_candidates",
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

_LR_REASON = "the stage's base learning rate from the resumed iteration on (a lower rate after non-finite losses)"

RESUME_FREE: dict[str, str] = {
    "num_workers": "DataLoader worker processes (the data of every step does not depend on them)",
    "log_every": "how often a log record is written",
    "checkpoint_every": "how often the resumable state is saved",
    "max_nonfinite": "how many non-finite steps in a row stop the run",
    "source.lr": _LR_REASON,
    "proca.lr": _LR_REASON,
    "ssl.lr": _LR_REASON,
    "adamw.lr": _LR_REASON,
    "daformer.lr": _LR_REASON,
}
"""The config keys that may differ between a run and its ``--resume`` (the one list; docs/training.md#resume).

Run-time ones, which do not change the results, and the learning rates and non-finite limit, so that a run
stopped by non-finite losses can go on with a lower rate (the continuation then differs from the original
schedule, by the user's choice). Any other changed key is refused; accepted changes are written to
``RUN/config.json``. Options that are not config keys (``--device``, ``--gpus``/``--nproc``, progress bars)
may change too.
"""

INPUTS_FILE = "inputs.json"
"""``RUN/inputs.json``: the data a run reads (see :func:`data_identity`), checked on ``--resume``."""


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


def folder_recipe(run_dir: Path) -> str | None:
    """The recipe whose stages wrote into ``run_dir`` (``"daformer"`` or ``"proca"``; None: neither yet)."""
    if _stage_has_outputs(Path(run_dir), "daformer"):
        return "daformer"
    if any(_stage_has_outputs(Path(run_dir), stage) for stage in STAGES):
        return "proca"
    return None


def check_recipe(run_dir: Path, recipe: str, *, force: bool) -> None:
    """Refuse to run one recipe's stages in a folder that holds the other recipe's outputs (without ``--force``)."""
    found = folder_recipe(run_dir)
    if found is not None and found != recipe and not force:
        raise ConfigError(
            f"--out {run_dir} holds a --recipe {found} run; pass --recipe {found} to continue it, or choose another "
            "--out (or --force to start over)."
        )


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
        for name in ("config.json", "results.json", INPUTS_FILE, f"{src}_label_info.json"):
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


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Refuse ``--resume`` when the options change a config key of ``RUN/config.json`` not in :data:`RESUME_FREE`.

    Returns:
        The accepted changes, ``key -> (old, new)`` (the caller rewrites ``config.json`` with the new config).

    Raises:
        ConfigError: naming each refused key with its old and new value.
    """
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--resume: cannot read {path} ({err}); start over with --force or another --out.") from None
    changes = _diff(saved, cfg.model_dump(mode="json"))
    refused = [(k, a, b) for k, a, b in changes if k not in RESUME_FREE]
    if refused:
        shown = ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ConfigError(
            f"--resume: the options give a different config than {path} (changed: {shown}{more}); only "
            f"{', '.join(RESUME_FREE)} may change on resume: pass the run's original options, or start a new run "
            "with another --out (or --force)."
        )
    return {k: (a, b) for k, a, b in changes}


def _names_digest(folder: Path, *, nested: bool = False) -> dict[str, Any]:
    """The number and a SHA-256 of the sorted image names of a folder (``nested``: one level of sub-folders)."""
    import hashlib
    import os

    from proca.data.datasets import IMAGE_EXTENSIONS

    if not folder.is_dir():
        return {"files": 0, "names_sha256": None}
    names: list[str] = []
    for entry in sorted(os.listdir(folder)):
        if nested and (folder / entry).is_dir():
            inner = sorted(os.listdir(folder / entry))
            names += [f"{entry}/{n}" for n in inner if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif not nested and entry.lower().endswith(IMAGE_EXTENSIONS):
            names.append(entry)
    return {"files": len(names), "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dataset_digest(open_split: Any) -> dict[str, Any]:
    """The number and a SHA-256 of the sorted file names of a dataset split (no files: an empty record)."""
    import hashlib

    try:
        names = sorted(str(f) for f in open_split().files)
    except DataError:
        return {"files": 0, "names_sha256": None}
    return {"files": len(names), "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest()}


def data_identity(data_root: Path, src: str, tgt: str = "cityscapes") -> dict[str, Any]:
    """What identifies a run's data: the resolved ``--data-root`` and, per image folder the run reads, the number
    and a digest of the sorted file names (written to ``RUN/inputs.json`` at the start; ``label_info`` is added
    with the label-info file's path and SHA-256 when a stage first uses it)."""
    from proca.data.classes import get_class_set
    from proca.data.registry import BUILTIN_DATASETS, open_target_images, open_target_val

    root = Path(data_root).resolve()
    class_set = get_class_set("cityscapes19")  # only the file names are read
    if src in ("gtav", "synthia"):
        source = f"{src}/images", _names_digest(root / src / ("images" if src == "gtav" else "RAND_CITYSCAPES/RGB"))
    else:  # a dataset card
        from proca.data.cards import card_dataset

        source = src, _dataset_digest(lambda: card_dataset(src, class_set=class_set))
    # a card or folder target is named by its absolute path (which the data root does not change)
    train, val = (f"{BUILTIN_DATASETS[tgt].folder}/{s}" for s in ("train", "val")) if tgt in BUILTIN_DATASETS else (
        tgt, f"{tgt} (labels)")  # fmt: skip
    return {
        "data_root": str(root),
        "folders": {
            source[0]: source[1],
            train: _dataset_digest(lambda: open_target_images(tgt, root, class_set=class_set)),
            val: _dataset_digest(lambda: open_target_val(tgt, root, class_set=class_set)),
        },
    }


def _read_inputs(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / INPUTS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"cannot read {path}; start a new run with another --out (or --force).") from None
    return doc if isinstance(doc, dict) else None


def check_data_identity(
    run_dir: Path, data_root: Path, src: str, tgt: str = "cityscapes", *, flag: str = "--resume"
) -> dict[str, Any]:
    """Refuse to continue a run on other data than it started on (``RUN/inputs.json``); returns the record to
    write (the saved one when it matches, with its ``label_info`` entry kept)."""
    now = data_identity(data_root, src, tgt)
    saved = _read_inputs(run_dir)
    if saved is None:
        return now
    how = f"give the run's --data-root {saved.get('data_root')}, or start a new run with another --out"
    if saved.get("data_root") != now["data_root"]:
        raise DataError(
            f"{flag}: this run was started on --data-root {saved.get('data_root')}, not {now['data_root']}; {how} "
            f"(if the datasets were moved, delete {run_dir / INPUTS_FILE} to accept the new place)."
        )
    for name, entry in now["folders"].items():
        old = (saved.get("folders") or {}).get(name)
        if old is not None and old != entry:
            raise DataError(
                f"{flag}: the images of {Path(now['data_root']) / name} changed since this run started "
                f"({old.get('files')} files then, {entry['files']} now, or other names); {how}."
            )
    return {**now, **({"label_info": saved["label_info"]} if "label_info" in saved else {})}


def label_info_candidates(data_root: Path, src: str, run_dir: Path) -> tuple[Path, ...]:
    """Where a run looks for the source label info, in order: ``SRC_ROOT/<src>_label_info.json``, the release's
    ``SRC_ROOT/<src>_label_info.p``, then ``RUN/<src>_label_info.json`` (generated by the run when none exists).
    A dataset card as the source has only ``RUN/card_label_info.json``."""
    if src not in ("gtav", "synthia"):
        return (Path(run_dir) / "card_label_info.json",)
    root = Path(data_root) / src
    return root / f"{src}_label_info.json", root / f"{src}_label_info.p", Path(run_dir) / f"{src}_label_info.json"


def find_label_info(data_root: Path, src: str, run_dir: Path) -> Path | None:
    """The label-info file a run would use now (None: none yet, the run generates it)."""
    return next((c for c in label_info_candidates(data_root, src, run_dir) if c.is_file()), None)


def _where(path: Path, run_dir: Path) -> str:
    """``RUN/<name>`` for a file in the run folder (the folder may be moved), else the resolved path."""
    resolved = path.resolve()
    if resolved.parent == Path(run_dir).resolve():
        return f"RUN/{path.name}"
    return str(resolved)


def check_label_info_identity(run_dir: Path, path: Path, *, write: bool) -> None:
    """Refuse a label-info file other than (or changed since) the one the run first used; with ``write``, record
    it in ``RUN/inputs.json`` when the run has used none yet.

    Raises:
        DataError: naming the file, what changed and how to proceed.
    """
    saved = _read_inputs(run_dir)
    entry = {"file": _where(Path(path), run_dir), "sha256": file_digest(path)}
    if saved is not None and isinstance(saved.get("label_info"), dict):
        old = saved["label_info"]
        if old.get("file") != entry["file"]:
            raise DataError(
                f"this run used the label info {old.get('file')}, but now {entry['file']} would be used; restore "
                "the run's file (remove the new one), or start a new run with another --out."
            )
        if old.get("sha256") != entry["sha256"]:
            raise DataError(
                f"label info {path} changed since this run started (its SHA-256 differs from the one in "
                f"{run_dir / INPUTS_FILE}); restore it, or start a new run with another --out."
            )
        return
    if write and saved is not None:
        from proca.io import atomic_write_json

        atomic_write_json(run_dir / INPUTS_FILE, {**saved, "label_info": entry})


def check_data_root(data_root: Path, src: str, stages: Sequence[str], tgt: str = "cityscapes") -> None:
    """Fail before anything is written when the dataset folders the stages read are missing (a built-in
    target's; :func:`proca.data.targets.resolve_target` checks a card or folder target, and a source card is
    checked by the caller)."""
    from proca.data.datasets import GTA5_LAYOUT, SYNTHIA_LAYOUT
    from proca.data.registry import BUILTIN_DATASETS

    needed = []
    if tgt in BUILTIN_DATASETS:
        target = BUILTIN_DATASETS[tgt]
        needed.append((target.folder, target.layout))
    if any(s in ("source", "prototypes", "proca") for s in stages) and src in ("gtav", "synthia"):
        needed.insert(0, (src, GTA5_LAYOUT if src == "gtav" else SYNTHIA_LAYOUT))
    for name, layout in needed:
        folder = data_root / name
        if not folder.is_dir():
            raise DataError(
                f"dataset folder {folder} does not exist; --data-root must hold {name}/ laid out as {layout} "
                f"(see docs/data.md, or try `proca synth --out {data_root}` for synthetic scenes)."
            )
