"""The training data loader's throughput at the paper's sizes, per DataLoader worker count (CPU).

Times the product's own path, ``proca.engine.streams.step_batches`` over the stage's streams:

- ``source``: GTA5-format scenes (1914x1052 RGB PNG + palette label PNG) -> 1280x720 with the ProCA
  stage's augmentations (colour jitter, grayscale, blur), uniform sampling;
- ``target``: Cityscapes-format scenes (2048x1024) -> 1024x512.

Usage::

    python benchmarks/bench_loader.py --workers 0,1,2 --images 8 --steps 16 --json loader.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from proca.config import resolve_config
from proca.engine.context import RunContext
from proca.engine.schedule import plan_batch
from proca.engine.streams import STREAM_IDS, Stream, source_stream, step_batches, target_dataset, uniform_stream


def _data(root: Path, images: int) -> tuple[Path, Path]:
    from proca.data.synthetic import write_synthetic_datasets

    gtav, cityscapes = root / "gtav_size", root / "cityscapes_size"
    if not (gtav / "gtav").is_dir():
        write_synthetic_datasets(gtav, seed=0, num_train=images, num_val=1, size=(1052, 1914), progress=True)
    if not (cityscapes / "cityscapes").is_dir():
        write_synthetic_datasets(cityscapes, seed=1, num_train=images, num_val=1, size=(1024, 2048), progress=True)
    return gtav, cityscapes


def _rate(ctx: RunContext, stream: Stream, workers: int, steps: int) -> float:
    plan = plan_batch(1, 1, 0)
    it = step_batches(ctx, plan, [stream], start=0, end=steps + 2, num_workers=workers)
    next(it)  # workers started, first batch decoded
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--images", type=int, default=8, help="scenes written per dataset")
    parser.add_argument("--steps", type=int, default=16, help="images timed per setting")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "proca-bench-loader")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gtav, cityscapes = _data(args.root, args.images)
    cfg = resolve_config(overrides=["proca.class_balanced=false"])
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        src_ctx = RunContext(cfg=cfg, run_dir=args.root / "run", data_root=gtav, progress=False)
        source = source_stream(
            src_ctx, size=cfg.proca.source_size, jitter=True, class_balanced=False, total=args.steps,
            stream_id=STREAM_IDS["proca_source"],
        )  # fmt: skip
        tgt_ctx = RunContext(cfg=cfg, run_dir=args.root / "run", data_root=cityscapes, progress=False)
        target = target_dataset(tgt_ctx, size=cfg.proca.target_size)
        fetch = uniform_stream(len(target), seed=0, stream=STREAM_IDS["proca_target"])  # type: ignore[arg-type]
        row = {
            "workers": workers,
            "source_1914x1052_to_1280x720_img_per_s": _rate(src_ctx, source, workers, args.steps),
            "target_2048x1024_to_1024x512_img_per_s": _rate(
                tgt_ctx, Stream(target, fetch, STREAM_IDS["proca_target"]), workers, args.steps
            ),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'workers':>8}{'source img/s':>14}{'target img/s':>14}")
    for row in rows:
        print(f"{row['workers']:>8}{row['source_1914x1052_to_1280x720_img_per_s']:>14.2f}"
              f"{row['target_2048x1024_to_1024x512_img_per_s']:>14.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpus": len(__import__("os").sched_getaffinity(0))}, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
