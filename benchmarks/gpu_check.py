"""GPU checks: ProCA training-step throughput and memory at the paper's sizes, AMP, and NCCL.

Runs on one machine with CUDA; prints a table and writes JSON (``--json``). What it measures:

1. ``step``: the product's ProCA step, ``ProcaStage.train_step`` run by the :class:`Trainer` (with the
   LR hook), for DeepLabV2-ResNet-101 (random init) at the paper's sizes: one 1280x720 source + one
   1024x512 target image per GPU. The stage is built from a run folder exactly as ``proca train --stage
   proca`` builds it; one batch is cached, so the data loader is not in the step time
   (``benchmarks/bench_loader.py`` measures it). Precisions: fp32, bf16 autocast, bf16 + channels_last,
   fp16 autocast + GradScaler. Reports iterations/s and peak GPU memory.
2. ``ddp``: the same stage under torchrun on all local GPUs with the product's set-up (NCCL, SyncBatchNorm,
   DistributedDataParallel, prototypes all-reduced), checking that every rank ends with identical
   prototypes.

3. ``--loader-workers 0,4,8``: the training data loader's images/s at the paper's sizes per worker count
   (``benchmarks/bench_loader.py``), on the GPU machine's CPUs.
4. ``--stage source --arch daformer_mit_b5 --size 512x512 --batch 2 --skip-ddp``: one source-only step of a
   transformer network (AdamW), the setting DAFormer reports memory for.
5. ``--stage daformer --arch daformer_mit_b5 --size 512x512 --batch 2 --precisions fp32,bf16 --skip-ddp``: one
   full step of ``proca train --recipe daformer`` (``DAFormerStage.train_step`` through the :class:`Trainer`):
   the EMA update, the student on source and mixed images, the teacher's pseudo labels, the frozen ImageNet
   encoder's feature distance, ClassMix with colour jitter and blur, and the losses; ``--mic`` adds MIC's
   masked images, ``--contrast prototype|distribution`` the prototype contrast.

Usage::

    python benchmarks/gpu_check.py --json gpu.json            # 1. and 2.
    python benchmarks/gpu_check.py --size 64x128 --tgt-size 64x128 --device cpu --iters 2   # quick CPU run
    python benchmarks/gpu_check.py --stage daformer --arch daformer_mit_b0 --size 64x64 --batch 2 \
        --device cpu --iters 2 --warmup 1 --precisions fp32,bf16 --skip-ddp --mic   # the daformer path on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from proca.engine.hooks import LRScheduleHook
from proca.engine.launch import DistInfo
from proca.engine.trainer import Hook, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _run import daformer_run, proca_run


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Hook):
    """Wall time of each step (synchronised with the device) after ``warmup`` steps, and the losses."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self.losses: list[float] = []
        self._start = 0.0

    def before_step(self, trainer: Trainer, iteration: int) -> None:
        _sync(trainer.ctx.device)
        if iteration == self.warmup and trainer.ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.ctx.device)
        self._start = time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        _sync(trainer.ctx.device)
        if trainer.iteration > self.warmup:
            self.times.append(time.perf_counter() - self._start)
        assert trainer.result is not None
        self.losses.append(trainer.result.losses.get("total", float("nan")))


def timed_proca_steps(ctx: Any, iters: int, warmup: int, stage_name: str = "proca") -> tuple[StepTimer, Any]:
    """The stage's ``train_step`` (``ProcaStage`` or ``SourceStage``) through the :class:`Trainer` (LR hook +
    timer); one cached batch, so the data loader is not part of the step time (``bench_loader.py`` measures it)."""
    from proca.engine.stages import DAFormerStage, ProcaStage, SourceStage

    section = getattr(ctx.cfg, stage_name)
    section.iters = iters + warmup
    section.poly_iters = iters + warmup
    classes: dict[str, Any] = {"proca": ProcaStage, "source": SourceStage, "daformer": DAFormerStage}
    stage = classes[stage_name](ctx)
    first = next(stage.batches(0))
    if stage_name == "daformer":  # (step, micro-batches): the step number drives the EMA weight and the draws
        stage.batches = lambda start: iter([(s, first[1]) for s in range(start, iters + warmup)])  # type: ignore[method-assign]
    else:
        stage.batches = lambda start: iter([first] * (iters + warmup - start))  # type: ignore[method-assign]
    timer = StepTimer(warmup)
    Trainer(ctx, stage, [LRScheduleHook(), timer]).train()
    return timer, stage


def run_step_benchmark(args: argparse.Namespace, device: torch.device, amp: str, channels_last: bool) -> dict:
    if args.stage == "daformer":
        sets = [f"daformer.mic={str(args.mic).lower()}", f"daformer.prototype_contrast={args.contrast}"]
        ctx = daformer_run(
            arch=args.arch, crop=args.size, batch=args.batch, amp=amp, channels_last=channels_last,
            dist=DistInfo(device=device), root=args.workdir, overrides=sets,
        )  # fmt: skip
    else:
        ctx = proca_run(
            arch=args.arch, source_size=args.size, target_size=args.tgt_size, amp=amp, channels_last=channels_last,
            dist=DistInfo(device=device), root=args.workdir, source_batch=args.batch,
        )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.empty_cache()
    timer, _ = timed_proca_steps(ctx, args.iters, args.warmup, args.stage)
    seconds = sum(timer.times) / len(timer.times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "precision": amp + ("+channels_last" if channels_last else ""),
        "stage": args.stage,
        **(
            {"batch": args.batch, "crop": list(args.size), "mic": args.mic, "contrast": args.contrast}
            if args.stage == "daformer"
            else {}
        ),
        "it_per_s": 1.0 / seconds,
        "s_per_it": seconds,
        "peak_gib": peak,
        "loss_finite": all(torch.isfinite(torch.tensor(timer.losses)).tolist()),
        "last_loss": timer.losses[-1],
    }


def ddp_child(args: argparse.Namespace) -> None:
    """Body of each torchrun process: the product's set-up (SyncBatchNorm + DDP on CUDA, prototypes all-reduced)."""
    from proca.engine.hooks import tensors_identical
    from proca.engine.launch import init_distributed

    dist = init_distributed(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    ctx = proca_run(
        arch=args.arch, source_size=args.size, target_size=args.tgt_size, amp=args.ddp_amp, channels_last=False,
        dist=dist, root=args.workdir,
    )  # fmt: skip
    timer, stage = timed_proca_steps(ctx, args.iters, args.warmup)
    identical = tensors_identical(stage.checkpoint_tensors())
    seconds = sum(timer.times) / len(timer.times)
    if dist.is_main:
        peak = torch.cuda.max_memory_allocated(dist.device) / 2**30 if dist.device.type == "cuda" else float("nan")
        result = {
            "backend": "nccl" if dist.device.type == "cuda" else "gloo",
            "world_size": dist.world_size,
            "precision": args.ddp_amp,
            "it_per_s": 1.0 / seconds,
            "images_per_s": 2 * dist.world_size / seconds,
            "peak_gib": peak,
            "prototypes_identical": identical,
        }
        Path(args.ddp_result).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def run_ddp(args: argparse.Namespace, nproc: int) -> dict:
    result_file = Path(args.ddp_result or "/tmp/proca_gpu_check_ddp.json")
    result_file.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        str(Path(__file__).resolve()), "--ddp-child", "--ddp-result", str(result_file),
        "--arch", args.arch, "--size", f"{args.size[0]}x{args.size[1]}",
        "--tgt-size", f"{args.tgt_size[0]}x{args.tgt_size[1]}", "--iters", str(args.iters),
        "--warmup", str(args.warmup), "--ddp-amp", args.ddp_amp, "--workdir", str(args.workdir),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ddp_timeout)
    if proc.returncode != 0 or not result_file.is_file():
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "Error" in ln or "error" in ln]
        return {"error": "\n".join(lines[:12]), "returncode": proc.returncode}
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="deeplabv2_resnet101")
    parser.add_argument("--size", type=_size, default=(720, 1280), help="source HxW (paper: 720x1280)")
    parser.add_argument("--tgt-size", type=_size, default=(512, 1024), help="target HxW (paper: 512x1024)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precisions", default="fp32,bf16,bf16+cl,fp16")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument("--ddp-amp", default="bf16")
    parser.add_argument("--ddp-timeout", type=int, default=300)
    parser.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp-result", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--stage", choices=("proca", "source", "daformer"), default="proca", help="which stage's step to time"
    )
    parser.add_argument("--batch", type=int, default=1, help="source images per step (--stage source/daformer)")
    parser.add_argument("--mic", action="store_true", help="--stage daformer: with MIC's masked images")
    parser.add_argument(
        "--contrast", choices=("none", "prototype", "distribution"), default="none",
        help="--stage daformer: daformer.prototype_contrast",
    )  # fmt: skip
    parser.add_argument(
        "--loader-workers", default="", help="also time the data loader with these worker counts, e.g. 0,4,8"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the synthetic run (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir is None:
        import tempfile

        args.workdir = Path(tempfile.mkdtemp(prefix="proca-gpu-check-"))
    if args.ddp_child:
        ddp_child(args)
        return

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "arch": args.arch,
        "source_size": list(args.size),
        "target_size": list(args.tgt_size),
        "steps": [],
    }
    for spec in args.precisions.split(","):
        amp, _, cl = spec.partition("+")
        try:
            row = run_step_benchmark(args, device, amp, channels_last=cl == "cl")
        except torch.OutOfMemoryError as err:  # a row, not a crash
            row = {"precision": spec, "error": f"out of memory: {err}"}
        info["steps"].append(row)
        print(json.dumps(row), flush=True)
    if args.loader_workers:
        import subprocess as sp

        loader_json = args.workdir / "loader.json"
        script = str(Path(__file__).resolve().parent / "bench_loader.py")
        root = str(args.workdir / "loader")
        cmd = [sys.executable, script, "--workers", args.loader_workers, "--root", root, "--json", str(loader_json)]
        sp.run(cmd, check=True)
        info["loader"] = json.loads(loader_json.read_text())
    if not args.skip_ddp:
        nproc = torch.cuda.device_count() if device.type == "cuda" else 2
        info["ddp"] = run_ddp(args, nproc)
        print(json.dumps(info["ddp"]), flush=True)

    print(f"\n{info['device']}  torch {info['torch']}  {args.arch}  src {args.size}  tgt {args.tgt_size}")
    print(f"{'precision':<18}{'it/s':>8}{'s/it':>8}{'peak GiB':>10}")
    for row in info["steps"]:
        if "error" in row:
            print(f"{row['precision']:<18} {row['error'][:60]}")
        else:
            print(f"{row['precision']:<18}{row['it_per_s']:>8.2f}{row['s_per_it']:>8.3f}{row['peak_gib']:>10.2f}")
    if "ddp" in info:
        print("ddp:", json.dumps(info["ddp"]))
    if args.json:
        args.json.write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
