"""``proca demo``: the whole recipe on built-in synthetic scenes, on the CPU, in a few minutes.

The demo writes synthetic GTA5- and Cityscapes-format scenes (:mod:`proca.data.synthetic`), runs
every stage of the recipe with a small backbone, evaluates after each training stage on the synthetic
target's val split, prints a table, saves coloured example predictions and writes a JSON summary.

Every setting lives in :data:`DEMO_SETTINGS` (data) and :data:`DEMO_OVERRIDES` (config keys that
differ from the paper preset, each with its reason), so the demo is tuned by changing numbers here;
``--quick`` runs the same pipeline with :data:`QUICK_SETTINGS` and :data:`QUICK_OVERRIDES` on top.
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

__all__ = [
    "DEMO_OVERRIDES",
    "DEMO_SETTINGS",
    "QUICK_OVERRIDES",
    "QUICK_SETTINGS",
    "STRIP_TITLES",
    "check_demo_outputs",
    "demo_config",
    "demo_overrides",
    "demo_settings",
    "run_demo",
    "titled_strip",
]

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


QUICK_SIZE = [64, 128]
"""The ``--quick`` scenes' size (H, W): 0.48x the cost of a 96x192 iteration (docs/demo.md)."""

QUICK_SETTINGS: dict[str, Any] = {
    "num_train": 96,  # synthetic images per training set (source and target)
    "num_val": 40,  # synthetic target val images
    "data_size": tuple(QUICK_SIZE),  # smaller scenes, same shift
}
"""What ``--quick`` changes in :data:`DEMO_SETTINGS`."""

QUICK_OVERRIDES: list[tuple[str, Any, str]] = [
    ("source.input_size", QUICK_SIZE, "the --quick scenes' size"),
    ("source.iters", 200, "--quick: the 3-minute budget (docs/demo.md)"),
    ("source.poly_iters", 200, "the schedule ends with the short stage"),
    ("prototypes.input_size", QUICK_SIZE, "the --quick scenes' size"),
    ("proca.source_size", QUICK_SIZE, "the --quick scenes' size"),
    ("proca.target_size", QUICK_SIZE, "the --quick scenes' size"),
    ("proca.iters", 60, "--quick: the 3-minute budget"),
    ("proca.poly_iters", 60, "the schedule ends with the short stage"),
    ("pseudo_label.input_size", QUICK_SIZE, "the --quick scenes' size"),
    ("ssl.input_size", QUICK_SIZE, "the --quick scenes' size"),
    ("ssl.scale_reference", QUICK_SIZE, "the --quick scenes' size"),
    ("ssl.iters", 40, "--quick: the 3-minute budget"),
    ("ssl.poly_iters", 40, "the schedule ends with the short stage"),
    ("eval.input_size", QUICK_SIZE, "the --quick scenes' size"),
]
"""What ``--quick`` changes in :data:`DEMO_OVERRIDES`: (key, value, why); every other key as in the demo."""


def demo_settings(quick: bool = False) -> dict[str, Any]:
    """The demo's data and run-time settings (``quick``: with :data:`QUICK_SETTINGS`)."""
    return {**DEMO_SETTINGS, **(QUICK_SETTINGS if quick else {})}


def demo_overrides(quick: bool = False) -> list[tuple[str, Any, str]]:
    """The config keys the demo changes, in order (``quick``: :data:`QUICK_OVERRIDES` replace theirs)."""
    if not quick:
        return list(DEMO_OVERRIDES)
    quick_keys = {k: (v, why) for k, v, why in QUICK_OVERRIDES}
    out = [(k, *quick_keys.pop(k)) if k in quick_keys else (k, v, why) for k, v, why in DEMO_OVERRIDES]
    return out + [(k, v, why) for k, (v, why) in quick_keys.items()]


def demo_config(seed: int = 0, quick: bool = False) -> Any:
    """The demo's :class:`~proca.config.TrainConfig`: the paper preset with :func:`demo_overrides`."""
    from proca.config import resolve_config

    overrides = [f"{k}={json.dumps(v)}" for k, v, _ in demo_overrides(quick)]
    return resolve_config("gtav", "cityscapes", overrides=overrides, seed=seed)


def _print_settings(console: Any, quick: bool) -> None:
    from rich.table import Table

    title = "demo settings that differ from the paper preset" + (" (--quick)" if quick else "")
    table = Table(title=title, title_justify="left")
    table.add_column("key")
    table.add_column("demo")
    table.add_column("why")
    for key, value, why in demo_overrides(quick):
        table.add_row(key, json.dumps(value), why)
    console.print(table)


def _run_clock(cfg: Any, settings: dict[str, Any], start: float, console: Any) -> Any:
    """The whole run's clock (stage k/5, elapsed, ETA) over the demo's stages and its scene counts."""
    from proca.engine.runclock import RunClock, budgets_for
    from proca.engine.train import STAGES

    images = {"source": settings["num_train"], "target_train": settings["num_train"], "val": settings["num_val"]}
    tail = 3 * min(int(settings["examples"]), int(settings["num_val"]))  # three models per example strip
    tail += settings["num_train"] + settings["num_val"]  # the AdaBN row: statistics on the target, one validation
    return RunClock(budgets_for(cfg, STAGES, images), start=start, tail_images=tail, say=console.print)


STRIP_TITLES = ("photo", "ground truth", "source only", "ProCA", "self-training")
"""The column titles of an example strip, left to right."""


def titled_strip(tiles: list[np.ndarray], titles: tuple[str, ...] | list[str], class_set: Any) -> Any:
    """Tiles side by side under a row of column titles, over a colour legend (a swatch and a name per class).

    Drawn with PIL's built-in default font (nothing is downloaded).

    Shape:
        tiles: each (H, W, 3) uint8, all the same size -> a PIL RGB image (title band + H + legend band, n * W).
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    height, width = tiles[0].shape[:2]
    total_w = width * len(tiles)
    line = 14  # one line of the default font, with a margin
    swatch, pad = 10, 4
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell = max(int(probe.textlength(name, font=font)) for name in class_set.classes) + swatch + 3 * pad
    per_row = max(1, total_w // cell)
    rows = -(-class_set.num_classes // per_row)
    canvas = Image.new("RGB", (total_w, line + height + rows * line + pad), "white")
    canvas.paste(Image.fromarray(np.concatenate(tiles, axis=1)), (0, line))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(titles):
        left = k * width + max(0, (width - int(draw.textlength(title, font=font))) // 2)
        draw.text((left, 1), title, fill="black", font=font)
    for i, (name, color) in enumerate(zip(class_set.classes, class_set.colors, strict=True)):
        x, y = (i % per_row) * cell + pad, line + height + pad + (i // per_row) * line
        draw.rectangle((x, y + 1, x + swatch, y + 1 + swatch), fill=tuple(int(c) for c in color), outline="black")
        draw.text((x + swatch + pad, y), name, fill="black", font=font)
    return canvas


@torch.no_grad()
def _save_examples(run_dir: Path, data_root: Path, out_dir: Path, cfg: Any, count: int) -> list[str]:
    """Write ``count`` titled strips: photo | ground truth | source-only | ProCA | self-training, with a legend."""
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
        save_image_atomic(titled_strip(tiles, STRIP_TITLES, class_set), path)
        written.append(str(path))
    return written


def _finished_summary(out: Path, quick: bool) -> dict[str, Any] | None:
    """The results of a finished demo in ``out`` run at the same budget (``quick`` or not), else None."""
    finished = out / "demo.json"
    if not finished.is_file():
        return None
    summary: dict[str, Any] = json.loads(finished.read_text(encoding="utf-8"))
    return summary if bool(summary.get("quick", False)) == quick else None


def _print_results(console: Any, results: dict[str, dict[str, Any]], seed: int, quick: bool) -> None:
    from rich.table import Table

    title = f"proca demo{' --quick' if quick else ''} (seed {seed}): mIoU on the synthetic target's val split"
    table = Table(title=title, title_justify="left")
    table.add_column("stage")
    table.add_column("mIoU", justify="right")
    table.add_column("seconds", justify="right")
    rows = (("source only", "source"), ("AdaBN (source, target BatchNorm statistics)", "adabn"), ("ProCA", "proca"),
            ("self-training (final)", "ssl"))  # fmt: skip
    for label, key in rows:
        table.add_row(label, f"{results[key]['miou']:.2f}", f"{results[key]['seconds']:.0f}")
    console.print(table)


def _adabn_row(source: Path, data: Path, cfg: Any) -> dict[str, Any]:
    """The AdaBN baseline of the demo's source model (BatchNorm statistics re-estimated on the target train
    images, no training): how much of the gain is statistics."""
    from proca.engine.adabn import evaluate_adabn

    start = time.perf_counter()
    miou = evaluate_adabn(source, data, target_size=tuple(cfg.proca.target_size), eval_size=tuple(cfg.eval.input_size))
    return {"miou": miou, "seconds": round(time.perf_counter() - start, 2)}


def check_demo_outputs(out: Path, json_path: Path | None, *, force: bool, finished_ok: bool = False) -> None:
    """The demos' overwrite policy, checked before any work: ``--json`` is a file that does not exist yet and
    ``--out`` is empty, unless ``force`` (which runs the demo again). ``finished_ok``: check ``--json`` only
    (a finished demo in ``out`` may still be reported without training).

    Raises:
        OutputError: ``--json`` is a folder, or exists without ``force``.
        ProcaError: ``--out`` holds an earlier demo and ``force`` is not set.
    """
    if json_path is not None and Path(json_path).is_dir():
        raise OutputError(f"--json {json_path} is a folder; give a file name such as demo.json")
    if json_path is not None and Path(json_path).exists() and not force:
        raise OutputError(
            f"--json {json_path} exists; choose another path, or pass --force to overwrite it (--force also runs "
            "the demo again)"
        )
    if not finished_ok and Path(out).exists() and any(Path(out).iterdir()) and not force:
        raise ProcaError(f"--out {out} already holds a demo; use --force to run it again, or another --out.")


def run_demo(
    *,
    out: Path = Path("proca-demo"),
    seed: int = 0,
    json_path: Path | None = None,
    force: bool = False,
    threads: int | None = None,
    quick: bool = False,
) -> dict:
    """CLI entry of ``proca demo``: synthetic scenes -> every stage -> table, examples and JSON.

    Args:
        out: folder for ``data/`` (the scenes), ``run/`` (the recipe's run folder) and ``examples/``.
        seed: seed of the scenes and of the training.
        json_path: where to write ``source_only_miou``, ``adabn_miou``, ``proca_miou``, ``final_miou``,
            ``seconds``; with a finished demo of the same budget already in ``out`` (and no ``force``), its
            results are written there without retraining.
        force: start over in an existing ``out``.
        threads: torch threads for the run (None: ``DEMO_SETTINGS["threads"]``, else torch's default).
        quick: the same pipeline at the smaller budget of :data:`QUICK_SETTINGS` and :data:`QUICK_OVERRIDES`.

    Returns:
        The summary written to ``json_path``.

    Raises:
        ProcaError: ``out`` holds an earlier demo and ``force`` is not set.
    """
    from rich.console import Console

    from proca.data.synthetic import write_synthetic_datasets
    from proca.engine.train import STAGES, run_pipeline

    console = Console(stderr=True, highlight=False)
    out = Path(out)
    check_demo_outputs(out, json_path, force=force, finished_ok=True)
    earlier = _finished_summary(out, quick) if json_path is not None and not force else None
    if json_path is not None and earlier is not None:  # the demo in ``out`` is finished: no need to train again
        atomic_write_json(json_path, earlier)
        console.print(f"wrote the results of the demo in {out} to {json_path} (nothing retrained; --force reruns)")
        return earlier
    check_demo_outputs(out, json_path, force=force)
    start = time.perf_counter()
    settings = demo_settings(quick)
    previous_threads = torch.get_num_threads()
    wanted = threads or settings["threads"]
    if wanted:
        torch.set_num_threads(int(wanted))
    try:
        for name in ("run", "examples", "demo.json"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        cfg = demo_config(seed, quick)
        _print_settings(console, quick)
        data = out / "data"
        write_synthetic_datasets(
            data,
            seed=seed,
            num_train=settings["num_train"],
            num_val=settings["num_val"],
            size=tuple(settings["data_size"]),
            shift=settings["shift"],
            force=True,
            progress=True,
        )
        from proca.engine.launch import DistInfo
        from proca.engine.train import seeded_run

        clock = _run_clock(cfg, settings, start, console)
        with seeded_run(cfg, torch.device("cpu")):
            results = run_pipeline(
                cfg, run_dir=out / "run", data_root=data, stages=STAGES, dist=DistInfo(), progress=True, clock=clock
            )
        examples = _save_examples(out / "run", data, out / "examples", cfg, int(settings["examples"]))
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
        "quick": quick,
        "stage_seconds": {k: v.get("seconds") for k, v in results.items()},
        "examples": examples,
        "settings": {"data": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                     "overrides": {k: v for k, v, _ in demo_overrides(quick)}},
    }  # fmt: skip
    _print_results(console, results, seed, quick)
    gain = summary["final_miou"] - summary["source_only_miou"]
    console.print(f"final - source only: {gain:+.2f} mIoU; total {seconds:.0f} s; examples in {out / 'examples'}")
    atomic_write_json(out / "demo.json", summary)
    if json_path is not None:
        atomic_write_json(json_path, summary)
    return summary
