"""``proca adapt-bn``: a checkpoint -> the same checkpoint with BatchNorm statistics re-estimated on the target."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proca.errors import CheckpointError

__all__ = ["adabn_input_size", "run_adapt_bn"]


def adabn_input_size(meta: dict[str, Any]) -> tuple[int, int]:
    """The size target images are resized to: the run's ``proca.target_size``, else ``eval_input_size``."""
    config = meta.get("config")
    section = config.get("proca") if isinstance(config, dict) else None
    proca_section: dict[str, Any] = section if isinstance(section, dict) else {}
    for size in (proca_section.get("target_size"), meta.get("eval_input_size")):
        if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
            return int(size[0]), int(size[1])
    from proca.models.metadata import DEFAULT_EVAL_INPUT_SIZE

    return int(DEFAULT_EVAL_INPUT_SIZE[0]), int(DEFAULT_EVAL_INPUT_SIZE[1])


def run_adapt_bn(
    checkpoint: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] = Path("datasets"),
    tgt: str = "cityscapes",
    out: str | os.PathLike[str],
    images: int | None = None,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``proca adapt-bn``: re-estimate BatchNorm statistics on the target train images and save the result.

    The entry point of ``proca adapt-bn``; prints one summary line. Everything but the BatchNorm running
    statistics (and their batch counters) is copied from ``checkpoint`` unchanged, prototypes included; the
    metadata records ``stage: "adabn"``, what was used (``adabn``) and drops the old validation ``metrics``.

    Args:
        checkpoint: a proca ``.safetensors`` checkpoint or a released ``.pth`` file.
        data_root: the datasets folder holding the target's folder (``cityscapes/``, ...), or that folder itself.
        tgt: the unlabelled target as ``proca train --tgt`` takes it: a built-in name (its train images), a
            dataset card, or a folder (or glob) of images.
        out: the new ``.safetensors`` file (written atomically).
        images: use the first N target train images (None: all).
        input_size: (H, W) for the target images (None: the checkpoint's ``proca.target_size``, else its
            ``eval_input_size``).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        force: overwrite an existing ``out``.
        progress: show a progress bar.

    Returns:
        ``checkpoint``, ``out``, ``arch``, ``layers``, ``batches``, ``images``, ``input_size``.

    Raises:
        CheckpointError: a missing or unreadable checkpoint.
        ConfigError: a network without BatchNorm (MiT / SegFormer, frozen norm).
        DataError: no target images under ``data_root``.
        OutputError: ``out`` exists (without ``force``), is a folder or cannot be written.
    """
    from rich.console import Console

    from proca.engine.adabn import adapt_batchnorm, require_batchnorm, target_batches
    from proca.engine.device import resolve_device
    from proca.engine.export import check_output_path
    from proca.models import load_model, save_model

    checkpoint, out = Path(checkpoint), Path(out)
    if not checkpoint.is_file():
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist (give a proca .safetensors or a released .pth file)"
        )
    check_output_path(out, force=force)  # before any work: the house overwrite policy
    dev = resolve_device(device)
    loaded = load_model(checkpoint, map_location="cpu")
    model = loaded.model
    require_batchnorm(model)  # before reading any image
    size = input_size or adabn_input_size(loaded.metadata)
    batches, count = target_batches(data_root, size, images=images, batch_size=batch_size, tgt=tgt)
    result = adapt_batchnorm(model, batches, device=dev, total=count, progress=progress)
    meta = dict(loaded.metadata)
    meta.update(
        stage="adabn",
        metrics={},
        adabn={
            "from": str(checkpoint),
            "from_stage": loaded.metadata.get("stage"),
            "images": result.images,
            "batches": result.batches,
            "input_size": [int(size[0]), int(size[1])],
            "target": tgt,
            "statistics": "cumulative average of batch statistics (momentum=None)",
        },
    )
    save_model(model.cpu(), out, metadata=meta, prototypes=loaded.prototypes or None)
    summary = {
        "checkpoint": str(checkpoint),
        "out": str(out),
        "arch": str(meta.get("arch")),
        "layers": result.layers,
        "batches": result.batches,
        "images": result.images,
        "input_size": [int(size[0]), int(size[1])],
    }
    Console(highlight=False).print(
        f"[green]adapted[/] {checkpoint} -> {out}: BatchNorm statistics of {result.layers} layers re-estimated on "
        f"{result.images} target images at {size[0]}x{size[1]} ({result.batches} batches); every weight unchanged",
        soft_wrap=True,
    )
    return summary
