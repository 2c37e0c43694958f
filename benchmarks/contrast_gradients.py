"""How much gradient the prototype contrast gives, against the supervised loss, at each temperature.

On one ProCA batch (4 source + 4 target images, the stage's own losses and helpers: ``supervised_loss``,
``PrototypeContrastiveLoss``, ``confident_labels``, ``downsample_labels``) from a run folder's source model and
prototypes, prints per temperature the value of each contrastive term and the L2 norm of its gradient over the
network's parameters, next to the supervised loss's (CE + 0.75 Lovasz) gradient norm. Used by docs/ablation.md.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/contrast_gradients.py --run /tmp/ablation-default/seed0/source \
        --data-root /tmp/ablation-default/data/seed0 --size 64x128 --json /tmp/contrast_gradients.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _grad_norm(loss: Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def measure(run: Path, data_root: Path, size: tuple[int, int], temperatures: list[float], batch: int = 4) -> dict:
    from proca.data.datasets import CityscapesDataset, GTA5Dataset
    from proca.data.transforms import source_train_transform, test_transform
    from proca.engine.prototype_io import load_prototypes
    from proca.engine.stages.base import supervised_loss
    from proca.losses import PrototypeContrastiveLoss
    from proca.models import load_model
    from proca.prototypes import confident_labels, downsample_labels

    torch.manual_seed(0)
    model = load_model(run / "source.safetensors").model.train()
    protos = load_prototypes(run / "prototypes.safetensors")
    params = [p for p in model.parameters() if p.requires_grad]
    src_set = GTA5Dataset(data_root / "gtav", transform=source_train_transform(size, jitter=False))
    tgt_set = CityscapesDataset(data_root / "cityscapes", split="train", labels=False, transform=test_transform(size))
    batch = min(batch, len(src_set), len(tgt_set))
    src = [src_set[i] for i in range(batch)]
    images = torch.stack([s["image"].as_subclass(Tensor) for s in src])
    labels = torch.stack([s["label"].as_subclass(Tensor) for s in src]).long()
    tgt_images = torch.stack([tgt_set[i]["image"].as_subclass(Tensor) for i in range(batch)])
    src_feat, src_logits = model.forward_features(images)
    tgt_feat, tgt_logits = model.forward_features(tgt_images)
    terms = supervised_loss(src_logits, labels, 0.75)
    sup = sum(value * weight for value, weight in terms.values())
    src_small = downsample_labels(labels, src_feat.shape[-2:])
    tgt_small = confident_labels(tgt_logits.detach(), 0.9, mode="logit")
    out: dict[str, Any] = {
        "supervised_loss": float(sup), "supervised_grad_norm": _grad_norm(sup, params),
        "target_pixels_kept": float((tgt_small != 255).float().mean()), "rows": [],
    }  # fmt: skip
    for tau in temperatures:
        pcl = PrototypeContrastiveLoss(temperature=tau)
        row: dict[str, Any] = {"temperature": tau}
        levels = (("feat", "feature", src_feat, tgt_feat), ("out", "output", src_logits, tgt_logits))
        for name, level, s_x, t_x in levels:
            p = protos[f"{level}.prototypes"].detach()
            loss = pcl(features=s_x, labels=src_small, prototypes=p) + pcl(features=t_x, labels=tgt_small, prototypes=p)
            row[f"pcl_{name}"] = float(loss)
            row[f"pcl_{name}_grad_norm"] = _grad_norm(loss, params)
            row[f"pcl_{name}_grad_ratio"] = row[f"pcl_{name}_grad_norm"] / out["supervised_grad_norm"]
        out["rows"].append(row)
    out["ln_num_classes_x2"] = 2 * math.log(int(src_logits.shape[1]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder with source.safetensors, prototypes")
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding gtav/ and cityscapes/")
    parser.add_argument("--size", default="64x128", help="HxW of both batches (default 64x128)")
    parser.add_argument("--temperatures", default="50,1,0.1", help="comma-separated tau values")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    result = measure(args.run, args.data_root, (h, w), [float(t) for t in args.temperatures.split(",")])
    kept = 100 * result["target_pixels_kept"]
    print(f"supervised (CE + 0.75 Lovasz) loss {result['supervised_loss']:.3f}, "
          f"gradient norm {result['supervised_grad_norm']:.4g}; target pixels kept {kept:.1f}%")  # fmt: skip
    print("| tau | PCL feat (src+tgt) | grad norm | / CE grad | PCL out (src+tgt) | grad norm | / CE grad |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['temperature']:g} | {r['pcl_feat']:.3f} | {r['pcl_feat_grad_norm']:.3g} | "
              f"{r['pcl_feat_grad_ratio']:.3g} | {r['pcl_out']:.3f} | {r['pcl_out_grad_norm']:.3g} | "
              f"{r['pcl_out_grad_ratio']:.3g} |")  # fmt: skip
    print(f"(2 ln C = {result['ln_num_classes_x2']:.3f}: the value of each src+tgt pair at uniform softmax)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
