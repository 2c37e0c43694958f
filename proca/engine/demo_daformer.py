"""``proca demo --recipe daformer``: DAFormer's online self-training on synthetic scenes, on the CPU.

Two runs of the ``daformer`` stage on the same synthetic GTA5/Cityscapes-format scenes, with the same network
(a randomly initialised ``daformer_mit_b0``: no ImageNet file is downloaded), data and schedule:
``source_only`` (only the source loss) and the adapted run (EMA teacher, ClassMix, pseudo labels, RCS), then
a table of both mIoUs on the synthetic target's val split and a JSON summary. Every setting is in
:data:`DAFORMER_DEMO_SETTINGS` and :data:`DAFORMER_DEMO_OVERRIDES` (each with its reason).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from proca.io import atomic_write_json

__all__ = ["DAFORMER_DEMO_OVERRIDES", "DAFORMER_DEMO_SETTINGS", "daformer_demo_config", "run_daformer_demo"]

DAFORMER_DEMO_SETTINGS: dict[str, Any] = {
    "num_train": 160,  # synthetic images per training set (source and target)
    "num_val": 60,  # synthetic target val images
    "data_size": (96, 192),  # size the scenes are rendered at (H, W)
    "shift": 1.0,  # the synthetic domain shift's strength
}
"""The demo's data settings (the same scenes as ``proca demo``)."""

DAFORMER_DEMO_OVERRIDES: list[tuple[str, Any, str]] = [
    ("arch", "daformer_mit_b0", "the smallest MiT; random init (no ImageNet file is downloaded)"),
    ("num_workers", 0, "two CPU cores: loading in the training process is cheapest"),
    ("checkpoint_every", 100_000, "a few-minute run needs no resumable state"),
    ("log_every", 25, "short runs"),
    ("daformer.iters", 150, "the CPU budget (docs/demo.md)"),
    ("daformer.eval_every", 0, "validate once, at the end"),
    ("daformer.eval_teacher", True, "the teacher's mIoU is reported too"),
    ("adamw.lr", 6e-4, "random init needs a 10x larger rate than ImageNet fine-tuning"),
    ("adamw.warmup_iters", 40, "warm-up scaled to the short schedule"),
    ("daformer.source_size", [96, 192], "small synthetic images"),
    ("daformer.target_size", [96, 192], "small synthetic images"),
    ("daformer.crop_size", [96, 96], "crops of the small images (DAFormer: 512x512 of 720x1280)"),
    ("daformer.pseudo_ignore_top", 3, "DAFormer's 15 of 512 rows, scaled to 96"),
    ("daformer.pseudo_ignore_bottom", 0, "synthetic scenes have no ego-vehicle hood to crop"),
    ("daformer.rcs_min_pixels", 300, "DAFormer's 3000 of ~2 MPixel labels, scaled to 96x192 scenes"),
    ("daformer.fd_lambda", 0.0, "no ImageNet weights: the frozen copy would be a random network"),
    ("daformer.ema_alpha", 0.99, "a 150-step run: alpha 0.999 would keep the teacher at its early weights"),
    ("eval.input_size", [96, 192], "small synthetic images"),
]
"""Config keys the demo sets differently from the gtav->cityscapes preset: (key, value, why)."""


def daformer_demo_config(seed: int = 0, *, source_only: bool = False) -> Any:
    """The demo's :class:`~proca.config.TrainConfig` (``source_only``: the baseline run)."""
    from proca.config import resolve_config

    overrides = [f"{k}={json.dumps(v)}" for k, v, _ in DAFORMER_DEMO_OVERRIDES]
    overrides.append(f"daformer.source_only={json.dumps(source_only)}")
    return resolve_config("gtav", "cityscapes", overrides=overrides, seed=seed)


def run_daformer_demo(
    *,
    out: Path = Path("proca-demo"),
    seed: int = 0,
    json_path: Path | None = None,
    force: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """CLI entry of ``proca demo --recipe daformer``: synthetic scenes -> source-only and adapted runs -> table.

    Args:
        out: folder for ``data/``, ``source_only/`` and ``daformer/`` (the two run folders).
        seed: seed of the scenes and of both runs.
        json_path: also write the summary here (it is always written to ``out/demo.json``).
        force: start over in an existing ``out``.
        threads: torch threads (None: torch's default).

    Returns:
        ``source_only_miou``, ``daformer_miou``, ``teacher_miou``, ``seconds``, ``cpu_seconds``, ``seed``, settings.

    Raises:
        ProcaError: ``out`` holds an earlier demo and ``force`` is not set.
    """
    from rich.console import Console
    from rich.table import Table

    from proca.data.synthetic import write_synthetic_datasets
    from proca.engine.demo import check_demo_outputs
    from proca.engine.launch import DistInfo
    from proca.engine.train import run_pipeline, seeded_run

    console = Console(stderr=True, highlight=False)
    out = Path(out)
    check_demo_outputs(out, json_path, force=force)
    start, cpu_start = time.perf_counter(), time.process_time()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in ("source_only", "daformer"):
            if (out / name).exists():
                shutil.rmtree(out / name)
        data = out / "data"
        write_synthetic_datasets(
            data,
            seed=seed,
            num_train=DAFORMER_DEMO_SETTINGS["num_train"],
            num_val=DAFORMER_DEMO_SETTINGS["num_val"],
            size=tuple(DAFORMER_DEMO_SETTINGS["data_size"]),
            shift=DAFORMER_DEMO_SETTINGS["shift"],
            force=True,
            progress=True,
        )
        for name, source_only in (("source_only", True), ("daformer", False)):
            console.print(f"[bold]{'source only' if source_only else 'DAFormer self-training'}[/]")
            cfg = daformer_demo_config(seed, source_only=source_only)
            with seeded_run(cfg, torch.device("cpu")):
                run = run_pipeline(
                    cfg, run_dir=out / name, data_root=data, stages=["daformer"], dist=DistInfo(), progress=True
                )
            results[name] = run["daformer"]
            results[name]["teacher_miou"] = _teacher_miou(out / name)
    finally:
        torch.set_num_threads(previous_threads)
    summary = {
        "source_only_miou": results["source_only"]["miou"],
        "daformer_miou": results["daformer"]["miou"],
        "teacher_miou": results["daformer"]["teacher_miou"],
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
        "seed": seed,
        "run_seconds": {k: v.get("seconds") for k, v in results.items()},
        "settings": {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in DAFORMER_DEMO_SETTINGS.items()},
                     "overrides": {k: v for k, v, _ in DAFORMER_DEMO_OVERRIDES}},
    }  # fmt: skip
    table = Table(title=f"proca demo --recipe daformer (seed {seed}): mIoU on the synthetic target's val split")
    table.add_column("run")
    table.add_column("mIoU", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row(
        "source only (student)", f"{summary['source_only_miou']:.2f}", f"{results['source_only']['seconds']:.0f}"
    )
    table.add_row("DAFormer (student)", f"{summary['daformer_miou']:.2f}", f"{results['daformer']['seconds']:.0f}")
    table.add_row("DAFormer (EMA teacher)", f"{summary['teacher_miou']:.2f}", "")
    console.print(table)
    gain = summary["daformer_miou"] - summary["source_only_miou"]
    console.print(
        f"DAFormer - source only: {gain:+.2f} mIoU; {summary['seconds']:.0f} s ({summary['cpu_seconds']:.0f} CPU s)"
    )
    atomic_write_json(out / "demo.json", summary)
    if json_path is not None:
        atomic_write_json(json_path, summary)
    return summary


def _teacher_miou(run_dir: Path) -> float | None:
    """The teacher's mIoU of the run's last validation (from its log)."""
    log = run_dir / "daformer.log.jsonl"
    evals = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if '"eval"' in x]
    return evals[-1].get("teacher_miou") if evals else None
