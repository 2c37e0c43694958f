"""Evaluation benchmarks: confusion matrix by bincount vs the release's histc, and CPU inference speed.

Usage::

    python benchmarks/bench_eval.py                 # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_eval.py --only metric   # just the confusion-matrix comparison
    python benchmarks/bench_eval.py --device cuda   # run both parts on a GPU

1. Confusion matrix at 1024x2048 (one Cityscapes label), 19 classes: ``proca.engine.metrics.confusion_matrix``
   (one ``bincount`` of ``target * C + pred``) against the release's ``intersectionAndUnionGPU`` formulation
   (three ``histc`` calls, moved to the CPU); both give the same intersections and unions.
2. Images per second of ``predict_probs`` with ``deeplabv2_resnet18`` (random init) at a 256x512 input,
   single scale and 6 scales + flip, outputs upsampled to 512x1024.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from proca.engine.metrics import confusion_matrix
from proca.engine.predict import predict_probs


def histc_intersection_union(output: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int = 255):
    """The release's ``core/utils/misc.py`` formulation (re-typed for the comparison)."""
    output = output.reshape(-1).clone()
    target = target.reshape(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    area_intersection = torch.histc(intersection.float().cpu(), bins=k, min=0, max=k - 1)
    area_output = torch.histc(output.float().cpu(), bins=k, min=0, max=k - 1)
    area_target = torch.histc(target.float().cpu(), bins=k, min=0, max=k - 1)
    return area_intersection, area_output + area_target - area_intersection, area_target


def _time(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def bench_metric(device: torch.device, repeat: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (1, 1024, 2048), generator=g)
    target[:, :100] = 255
    pred = torch.randint(0, 19, (1, 1024, 2048), generator=g)
    target, pred = target.to(device), pred.to(device)
    cm = confusion_matrix(pred, target, 19)
    inter, union, _ = histc_intersection_union(pred, target, 19)
    tp = cm.diagonal().cpu().double()
    assert torch.equal(tp, inter.double()), "intersections differ"
    assert torch.equal(cm.sum(0).cpu().double() + cm.sum(1).cpu().double() - tp, union.double()), "unions differ"
    t_bincount = _time(lambda: confusion_matrix(pred, target, 19), repeat, device)
    t_histc = _time(lambda: histc_intersection_union(pred, target, 19), repeat, device)
    return {"bincount_ms": 1000 * t_bincount, "histc_ms": 1000 * t_histc}


def bench_inference(device: torch.device, images: int) -> dict[str, float]:
    from proca.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv2_resnet18", num_classes=19).eval().to(device)
    x = torch.randn(1, 3, 256, 512, device=device)
    out: dict[str, float] = {}
    for label, scales, flip in (
        ("single_scale", (1.0,), False),
        ("6_scales_flip", (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True),
    ):
        seconds = _time(
            lambda s=scales, f=flip: predict_probs(model, x, out_size=(512, 1024), scales=s, flip=f), images, device
        )
        out[f"{label}_images_per_s"] = 1.0 / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["metric", "inference"], default=None)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of the confusion matrix")
    parser.add_argument("--images", type=int, default=3, help="timed images per inference setting")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, object] = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    with torch.no_grad():
        if args.only in (None, "metric"):
            result["confusion_1024x2048"] = bench_metric(device, args.repeat)
        if args.only in (None, "inference"):
            result["deeplabv2_resnet18_256x512"] = bench_inference(device, args.images)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
