"""GPU checks: ProCA training-step throughput and memory at the paper's sizes, AMP, and NCCL.

Runs on one machine with CUDA; prints a table and writes JSON (``--json``). What it measures:

1. ``step``: ProCA adaptation iterations of DeepLabV2-ResNet-101 (random init) at the paper's sizes,
   one 1280x720 source + one 1024x512 target image per GPU (two forward passes, supervised CE +
   0.75 Lovasz on the source, both prototype sets updated with target then source pixels, four
   prototype contrastive terms), SGD with the head at 10x. Precisions: fp32, bf16 autocast, bf16 +
   channels_last, fp16 autocast + GradScaler. Reports iterations/s and peak GPU memory.
2. ``ddp``: the same step under torchrun with the NCCL backend on all local GPUs (SyncBatchNorm,
   DistributedDataParallel, prototypes all-reduced), checking that every rank ends with identical
   prototypes.

Usage::

    python benchmarks/gpu_check.py --json gpu.json            # 1. and 2.
    python benchmarks/gpu_check.py --size 64x128 --tgt-size 64x128 --device cpu --iters 2   # quick CPU run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from proca.losses import PrototypeContrastiveLoss, lovasz_softmax
from proca.models import build_model
from proca.prototypes import PrototypeEstimator, confident_labels, downsample_labels


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


class ProCAStep:
    """One ProCA adaptation iteration composed from the library pieces, as ALGORITHM.md states it."""

    def __init__(self, model: nn.Module, core: Any, num_classes: int, device: torch.device, amp: str) -> None:
        self.model = model
        self.core = core  # the DeepLabV2 (unwrapped), for attributes
        self.device = device
        self.amp = amp
        self.feat_protos = PrototypeEstimator(num_classes, core.feature_dim).to(device)
        self.out_protos = PrototypeEstimator(num_classes, num_classes).to(device)
        self.pcl = PrototypeContrastiveLoss(temperature=50.0)
        self.optimizer = torch.optim.SGD(core.param_groups(2.5e-4), lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def _autocast(self) -> Any:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def __call__(self, src: torch.Tensor, src_label: torch.Tensor, tgt: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            src_feat, src_logits = self.model(src)
            tgt_feat, tgt_logits = self.model(tgt)
        up = F.interpolate(src_logits.float(), size=src.shape[-2:], mode="bilinear", align_corners=True)
        sup = F.cross_entropy(up, src_label, ignore_index=255) + 0.75 * lovasz_softmax(up.softmax(1), src_label)
        src_lbl = downsample_labels(src_label, src_feat.shape[-2:])
        tgt_lbl = confident_labels(tgt_logits.detach().float(), 0.9, mode="logit")
        for feats, labels in ((tgt_feat, tgt_lbl), (src_feat, src_lbl)):
            self.feat_protos.update(feats.detach().float(), labels)
        for logits, labels in ((tgt_logits, tgt_lbl), (src_logits, src_lbl)):
            self.out_protos.update(logits.detach().float(), labels)
        pf, po = self.feat_protos.prototypes, self.out_protos.prototypes
        loss = (
            sup
            + self.pcl(features=src_feat.float(), labels=src_lbl, prototypes=pf)
            + self.pcl(features=tgt_feat.float(), labels=tgt_lbl, prototypes=pf)
            + self.pcl(features=src_logits.float(), labels=src_lbl, prototypes=po)
            + self.pcl(features=tgt_logits.float(), labels=tgt_lbl, prototypes=po)
        )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


class FeaturesForward(nn.Module):
    """Wrap ``forward_features`` as ``forward`` so DistributedDataParallel sees one call per pass."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.core.forward_features(x)  # type: ignore[operator]


def _batch(args: argparse.Namespace, device: torch.device, num_classes: int, memory_format: Any) -> tuple:
    g = torch.Generator().manual_seed(0)
    sh, sw = args.size
    th, tw = args.tgt_size
    src = torch.randn(1, 3, sh, sw, generator=g).to(device).contiguous(memory_format=memory_format)
    tgt = torch.randn(1, 3, th, tw, generator=g).to(device).contiguous(memory_format=memory_format)
    label = torch.randint(0, num_classes, (1, sh, sw), generator=g).to(device)
    return src, label, tgt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_step_benchmark(args: argparse.Namespace, device: torch.device, amp: str, channels_last: bool) -> dict:
    torch.manual_seed(0)
    core = build_model(args.arch, num_classes=19).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    core = core.to(memory_format=memory_format)
    core.train()
    step = ProCAStep(FeaturesForward(core), core, 19, device, amp)
    src, label, tgt = _batch(args, device, 19, memory_format)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step(src, label, tgt)
    _sync(device)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step(src, label, tgt)
            _sync(device)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60), flush=True)
    start = time.perf_counter()
    losses = [step(src, label, tgt) for _ in range(args.iters)]
    _sync(device)
    seconds = (time.perf_counter() - start) / args.iters
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "precision": amp + ("+channels_last" if channels_last else ""),
        "it_per_s": 1.0 / seconds,
        "s_per_it": seconds,
        "peak_gib": peak,
        "loss_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
        "last_loss": losses[-1],
    }


def ddp_child(args: argparse.Namespace) -> None:
    """Body of each torchrun process: NCCL (gloo on CPU), SyncBN + DDP, prototypes all-reduced."""
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    core = build_model(args.arch, num_classes=19).to(device)
    sync_bn = world > 1 and device.type == "cuda"  # SyncBatchNorm runs on CUDA only
    model: nn.Module = FeaturesForward(nn.SyncBatchNorm.convert_sync_batchnorm(core) if sync_bn else core)
    # Two forward passes (source, target) before one backward: broadcasting BatchNorm buffers at the
    # second forward would modify tensors autograd saved in the first, so buffers are not broadcast.
    model = nn.parallel.DistributedDataParallel(
        model, device_ids=[local] if device.type == "cuda" else None, broadcast_buffers=False
    )
    step = ProCAStep(model, core, 19, device, args.ddp_amp)
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees different pixels
    sh, sw = args.size
    th, tw = args.tgt_size
    src = torch.randn(1, 3, sh, sw, generator=g).to(device)
    tgt = torch.randn(1, 3, th, tw, generator=g).to(device)
    label = torch.randint(0, 19, (1, sh, sw), generator=g).to(device)
    for _ in range(args.warmup):
        step(src, label, tgt)
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step(src, label, tgt)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.iters
    protos = step.feat_protos.prototypes.clone()
    gathered = [torch.empty_like(protos) for _ in range(world)]
    dist.all_gather(gathered, protos)
    identical = all(torch.equal(gathered[0], p) for p in gathered)
    if rank == 0:
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        result = {
            "backend": backend,
            "world_size": world,
            "precision": args.ddp_amp,
            "it_per_s": 1.0 / seconds,
            "images_per_s": 2 * world / seconds,
            "peak_gib": peak,
            "prototypes_identical": identical,
        }
        Path(args.ddp_result).write_text(json.dumps(result))
    dist.destroy_process_group()


def run_ddp(args: argparse.Namespace, nproc: int) -> dict:
    result_file = Path(args.ddp_result or "/tmp/proca_gpu_check_ddp.json")
    result_file.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        str(Path(__file__).resolve()), "--ddp-child", "--ddp-result", str(result_file),
        "--arch", args.arch, "--size", f"{args.size[0]}x{args.size[1]}",
        "--tgt-size", f"{args.tgt_size[0]}x{args.tgt_size[1]}", "--iters", str(args.iters),
        "--warmup", str(args.warmup), "--ddp-amp", args.ddp_amp,
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
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step")
    args = parser.parse_args()
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
