"""AdaBN: BatchNorm statistics re-estimated on unlabelled target images (the library of ``proca adapt-bn``).

Adaptive Batch Normalization (Li et al., 2016) keeps every learnt weight and replaces each BatchNorm layer's
running mean and variance by the statistics of the target domain. Here they are a **cumulative average** over
the target batches: every BatchNorm layer is reset (``reset_running_stats``) and given ``momentum=None``, the
network runs in eval mode with only its BatchNorm layers in train mode (dropout and everything else as in
inference), without gradients, so after ``n`` batches each running mean is the plain mean of the ``n`` batch
means and each running variance the mean of the ``n`` unbiased batch variances (PyTorch's cumulative moving
average). Weights, biases and every other buffer are left untouched, bit for bit.

Networks without BatchNorm statistics to re-estimate are refused: the MiT / SegFormer / DAFormer models
(LayerNorm in the encoder; BatchNorm only in the decode head) and ``norm="frozen"`` DeepLabV2 models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from proca.engine.progress import ProgressBar
from proca.errors import ConfigError, DataError

__all__ = [
    "AdaBNResult",
    "adapt_batchnorm",
    "batchnorm_layers",
    "evaluate_adabn",
    "require_batchnorm",
    "target_batches",
    "val_miou",
]


@dataclass(frozen=True)
class AdaBNResult:
    """What :func:`adapt_batchnorm` did.

    Attributes:
        layers: BatchNorm layers whose statistics were re-estimated.
        batches: forward passes (each layer's running statistics average this many batch statistics).
        images: images seen.
    """

    layers: int
    batches: int
    images: int


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics (BatchNorm1d/2d/3d, SyncBatchNorm)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def require_batchnorm(model: nn.Module) -> list[_BatchNorm]:
    """The layers of :func:`batchnorm_layers`; a network that AdaBN cannot adapt is refused (:class:`ConfigError`).

    Refused: no BatchNorm layer with running statistics (``norm="frozen"`` included), and networks whose
    encoder normalises with LayerNorm (MiT / SegFormer / DAFormer): their only BatchNorm layers sit in the
    decode head, so re-estimating them would not be the AdaBN baseline.
    """
    layers = batchnorm_layers(model)
    layer_norms = sum(isinstance(m, nn.LayerNorm) for m in model.modules())
    if layers and not layer_norms:
        return layers
    arch = getattr(model, "arch", type(model).__name__)
    norm = getattr(model, "norm", None)
    if layer_norms:
        head = f"; only {len(layers)} BatchNorm layers of its decode head would change" if layers else ""
        why = f"its encoder normalises with LayerNorm (MiT / SegFormer), which keeps no running statistics{head}"
    elif norm == "frozen":
        why = "its BatchNorm layers are frozen (norm='frozen': fixed statistics, nothing to re-estimate)"
    else:
        why = "it has no BatchNorm layer with running statistics"
    raise ConfigError(
        f"AdaBN cannot adapt {arch}: {why}; use a DeepLabV2 checkpoint trained with norm='batch', "
        "or adapt this network with proca train --stage proca."
    )


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    images: Iterable[Tensor],
    *,
    device: str | torch.device = "cpu",
    total: int | None = None,
    progress: bool = False,
) -> AdaBNResult:
    """Re-estimate the BatchNorm running statistics of ``model`` on ``images`` as a cumulative average.

    Every BatchNorm layer is reset and set to ``momentum=None`` for the pass; its momentum and every
    module's train/eval mode are restored afterwards. Only ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` of BatchNorm layers change; parameters and all other buffers stay identical.

    Args:
        model: the network (changed in place; moved to ``device``).
        images: batches of normalised images, (B, 3, H, W) each, e.g. from :func:`target_batches`.
        device: where the forward passes run.
        total: images in ``images`` (for the progress bar).
        progress: show a rich progress bar.

    Returns:
        The number of layers, batches and images (see :class:`AdaBNResult`).

    Raises:
        ConfigError: the network has no BatchNorm layer with running statistics.
        DataError: ``images`` yielded no batch, or the statistics came out non-finite.
    """
    layers = require_batchnorm(model)
    dev = torch.device(device)
    modes = {m: m.training for m in model.modules()}
    momenta = [layer.momentum for layer in layers]
    saved = [tuple(t.clone() for t in _statistics(layer)) for layer in layers]
    model.to(dev)
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches, not an exponential one
        layer.train()
    batches = seen = 0
    try:
        with ProgressBar(total or 0, "adapt-bn", enabled=progress and bool(total)) as bar:
            for batch in images:
                if batch.ndim != 4 or batch.shape[1] != 3:
                    raise DataError(f"AdaBN expects image batches (B, 3, H, W), got {tuple(batch.shape)}")
                model(batch.to(dev, non_blocking=True))
                batches += 1
                seen += int(batch.shape[0])
                bar.advance(int(batch.shape[0]))
        if batches == 0:
            raise DataError("AdaBN got no target images; check --data-root (its cityscapes/leftImg8bit/train).")
        bad = [i for i, layer in enumerate(layers) if not _finite(layer)]
        if bad:
            raise DataError(
                f"AdaBN produced non-finite statistics in {len(bad)} BatchNorm layers; check the images "
                "(NaN/inf inputs) and the checkpoint's weights."
            )
    except BaseException:
        for layer, old in zip(layers, saved, strict=True):
            for buffer, value in zip(_statistics(layer), old, strict=True):
                buffer.copy_(value)
        raise
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return AdaBNResult(layers=len(layers), batches=batches, images=seen)


def _statistics(layer: _BatchNorm) -> tuple[Tensor, Tensor, Tensor]:
    """``running_mean``, ``running_var``, ``num_batches_tracked`` of a layer that tracks running statistics."""
    mean, var, count = layer.running_mean, layer.running_var, layer.num_batches_tracked
    assert mean is not None and var is not None and count is not None  # track_running_stats (batchnorm_layers)
    return mean, var, count


def _finite(layer: _BatchNorm) -> bool:
    mean, var, _ = _statistics(layer)
    return bool(torch.isfinite(mean).all() and torch.isfinite(var).all())


def target_batches(
    data_root: str | os.PathLike[str],
    input_size: tuple[int, int],
    *,
    images: int | None = None,
    batch_size: int = 8,
    tgt: str = "cityscapes",
) -> tuple[Iterator[Tensor], int]:
    """Batches of unlabelled target images (resized to ``input_size``, normalised) for :func:`adapt_batchnorm`.

    Args:
        data_root: the datasets folder holding the target's folder (``cityscapes/``, ...), or that folder itself.
        input_size: (H, W) the network sees (the checkpoint's target size).
        images: use the first ``images`` images (None: all of them).
        batch_size: images per forward pass.
        tgt: the target, as ``proca train --tgt`` takes it: a built-in name (its train split), a dataset card
            or a folder (or glob) of images (:func:`proca.data.registry.open_target_images`).

    Returns:
        ``(batches, count)``: an iterator of (B, 3, H, W) float tensors and the number of images it yields.

    Raises:
        DataError: no such split or folder, or ``images`` / ``batch_size`` below 1.
    """
    from proca.data.classes import CITYSCAPES_19
    from proca.data.registry import open_target_images
    from proca.data.transforms import test_transform
    from proca.engine.loop import PreparedDataset, iterate_batches

    if images is not None and images < 1:
        raise DataError(f"--images {images}: give at least 1 image (or leave it out to use the whole split)")
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: give at least 1")
    size = (int(input_size[0]), int(input_size[1]))
    dataset = open_target_images(tgt, data_root, class_set=CITYSCAPES_19, transform=test_transform(size))
    count = len(dataset) if images is None else min(int(images), len(dataset))
    prepared = PreparedDataset(dataset, input_size=size)

    def generate() -> Iterator[Tensor]:
        for batch in iterate_batches(prepared, batch_size=batch_size, indices=range(count)):
            yield batch.images

    return generate(), count


def evaluate_adabn(
    checkpoint: str | os.PathLike[str],
    data_root: str | os.PathLike[str],
    *,
    target_size: tuple[int, int],
    eval_size: tuple[int, int],
    images: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """The AdaBN baseline of a checkpoint, in one call: its mIoU (%) on the target val split after AdaBN.

    Loads ``checkpoint``, re-estimates its BatchNorm statistics on the Cityscapes train images under
    ``data_root`` at ``target_size`` (:func:`adapt_batchnorm`), and evaluates it on the val split at
    ``eval_size`` at one scale, as the training stages validate. Nothing is written.

    Raises:
        CheckpointError, ConfigError, DataError: as :func:`proca.models.load_model`, :func:`adapt_batchnorm`
            and :func:`target_batches`.
    """
    from proca.models import load_model

    loaded = load_model(checkpoint, map_location="cpu")
    batches, count = target_batches(data_root, target_size, images=images, batch_size=batch_size)
    adapt_batchnorm(loaded.model, batches, device=device, total=count, progress=progress)
    return val_miou(loaded.model, loaded.metadata, data_root, eval_size=eval_size, device=device, progress=progress)


def val_miou(
    model: nn.Module,
    metadata: dict[str, object],
    data_root: str | os.PathLike[str],
    *,
    eval_size: tuple[int, int],
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """mIoU (%) of ``model`` on the Cityscapes val split under ``data_root`` at ``eval_size``, one scale (as the
    training stages validate); the class set comes from the checkpoint ``metadata``."""
    from proca.data.classes import get_class_set
    from proca.data.datasets import CityscapesDataset, cityscapes_root
    from proca.engine.evaluate import evaluate

    class_set = get_class_set(str(metadata.get("class_set") or "cityscapes19"))
    val = CityscapesDataset(cityscapes_root(data_root), split="val", class_set=class_set)
    result = evaluate(
        model, val, class_set=class_set, input_size=(int(eval_size[0]), int(eval_size[1])),
        device=device, batch_size=1, progress=progress, num_workers=0,
    )  # fmt: skip
    return float(result.miou)
