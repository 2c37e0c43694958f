"""``proca demo``: the whole recipe on built-in synthetic scenes, on the CPU, in a few minutes.

The demo writes synthetic GTA5- and Cityscapes-format scenes (:mod:`proca.data.synthetic`), runs
every stage of the recipe with a small backbone, evaluates after each training stage on the synthetic
target's val split, prints a table, saves coloured example predictions and writes a JSON summary.

Every setting lives in :data:`DEMO_SETTINGS` (data) and :data:`DEMO_OVERRIDES` (config keys that
differ from the paper preset, each with its reason), so the demo is tuned by changing numbers here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from proca.errors import OutputError, ProcaError
from proca.io import atomic_write_json, save_image_atomic

__all__ = ["DEMO_OVERRIDES", "DEMO_SETTINGS", "demo_config", "run_demo"]

DEMO_SETTINGS: dict[str, Any] = {
    "num_train": 160,  # synthetic images per training set (source and target)
    "num_val": 60,  # synthetic target val images
    "data_size": (96, 192),  # size the scenes are rendered at (H, W)
    "shift": 1.0,  # the synthetic domain shift's strength (1.0 = the data package's default)
    "examples": 4,  # val images saved as coloured example strips
    "threads": None,  # torch threads (None: torch's default, one per core)
}
"""The demo's data and run-time settings."""

DEMO_OVERRIDES: list[tuple[str, Any, str]] = [
    ("arch", "deeplabv2_resnet18", "ResNet-101 does not train on a CPU in minutes"),
    ("num_workers", 0, "two CPU cores: loading in the training process is cheapest"),
    ("checkpoint_every", 100_000, "a few-minute run needs no resumable state"),
    ("log_every", 25, "short stages"),
    ("source.input_size", [96, 192], "small synthetic images"),
    ("source.iters", 350, "the CPU budget (docs/demo.md); the source model bounds every later stage"),
    ("source.poly_iters", 350, "the schedule ends with the short stage"),
    ("source.lr", 0.01, "random init (no ImageNet weights are downloaded) needs a 20x larger rate"),
    ("source.eval_every", 0, "validate once, at the end of each stage"),
    ("prototypes.input_size", [96, 192], "small synthetic images"),
    ("proca.source_size", [96, 192], "small synthetic images"),
    ("proca.target_size", [96, 192], "small synthetic images"),
    ("proca.iters", 100, "the CPU budget"),
    ("proca.poly_iters", 100, "the schedule ends with the short stage"),
    ("proca.lr", 0.005, "half the source rate, as the release halves it"),
    ("proca.eval_every", 0, "validate once, at the end"),
    ("proca.temperature", 0.1, "at the released tau = 50 the contrastive terms give almost no gradient"),
    ("proca.lambda_feat", 0.1, "a small weight with the sharper temperature"),
    ("proca.lambda_out", 0.1, "a small weight with the sharper temperature"),
    ("pseudo_label.init_from", "last", "'best' is chosen on target val labels; one validation per stage: best = last"),
    ("pseudo_label.input_size", [96, 192], "small synthetic images"),
    ("ssl.init", "proca", "no ImageNet file: a fresh random-init model cannot be retrained in the budget"),
    ("ssl.input_size", [96, 192], "small synthetic images"),
    ("ssl.scale_reference", [96, 192], "scale around the small input size"),
    ("ssl.scale", (1.0, 1.0), "a 0.5x rescale at 96x192 erases thin classes on the stride-8 grid (measured -1.6 mIoU)"),
    ("ssl.color_jitter", False, "switched off with the rescale (fine-tuning the adapted model on target pixels)"),
    ("ssl.iters", 60, "the CPU budget"),
    ("ssl.poly_iters", 60, "the schedule ends with the short stage"),
    ("ssl.lr", 0.001, "fine-tuning the adapted model"),
    ("ssl.eval_every", 0, "validate once, at the end"),
    ("eval.input_size", [96, 192], "small synthetic images"),
]
"""Config keys the demo sets differently from the gtav->cityscapes preset: (key, value, why)."""


def demo_config(seed: int = 0) -> Any:
    """The demo's :class:`~proca.config.TrainConfig`: the paper preset with :data:`DEMO_OVERRIDES`."""
    from proca.config import resolve_config

    return resolve_config(
        "gtav", "cityscapes", overrides=[f"{k}={json.dumps(v)}" for k, v, _ in DEMO_OVERRIDES], seed=seed
    )


def _print_settings(console: Any) -> None:
    from rich.table import Table

    table = Table(title="demo settings that differ from the paper preset", title_justify="left")
    table.add_column("key")
    table.add_column("demo")
    table.add_column("why")
    for key, value, why in DEMO_OVERRIDES:
        table.add_row(key, json.dumps(value), why)
    console.print(table)


@torch.no_grad()
def _save_examples(run_dir: Path, data_root: Path, out_dir: Path, cfg: Any, count: int) -> list[str]:
    """Write ``count`` strips: image | ground truth | source-only | ProCA | self-training (coloured)."""
    from PIL import Image

    from proca.data.classes import get_class_set
    from proca.data.datasets import CityscapesDataset
    from proca.data.transforms import denormalize, test_transform
    from proca.engine.predict import predict_probs
    from proca.models import load_model

    class_set = get_class_set(cfg.class_set)
    dataset = CityscapesDataset(data_root / "cityscapes", split="val", transform=test_transform(cfg.eval.input_size))
    models = [load_model(run_dir / f"{stage}.safetensors").model for stage in ("source", "proca", "ssl")]
    written = []
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        image = sample["image"].as_subclass(torch.Tensor)
        label = sample["label"].as_subclass(torch.Tensor)
        tiles = [denormalize(image).permute(1, 2, 0).numpy()]  # uint8 RGB
        tiles[0] = np.asarray(Image.fromarray(tiles[0]).resize((label.shape[1], label.shape[0])))
        tiles.append(class_set.colorize(label.numpy()))
        for model in models:
            pred = predict_probs(model, image[None], out_size=tuple(label.shape)).argmax(1)[0]
            tiles.append(class_set.colorize(pred.numpy()))
        path = out_dir / f"{sample['name'].replace('/', '_')}.png"
        save_image_atomic(Image.fromarray(np.concatenate(tiles, axis=1)), path)
        written.append(str(path))
    return written


def _adabn_row(source: Path, data: Path, cfg: Any) -> dict[str, Any]:
    """The AdaBN baseline of the demo's source model (BatchNorm statistics re-estimated on the target train
    images, no training): how much of the gain is statistics."""
    from proca.engine.adabn import evaluate_adabn

    start = time.perf_counter()
    miou = evaluate_adabn(source, data, target_size=tuple(cfg.proca.target_size), eval_size=tuple(cfg.eval.input_size))
    return {"miou": miou, "seconds": round(time.perf_counter() - start, 2)}


def run_demo(
    *,
    out: Path = Path("proca-demo"),
    seed: int = 0,
    json_path: Path | None = None,
    force: bool = False,
    threads: int | None = None,
) -> dict:
    """CLI entry of ``proca demo``: synthetic scenes -> every stage -> table, examples and JSON.

    Args:
        out: folder for ``data/`` (the scenes), ``run/`` (the recipe's run folder) and ``examples/``.
        seed: seed of the scenes and of the training.
        json_path: where to write ``source_only_miou``, ``adabn_miou``, ``proca_miou``, ``final_miou``,
            ``seconds``; with a finished demo already in ``out`` (and no ``force``), its results are written
            there without retraining.
        force: start over in an existing ``out``.
        threads: torch threads for the run (None: ``DEMO_SETTINGS["threads"]``, else torch's default).

    Returns:
        The summary written to ``json_path``.

    Raises:
        ProcaError: ``out`` holds an earlier demo and ``force`` is not set.
    """
    from rich.console import Console
    from rich.table import Table

    from proca.data.synthetic import write_synthetic_datasets
    from proca.engine.train import STAGES, run_pipeline

    console = Console(stderr=True, highlight=False)
    out = Path(out)
    if json_path is not None and Path(json_path).is_dir():
        raise OutputError(f"--json {json_path} is a folder; give a file name such as demo.json")
    if json_path is not None and Path(json_path).exists() and not force:
        raise OutputError(
            f"--json {json_path} exists; choose another path, or pass --force to overwrite it (--force also runs "
            "the demo again)"
        )
    finished = out / "demo.json"
    if json_path is not None and finished.is_file() and not force:
        # the results of the demo already in ``out``: no need to train again
        summary = json.loads(finished.read_text(encoding="utf-8"))
        atomic_write_json(json_path, summary)
        console.print(f"wrote the results of the demo in {out} to {json_path} (nothing retrained; --force reruns)")
        return summary
    if out.exists() and any(out.iterdir()) and not force:
        raise ProcaError(f"--out {out} already holds a demo; use --force to run it again, or another --out.")
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    wanted = threads or DEMO_SETTINGS["threads"]
    if wanted:
        torch.set_num_threads(int(wanted))
    try:
        for name in ("run", "examples"):
            if (out / name).exists():
                shutil.rmtree(out / name)
        cfg = demo_config(seed)
        _print_settings(console)
        data = out / "data"
        write_synthetic_datasets(
            data,
            seed=seed,
            num_train=DEMO_SETTINGS["num_train"],
            num_val=DEMO_SETTINGS["num_val"],
            size=tuple(DEMO_SETTINGS["data_size"]),
            shift=DEMO_SETTINGS["shift"],
            force=True,
            progress=True,
        )
        from proca.engine.launch import DistInfo
        from proca.engine.train import seeded_run

        with seeded_run(cfg, torch.device("cpu")):
            results = run_pipeline(
                cfg, run_dir=out / "run", data_root=data, stages=STAGES, dist=DistInfo(), progress=True
            )
        examples = _save_examples(out / "run", data, out / "examples", cfg, int(DEMO_SETTINGS["examples"]))
        results["adabn"] = _adabn_row(out / "run" / "source.safetensors", data, cfg)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = round(time.perf_counter() - start, 1)
    summary = {
        "source_only_miou": results["source"]["miou"],
        "proca_miou": results["proca"]["miou"],
        "final_miou": results["ssl"]["miou"],
        "adabn_miou": results["adabn"]["miou"],
        "seconds": seconds,
        "seed": seed,
        "stage_seconds": {k: v.get("seconds") for k, v in results.items()},
        "examples": examples,
        "settings": {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_SETTINGS.items()},
                     "overrides": {k: v for k, v, _ in DEMO_OVERRIDES}},
    }  # fmt: skip
    table = Table(title=f"proca demo (seed {seed}): mIoU on the synthetic target's val split", title_justify="left")
    table.add_column("stage")
    table.add_column("mIoU", justify="right")
    table.add_column("seconds", justify="right")
    rows = (("source only", "source"), ("AdaBN (source, target BatchNorm statistics)", "adabn"), ("ProCA", "proca"),
            ("self-training (final)", "ssl"))  # fmt: skip
    for label, key in rows:
        table.add_row(label, f"{results[key]['miou']:.2f}", f"{results[key]['seconds']:.0f}")
    console.print(table)
    gain = summary["final_miou"] - summary["source_only_miou"]
    console.print(f"final - source only: {gain:+.2f} mIoU; total {seconds:.0f} s; examples in {out / 'examples'}")
    atomic_write_json(out / "demo.json", summary)
    if json_path is not None:
        atomic_write_json(json_path, summary)
    return summary
