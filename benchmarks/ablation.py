"""Ablation table over seeds on the synthetic scenes: source only, AdaBN, ProCA stage variants, self-training, DAFormer.

Every row goes through the product path (:func:`proca.engine.train.run_pipeline`, the code of
``proca train --stage``), each ProCA adaptation row starting from the seed's one source model and each DAFormer
row (``--rows 7,8,9,10``) training its own ``daformer_mit_b0`` in the ``daformer`` stage; see
:mod:`proca.engine.ablation` and docs/ablation.md (the measured tables and what they show).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --work /tmp/ablation --seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/ablation.py --work /tmp/ablation-class --seeds 0,1,2 --class-shift 1.0 \
        --source-from /tmp/ablation-default

Writes ``WORK/ablation.md`` (mean +/- std per row) and ``WORK/ablation.json`` (every seed's mIoU, the rows'
overrides, the settings, the seconds); ``--json`` / ``--markdown`` write them elsewhere too. A second run in
the same ``--work`` reads finished rows back (an interrupted sweep continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from proca.engine.ablation import ABLATION_ROWS, DEFAULT_BUDGET, run_ablation
from proca.errors import ProcaError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the scenes and the run folders")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--shift", type=float, default=1.0, help="global synthetic shift (default 1.0)")
    parser.add_argument("--class-shift", type=float, default=0.0, help="class-conditional shift (default 0)")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers, 0-based (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--daformer-iters", type=int, default=None,
        help="iterations of the DAFormer rows (default: the budget's daformer.iters, 150)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the summary JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the markdown table here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--source-from", type=Path, default=None,
        help="use the source models of this earlier sweep's --work (same seeds and budget, another target shift)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = DEFAULT_BUDGET
    if args.daformer_iters is not None:
        if args.daformer_iters <= 0:
            print(f"error: --daformer-iters {args.daformer_iters}: give a positive count", file=sys.stderr)
            return 2
        kept = tuple(o for o in budget.daformer_overrides if not o.startswith("daformer.iters="))
        budget = dataclasses.replace(budget, daformer_overrides=(*kept, f"daformer.iters={args.daformer_iters}"))
    rows = ABLATION_ROWS if args.rows is None else tuple(ABLATION_ROWS[int(i)] for i in args.rows.split(","))
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    start = time.perf_counter()
    try:
        summary = run_ablation(
            args.work, seeds=seeds, rows=rows, budget=budget, shift=args.shift,
            class_shift=args.class_shift, device=args.device, progress=not args.no_progress,
            source_from=args.source_from,
        )  # fmt: skip
    except ProcaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = (args.work / "ablation.md").read_text(encoding="utf-8")
    for target, content in ((args.markdown, text), (args.json, json.dumps(summary, indent=2) + "\n")):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
    print(text)
    print(f"{len(seeds)} seeds x {len(rows)} rows in {time.perf_counter() - start:.0f} s; {args.work}/ablation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
