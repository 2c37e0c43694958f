"""Evaluation the release's way, scored the official evaluator's way (the library side of ``proca eval``).

Images are resized to the input size (bicubic, in the dataset transform), the logits of every scale (and
flip) are upsampled bilinearly (``align_corners=True``) to the full label size and their softmax averaged;
the argmax is compared with the full-resolution ground truth in one confusion matrix over the split.
Classes absent from ground truth and predictions are n/a and left out of the mean (the release counted
them as 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from proca.data.classes import ClassSet
from proca.engine.device import cap_workers, resolve_device
from proca.engine.loop import Batch, PreparedDataset, default_num_workers, iterate_batches
from proca.engine.metrics import ConfusionMatrix, all_reduce_sum
from proca.engine.predict import predict_ids
from proca.engine.progress import ProgressBar
from proca.engine.results import EvalResult
from proca.errors import ConfigError, DataError

__all__ = ["EvalResult", "evaluate"]


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    class_set: ClassSet,
    input_size: tuple[int, int] | None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    progress: bool = True,
    on_batch: Callable[[Batch, Tensor], None] | None = None,
    num_workers: int | None = None,
    distributed: bool = False,
) -> EvalResult:
    """Evaluate ``model`` on a labelled dataset with one confusion matrix over the whole split.

    Args:
        model: a segmentation network (put in eval mode here; its mode is restored afterwards).
        dataset: items with ``image`` and full-size ``label`` train ids of ``class_set`` (a dataset without
            transform is resized to ``input_size`` with the test transform here).
        class_set: classes of the model and the labels.
        input_size: (h, w) network input for untransformed images; ``None`` keeps the dataset's size.
        scales: test scales; flip: also average mirrored predictions.
        device: where the model runs.
        batch_size: images per forward pass.
        progress: show a progress bar with the running mIoU.
        on_batch: called with every batch and its (B, H, W) uint8 predicted train ids on the CPU.
        num_workers: loader processes (default: a few on CUDA, none on CPU; never more than the CPUs this
            process may use).
        distributed: under an initialised process group, evaluate this rank's share and all-reduce.

    Returns:
        The :class:`EvalResult` of the split.

    Shape:
        model: (B, 3, h, w) -> (B, C, h/8, w/8); labels (B, H, W).
    """
    dev = resolve_device(device)
    num = int(getattr(model, "num_classes", class_set.num_classes))
    if num != class_set.num_classes:
        raise ConfigError(
            f"the model predicts {num} classes but class set {class_set.name} has {class_set.num_classes}; "
            "evaluate with the checkpoint's own class set."
        )
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the evaluation dataset is empty; check --data-root and --split.")
    prepared = PreparedDataset(dataset, input_size=input_size)
    indices = list(range(len(prepared)))
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            indices = indices[rank::world]
    cm = ConfusionMatrix(class_set.num_classes)
    was_training = model.training
    model.eval()
    model.to(dev)
    workers = default_num_workers(dev) if num_workers is None else cap_workers(num_workers)
    seen = 0
    try:
        with ProgressBar(len(indices), "eval", enabled=progress and rank == 0) as bar:
            for batch in iterate_batches(
                prepared, batch_size=batch_size, indices=indices, num_workers=workers, pin_memory=dev.type == "cuda"
            ):
                if batch.labels is None:
                    raise DataError(f"{batch.paths[0] or batch.names[0]}: no ground truth; evaluation needs labels.")
                images = batch.images.to(dev, non_blocking=True)
                pred = predict_ids(model, images, out_size=batch.out_size, scales=scales, flip=flip)
                cm.update(pred, batch.labels.to(dev, non_blocking=True))
                seen += len(batch.names)
                if on_batch is not None:
                    on_batch(batch, pred.to(torch.uint8).cpu())
                running = cm.compute().miou
                bar.advance(len(batch.names), metric=f"mIoU {100 * running:.2f}" if not math.isnan(running) else "")
    finally:
        model.train(was_training)
    if world > 1:
        cm.all_reduce()
        seen = int(all_reduce_sum(torch.tensor([seen], dtype=torch.int64)).item())
    info = {"scales": [float(s) for s in scales], "flip": bool(flip)}
    if input_size is not None:
        info["input_size"] = [int(input_size[0]), int(input_size[1])]
    return EvalResult.from_metrics(cm.compute(), class_set, seen, info)
