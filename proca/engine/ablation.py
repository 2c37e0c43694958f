"""Ablations over seeds: what each piece of the recipe buys, on the built-in synthetic scenes.

The library side of ``benchmarks/ablation.py`` (see docs/ablation.md). Per seed the synthetic scenes are
written once and the source model is trained **once** (``run_pipeline`` with the ``source`` and
``prototypes`` stages, in ``WORK/<shift>/seed<k>/source``); every adaptation row then starts from that
folder's ``source.safetensors``: its files are linked into the row's own run folder and the row's stage runs
there through :func:`proca.engine.train.run_pipeline`, the product path of ``proca train --stage``. The
AdaBN row re-estimates the source model's BatchNorm statistics (:mod:`proca.engine.adabn`). Every row is
validated like the training stages validate (the synthetic target's val split, ``eval.*`` keys).

Each row's config is the base config (the demo's, :func:`proca.engine.demo.demo_config`, plus the budget's
overrides) plus the row's own overrides, recorded in the outputs. Rows already finished in ``WORK`` are read
back, so an interrupted sweep continues where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from proca.errors import ConfigError
from proca.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "ABLATION_ROWS",
    "DEFAULT_BUDGET",
    "AblationBudget",
    "AblationRow",
    "format_markdown",
    "run_ablation",
    "summarize",
]


@dataclass(frozen=True)
class AblationRow:
    """One row of the table.

    Attributes:
        name: the row's label.
        kind: ``source`` (the source-only model), ``adabn`` (it, with BatchNorm statistics re-estimated on the
            target train images), ``proca`` (the adaptation stage from the source model) or ``ssl`` (pseudo
            labels and self-training after the ``proca`` row named ``after``) or ``daformer`` (the ``daformer``
            stage, a MiT network trained from random init on the same scenes; the base config is
            :data:`proca.engine.demo_daformer.DAFORMER_DEMO_OVERRIDES` plus the budget's ``daformer_overrides``).
        overrides: config keys set for this row, on top of the base config (``key=value``, as ``--set``).
        after: for ``ssl`` rows, the ``proca`` row whose model is labelled and fine-tuned.
    """

    name: str
    kind: str
    overrides: tuple[str, ...] = ()
    after: str | None = None

    @property
    def slug(self) -> str:
        """The row's folder name."""
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-").replace("--", "-")


ABLATION_ROWS: tuple[AblationRow, ...] = (
    AblationRow("source only", "source"),
    AblationRow("AdaBN (source + target BatchNorm statistics)", "adabn"),
    AblationRow("ProCA stage, contrast off", "proca", ("proca.lambda_feat=0", "proca.lambda_out=0")),
    AblationRow(
        "ProCA stage, tau 50 (paper)",
        "proca",
        ("proca.temperature=50", "proca.lambda_feat=1.0", "proca.lambda_out=1.0"),
    ),
    AblationRow("ProCA stage, tau 0.1 (demo)", "proca", ()),
    AblationRow("memory bank", "proca", ("method=memory-bank",)),
    AblationRow("ProCA tau 0.1 + self-training", "ssl", (), after="ProCA stage, tau 0.1 (demo)"),
    AblationRow("DAFormer source only", "daformer", ("daformer.source_only=true",)),
    AblationRow("DAFormer, prototype_contrast=none", "daformer", ("daformer.prototype_contrast=none",)),
    AblationRow("DAFormer, prototype_contrast=prototype", "daformer", ("daformer.prototype_contrast=prototype",)),
    AblationRow("DAFormer, prototype_contrast=distribution", "daformer", ("daformer.prototype_contrast=distribution",)),
)
"""The rows of the table. The ProCA rows' base config already has the demo's tau 0.1 and lambda 0.1; the
DAFormer rows' base is the DAFormer demo's (``daformer_mit_b0`` from random init, the contrast's defaults:
weight 1, temperature 50)."""


@dataclass(frozen=True)
class AblationBudget:
    """The data and the length of the stages.

    Attributes:
        num_train: synthetic images per training set (source and target train).
        num_val: synthetic target val images (the reported mIoU).
        size: (H, W) the scenes are rendered and trained at.
        overrides: config keys set on top of the demo config for every row (stage lengths, sizes).
        daformer_overrides: keys set on top of those for the ``daformer`` rows only (their length, crops).
    """

    num_train: int = 80
    num_val: int = 30
    size: tuple[int, int] = (64, 128)
    overrides: tuple[str, ...] = ()
    daformer_overrides: tuple[str, ...] = ()

    def all_overrides(self) -> list[str]:
        """The budget's keys: every size set to ``size``, then ``overrides``."""
        h, w = self.size
        sizes = ["source.input_size", "prototypes.input_size", "proca.source_size", "proca.target_size",
                 "pseudo_label.input_size", "ssl.input_size", "ssl.scale_reference", "eval.input_size"]  # fmt: skip
        return [f"{key}=[{h}, {w}]" for key in sizes] + list(self.overrides)

    def all_daformer_overrides(self) -> list[str]:
        """The ``daformer`` rows' budget keys: :meth:`all_overrides`, the ``daformer`` sizes set to ``size``, then
        ``daformer_overrides``."""
        h, w = self.size
        sizes = [f"daformer.{key}=[{h}, {w}]" for key in ("source_size", "target_size")]
        return [*self.all_overrides(), *sizes, *self.daformer_overrides]


DEFAULT_BUDGET = AblationBudget(
    overrides=(
        "source.iters=150",
        "source.poly_iters=150",
        "proca.iters=50",
        "proca.poly_iters=50",
        "ssl.iters=30",
        "ssl.poly_iters=30",
    ),
    daformer_overrides=(
        "daformer.iters=150",
        "daformer.crop_size=[64, 64]",
        "daformer.pseudo_ignore_top=2",
        "daformer.rcs_min_pixels=133",
    ),
)
"""The sweep of docs/ablation.md: the demo's recipe at 64x128 with shorter stages (a shared 2-core CPU). The
DAFormer rows keep the DAFormer demo's 150 iterations and scale its 96x192 crop settings to 64x128 (crops of
64x64, 2 of 64 top rows without pseudo weight, the rare-class pixel count scaled by the area)."""


@dataclass
class _Sweep:
    work: Path
    shift: float
    class_shift: float
    budget: AblationBudget
    device: torch.device
    progress: bool
    say: Callable[[str], None]
    source_from: Path | None = None


def _config(seed: int, overrides: Sequence[str]) -> Any:
    from proca.config import resolve_config
    from proca.engine.demo import DEMO_OVERRIDES

    base = [f"{k}={json.dumps(v)}" for k, v, _ in DEMO_OVERRIDES]
    return resolve_config("gtav", "cityscapes", overrides=[*base, *overrides], seed=seed)


def _daformer_config(seed: int, overrides: Sequence[str]) -> Any:
    from proca.config import resolve_config
    from proca.engine.demo_daformer import DAFORMER_DEMO_OVERRIDES

    base = [f"{k}={json.dumps(v)}" for k, v, _ in DAFORMER_DEMO_OVERRIDES]
    return resolve_config("gtav", "cityscapes", overrides=[*base, *overrides], seed=seed)


def _data(sweep: _Sweep, seed: int) -> Path:
    from proca.data.synthetic import write_synthetic_datasets

    data = sweep.work / "data" / f"seed{seed}"
    b = sweep.budget
    wanted = {"seed": seed, "size": list(b.size), "shift": sweep.shift, "class_shift": sweep.class_shift}
    info = data / "synthetic.json"
    if info.is_file():
        have = json.loads(info.read_text(encoding="utf-8"))
        counts = have.get("counts", {})
        if (
            all(have.get(k, 0.0 if k == "class_shift" else None) == v for k, v in wanted.items())
            and counts.get("cityscapes/val") == b.num_val
            and counts.get("gtav/train") == b.num_train
        ):
            return data
    kwargs: dict[str, Any] = {"class_shift": sweep.class_shift} if sweep.class_shift else {}
    write_synthetic_datasets(
        data, seed=seed, num_train=b.num_train, num_val=b.num_val, size=b.size, shift=sweep.shift, force=True,
        progress=sweep.progress, **kwargs,
    )  # fmt: skip
    return data


def _pipeline(cfg: Any, run_dir: Path, data: Path, stages: Sequence[str], sweep: _Sweep) -> dict[str, Any]:
    from proca.engine.launch import DistInfo
    from proca.engine.train import run_pipeline, seeded_run

    with seeded_run(cfg, sweep.device):
        return run_pipeline(
            cfg, run_dir=run_dir, data_root=data, stages=stages, dist=DistInfo(device=sweep.device),
            progress=sweep.progress,
        )  # fmt: skip


def _link_inputs(source_dir: Path, row_dir: Path) -> None:
    """The source stage's files in the row's run folder (hard links where possible), as ``--stage`` reads them."""
    row_dir.mkdir(parents=True, exist_ok=True)
    for name in ("source.safetensors", "source.best.safetensors", "prototypes.safetensors", "gtav_label_info.json"):
        src, dst = source_dir / name, row_dir / name
        if not src.is_file() or dst.exists():
            continue
        try:
            os.link(src, dst)
        except OSError:
            atomic_write_bytes(dst, src.read_bytes())
    results = source_dir / "results.json"
    if results.is_file() and not (row_dir / "results.json").exists():
        atomic_write_bytes(row_dir / "results.json", results.read_bytes())


def _adabn_row(sweep: _Sweep, cfg: Any, source_dir: Path, data: Path, row_dir: Path) -> dict[str, Any]:
    from proca.engine.adabn import evaluate_adabn

    done = row_dir / "result.json"
    if done.is_file():
        return dict(json.loads(done.read_text(encoding="utf-8")))
    start = time.perf_counter()
    miou = evaluate_adabn(
        source_dir / "source.safetensors", data, target_size=tuple(cfg.proca.target_size),
        eval_size=tuple(cfg.eval.input_size), device=sweep.device, progress=sweep.progress,
    )  # fmt: skip
    entry = {"miou": miou, "seconds": round(time.perf_counter() - start, 2)}
    atomic_write_json(done, entry)
    return entry


def _source_row(sweep: _Sweep, cfg: Any, source_dir: Path, data: Path, row_dir: Path) -> float:
    from proca.engine.adabn import val_miou
    from proca.models import load_model

    done = row_dir / "result.json"
    if done.is_file():
        return float(json.loads(done.read_text(encoding="utf-8"))["miou"])
    loaded = load_model(source_dir / "source.safetensors")
    miou = val_miou(loaded.model, loaded.metadata, data, eval_size=tuple(cfg.eval.input_size), device=sweep.device)
    atomic_write_json(done, {"miou": miou})
    return miou


def _share_source(sweep: _Sweep, seed: int, data: Path, seed_dir: Path) -> None:
    """Link ``seed_dir/source`` to the source folder of the sweep in ``sweep.source_from`` (same seed), after
    checking that both sweeps' source images and labels are the same files, byte for byte."""
    import hashlib

    assert sweep.source_from is not None
    theirs = sweep.source_from / f"seed{seed}"
    if not (theirs / "source" / "source.safetensors").is_file():
        raise ConfigError(f"--source-from {sweep.source_from}: no seed{seed}/source/source.safetensors there")

    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted((root / "gtav").rglob("*.png")):
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
        return h.hexdigest()

    if digest(data) != digest(sweep.source_from / "data" / f"seed{seed}"):
        raise ConfigError(
            f"--source-from {sweep.source_from}: seed {seed}'s source images differ from this sweep's; "
            "the source model can only be shared between sweeps with the same seed, size and counts"
        )
    seed_dir.mkdir(parents=True, exist_ok=True)
    link = seed_dir / "source"
    if not link.exists():
        link.symlink_to((theirs / "source").resolve(), target_is_directory=True)


def _run_seed(sweep: _Sweep, seed: int, rows: Sequence[AblationRow]) -> dict[str, dict[str, Any]]:
    base_overrides = sweep.budget.all_overrides()
    data = _data(sweep, seed)
    seed_dir = sweep.work / f"seed{seed}"
    source_dir = seed_dir / "source"
    if sweep.source_from is not None:
        _share_source(sweep, seed, data, seed_dir)
    base_cfg = _config(seed, base_overrides)
    source: dict[str, Any] = {}
    if any(row.kind != "daformer" for row in rows):  # the daformer rows train their own network
        sweep.say(f"seed {seed}: source model (trained once for every row) in {source_dir}")
        if sweep.source_from is None:
            source = _pipeline(base_cfg, source_dir, data, ["source", "prototypes"], sweep)
        else:  # trained by the other sweep: read, never written here
            source = json.loads((source_dir / "results.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    by_name = {row.name: row for row in rows}
    for row in rows:
        sweep.say(f"seed {seed}: {row.name} {' '.join(row.overrides)}".rstrip())
        if row.kind == "source":
            # evaluated on this sweep's target (a source model shared with another sweep was validated on its own)
            out[row.name] = {"miou": _source_row(sweep, base_cfg, source_dir, data, seed_dir / row.slug),
                             "seconds": source["source"].get("seconds")}  # fmt: skip
            continue
        row_dir = seed_dir / row.slug
        if row.kind == "daformer":
            # its own network (daformer_mit_b0 from random init): the ResNet source model does not apply
            cfg = _daformer_config(seed, [*sweep.budget.all_daformer_overrides(), *row.overrides])
            result = _pipeline(cfg, row_dir, data, ["daformer"], sweep)["daformer"]
            out[row.name] = {"miou": result["miou"], "seconds": result.get("seconds")}
            sweep.say(f"seed {seed}: {row.name}: mIoU {out[row.name]['miou']:.2f}")
            continue
        cfg = _config(seed, [*base_overrides, *row.overrides])
        if row.kind == "adabn":
            out[row.name] = _adabn_row(sweep, cfg, source_dir, data, row_dir)
        elif row.kind == "proca":
            _link_inputs(source_dir, row_dir)
            result = _pipeline(cfg, row_dir, data, ["proca"], sweep)["proca"]
            out[row.name] = {"miou": result["miou"], "seconds": result.get("seconds")}
        elif row.kind == "ssl":
            parent = by_name.get(row.after or "")
            if parent is None or parent.kind != "proca":
                raise ConfigError(f"ablation row {row.name!r}: after={row.after!r} names no proca row of the table")
            cfg = _config(seed, [*base_overrides, *parent.overrides, *row.overrides])
            parent_dir = seed_dir / parent.slug
            _link_inputs(source_dir, parent_dir)
            result = _pipeline(cfg, parent_dir, data, ["proca", "pseudo-label", "ssl"], sweep)
            seconds = [result[s].get("seconds") or 0.0 for s in ("pseudo-label", "ssl")]
            out[row.name] = {"miou": result["ssl"]["miou"], "seconds": round(sum(seconds), 2)}
        else:
            raise ConfigError(
                f"ablation row {row.name!r}: unknown kind {row.kind!r} (source, adabn, proca, ssl, daformer)"
            )
        sweep.say(f"seed {seed}: {row.name}: mIoU {out[row.name]['miou']:.2f}")
    return out


def summarize(per_seed: dict[int, dict[str, dict[str, Any]]], rows: Sequence[AblationRow]) -> list[dict[str, Any]]:
    """Per row: the overrides, the mIoU of each seed, their mean and sample standard deviation (n-1; None below
    two seeds)."""
    table = []
    for row in rows:
        values = {s: r[row.name]["miou"] for s, r in sorted(per_seed.items()) if row.name in r}
        seconds = [r[row.name].get("seconds") for r in per_seed.values() if row.name in r]
        numbers = [float(v) for v in values.values() if v is not None]
        mean = statistics.fmean(numbers) if numbers else None
        std = statistics.stdev(numbers) if len(numbers) > 1 else None
        table.append({
            "row": row.name, "kind": row.kind, "overrides": list(row.overrides), "after": row.after,
            "miou": {str(s): v for s, v in values.items()}, "mean": mean, "std": std, "seeds": len(numbers),
            "seconds_mean": statistics.fmean([float(s) for s in seconds if s is not None]) if seconds else None,
        })  # fmt: skip
    return table


def format_markdown(table: list[dict[str, Any]], seeds: Sequence[int]) -> str:
    """The table as markdown: row, overrides, mIoU per seed, mean +/- std, seconds per seed."""
    head = "| row | overrides (on top of the base config) | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [head + " | mean +/- std | s / seed |", "|---|---|" + "---:|" * (len(seeds) + 2)]
    for entry in table:
        over = " ".join(f"`{o}`" for o in entry["overrides"]) or "-"
        if entry["after"]:
            over = f"after *{entry['after']}*: pseudo labels + ssl" + ("; " + over if entry["overrides"] else "")
        cells = [f"{entry['miou'][str(s)]:.2f}" if str(s) in entry["miou"] else "-" for s in seeds]
        mean = "-" if entry["mean"] is None else f"{entry['mean']:.2f}"
        if entry["std"] is not None:
            mean += f" +/- {entry['std']:.2f}"
        secs = "-" if entry["seconds_mean"] is None else f"{entry['seconds_mean']:.0f}"
        lines.append(f"| {entry['row']} | {over} | " + " | ".join(cells) + f" | **{mean}** | {secs} |")
    return "\n".join(lines) + "\n"


def run_ablation(
    work: str | os.PathLike[str],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    rows: Sequence[AblationRow] = ABLATION_ROWS,
    budget: AblationBudget = DEFAULT_BUDGET,
    shift: float = 1.0,
    class_shift: float = 0.0,
    device: str = "cpu",
    json_path: str | os.PathLike[str] | None = None,
    markdown_path: str | os.PathLike[str] | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
    source_from: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run ``rows`` for every seed in ``work`` and write the table (markdown) and its numbers (JSON).

    Args:
        work: folder for the scenes and the run folders (kept: a second call reads finished rows back).
        seeds: seeds of the scenes and of the training.
        rows: the table's rows (:data:`ABLATION_ROWS` by default).
        budget: data and stage lengths (:data:`DEFAULT_BUDGET`).
        shift, class_shift: the synthetic shift (``write_synthetic_datasets``' keywords).
        device: where to train.
        json_path: write the summary here (default: ``WORK/ablation.json``).
        markdown_path: write the markdown table here (default: ``WORK/ablation.md``).
        progress: progress bars.
        say: where progress lines go (default: rich on stderr).
        source_from: the ``work`` folder of another sweep with the same seeds and budget (another target
            shift, the same source images): its source models are used, not retrained (the source images are
            checked to be the same bytes).

    Returns:
        ``{"table": [...], "per_seed": {...}, "seeds", "seconds", "settings"}``; the table's entries hold
        ``row``, ``overrides``, ``miou`` per seed, ``mean``, ``std`` (sample, n-1), ``seconds_mean``.

    Raises:
        ConfigError: an empty row list or seed list, or a row that names no valid kind or parent.
    """
    from proca.engine.device import resolve_device

    if not rows or not seeds:
        raise ConfigError("an ablation needs at least one row and one seed")
    if say is None:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)

        def say(message: str) -> None:
            console.print(message)

    work = Path(work)
    shared = Path(source_from) if source_from is not None else None
    sweep = _Sweep(work, shift, class_shift, budget, resolve_device(device), progress, say, shared)
    start = time.perf_counter()
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in seeds:
        per_seed[int(seed)] = _run_seed(sweep, int(seed), rows)
        partial = per_seed.copy()
        atomic_write_json(work / "ablation.partial.json", {str(k): v for k, v in partial.items()})
    table = summarize(per_seed, rows)
    seconds = round(time.perf_counter() - start, 1)
    summary = {
        "table": table,
        "per_seed": {str(k): v for k, v in per_seed.items()},
        "seeds": [int(s) for s in seeds],
        "seconds": seconds,
        "settings": {
            "shift": shift, "class_shift": class_shift, "num_train": budget.num_train, "num_val": budget.num_val,
            "size": list(budget.size), "base": "proca.engine.demo.DEMO_OVERRIDES",
            "budget_overrides": budget.all_overrides(), "device": str(sweep.device),
            "daformer_base": "proca.engine.demo_daformer.DAFORMER_DEMO_OVERRIDES",
            "daformer_budget_overrides": budget.all_daformer_overrides(),
            "threads": torch.get_num_threads(), "source_from": str(shared) if shared else None,
        },
    }  # fmt: skip
    atomic_write_json(Path(json_path) if json_path else work / "ablation.json", summary)
    atomic_write_text(Path(markdown_path) if markdown_path else work / "ablation.md", format_markdown(table, seeds))
    return summary
