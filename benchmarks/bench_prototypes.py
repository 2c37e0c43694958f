"""Benchmark: prototype update and prototype contrastive loss, proca vs the release's formulation.

Run:  python benchmarks/bench_prototypes.py            (CPU, 2 threads, N = 2*90*160, A = 2048, C = 19)
      python benchmarks/bench_prototypes.py --device cuda

Each case runs in its own forked child process (the parent only imports torch), so one case's freed
memory cannot hide another's peak. Time: median of ``--repeats`` runs after one warm-up. Extra peak
memory: on CPU, the peak resident set size during one call minus the resident size just before it
(Linux ``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``); on CUDA,
``torch.cuda.max_memory_allocated`` minus the allocated bytes before the call. Inputs (features, labels,
prototypes) exist before the measurement and are not counted; the gradient of the features is.

The "release" cases are written here after the release's code (N x C x A expansion for the update;
masked copy + normalised copy for the loss); "naive" computes the cosines by broadcasting N x C x A.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from proca.io import atomic_write_json
from proca.losses import prototype_contrastive_loss
from proca.prototypes import PrototypeEstimator

IGNORE = 255


# --- the release's formulations, re-written for the comparison -----------------------------------------


def release_update(proto: torch.Tensor, amount: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> None:
    """The release's running-mean update: masks, then an N x C x A expansion (in place on proto/amount)."""
    mask = labels != IGNORE
    labels, features = labels[mask], features[mask]
    n, a = features.shape
    c = proto.shape[0]
    expanded = features.view(n, 1, a).expand(n, c, a)
    onehot = features.new_zeros(n, c).scatter_(1, labels.view(-1, 1), 1)
    onehot_nca = onehot.view(n, c, 1).expand(n, c, a)
    by_class = expanded.mul(onehot_nca)
    amount_ca = onehot_nca.sum(0)
    amount_ca[amount_ca == 0] = 1
    mean = by_class.sum(0) / amount_ca
    sum_weight = onehot.sum(0).view(c, 1).expand(c, a)
    weight = sum_weight.div(sum_weight + amount.view(c, 1).expand(c, a))
    weight[sum_weight == 0] = 0
    proto.copy_(proto.mul(1 - weight) + mean.mul(weight))
    amount.add_(onehot.sum(0))


def release_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """The release's PCL: boolean-masked copy, normalised copy, mm, mean cross entropy."""
    mask = labels != IGNORE
    labels, feat = labels[mask], features[mask]
    feat = F.normalize(feat, p=2, dim=1)
    proto = F.normalize(prototypes, p=2, dim=1)
    return F.cross_entropy(feat.mm(proto.t()) / tau, labels)


def naive_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """Cosines by broadcasting pixels against prototypes: an N x C x A product."""
    f = F.normalize(features, dim=1)
    p = F.normalize(prototypes, dim=1)
    logits = (f.unsqueeze(1) * p.unsqueeze(0)).sum(-1) / tau
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


# --- measurement ------------------------------------------------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} missing from /proc/self/status")


def _measure_memory(fn: Callable[[], Any], device: torch.device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status("VmRSS:")
    fn()
    return _status("VmHWM:") - before


def _time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall-clock seconds and median process CPU seconds (all threads) of ``repeats`` calls."""
    times, cpu = [], []
    for _ in range(repeats):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(times), statistics.median(cpu)


def _inputs(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, a, c = args.batch * args.height * args.width, args.dim, args.classes
    features = torch.relu(torch.randn(n, a, generator=g) + 0.5)
    labels = torch.randint(0, c, (n,), generator=g)
    labels[torch.rand(n, generator=g) < args.ignore_frac] = IGNORE
    prototypes = torch.relu(torch.randn(c, a, generator=g) + 0.5)
    out = {"features": features, "labels": labels, "prototypes": prototypes}
    return {k: v.to(device) for k, v in out.items()}


def _case(name: str, args: argparse.Namespace, queue: Any) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = _inputs(args, device)
    f, lab, protos = x["features"], x["labels"], x["prototypes"]
    b, h, w = args.batch, args.height, args.width
    tau = args.temperature
    fn: Callable[[], Any]
    if name == "update/proca":
        est = PrototypeEstimator(args.classes, args.dim).to(device)

        def fn() -> None:
            est.update(f, lab)

    elif name == "update/release":
        proto, amount = torch.zeros_like(protos), protos.new_zeros(args.classes)

        def fn() -> None:
            release_update(proto, amount, f, lab)

    elif name.startswith("loss"):
        image = name.startswith("loss-image")
        if image:  # features as a network emits them: (B, A, H, W)
            f = f.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        leaf = f.requires_grad_()
        kind = name.split("/")[1]

        def fn() -> None:
            leaf.grad = None
            if kind == "proca":
                loss = prototype_contrastive_loss(leaf, lab.view(b, h, w) if image else lab, protos, temperature=tau)
            else:
                flat = leaf.permute(0, 2, 3, 1).contiguous().view(-1, leaf.shape[1]) if image else leaf
                loss = (release_loss if kind == "release" else naive_loss)(flat, lab, protos, tau)
            loss.backward()
            leaf.grad = None

    else:
        raise ValueError(name)
    fn()  # warm-up
    memory = _measure_memory(fn, device)
    repeats = args.slow_repeats if name.endswith(("release", "naive")) and name.startswith("update") else args.repeats
    seconds, cpu_seconds = _time(fn, device, repeats)
    queue.put({"case": name, "seconds": seconds, "cpu_seconds": cpu_seconds, "extra_bytes": memory})


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(name, args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"case {name} failed (exit code {proc.exitcode})")
    return dict(queue.get())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=90, help="feature map height (720 / 8)")
    parser.add_argument("--width", type=int, default=160, help="feature map width (1280 / 8)")
    parser.add_argument("--dim", type=int, default=2048, help="A, feature channels")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--ignore-frac", type=float, default=0.25, help="fraction of ignored pixels")
    parser.add_argument("--temperature", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per fast case (median)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="timed runs of the release's update")
    parser.add_argument("--skip-naive", action="store_true", help="skip the N x C x A broadcast loss")
    parser.add_argument("--only", default="", help="run only the cases whose name starts with this (e.g. update)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.device == "cpu" and not Path("/proc/self/clear_refs").exists():
        raise SystemExit("CPU memory measurement needs Linux /proc (clear_refs, VmHWM)")

    cases = ["update/proca", "update/release", "loss/proca", "loss/release"]
    cases += [] if args.skip_naive else ["loss/naive"]
    cases += ["loss-image/proca", "loss-image/release"]
    cases = [name for name in cases if name.startswith(args.only)]
    load_before = os.getloadavg()
    results = {}
    for name in cases:
        results[name] = run_case(name, args)
        print(f"  {name}: {results[name]['seconds'] * 1e3:.1f} ms", file=sys.stderr, flush=True)

    load_after = os.getloadavg()
    n = args.batch * args.height * args.width
    print(
        f"N = {n:,} ({args.batch}x{args.height}x{args.width}), A = {args.dim}, C = {args.classes}, "
        f"{args.ignore_frac:.0%} ignored, device {args.device}, threads {args.threads}, torch {torch.__version__}"
    )
    print(f"1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs)")
    print()
    print("| case | median wall (ms) | median CPU (ms) | extra peak memory (MiB) | speed-up (wall) | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in results.items():
        group, kind = name.split("/")
        ours = results[f"{group}/proca"]
        speed = res["seconds"] / ours["seconds"]
        ratio = res["extra_bytes"] / max(ours["extra_bytes"], 1)
        vs = "- | -" if kind == "proca" else f"{speed:.1f}x | {ratio:.0f}x"
        print(
            f"| {name} | {res['seconds'] * 1e3:.1f} | {res['cpu_seconds'] * 1e3:.1f} | "
            f"{res['extra_bytes'] / 2**20:.1f} | {vs} |"
        )
    if args.json:
        atomic_write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})


if __name__ == "__main__":
    main()
