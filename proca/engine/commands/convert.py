"""``proca convert``: a released ProCA/FADA/SDCA ``.pth`` checkpoint -> a proca ``.safetensors`` checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from proca.errors import CheckpointError, ConfigError
from proca.io import check_new_file
from proca.models.checkpoint import load_model, save_model, sniff_format
from proca.models.deeplabv2 import count_parameters
from proca.models.legacy import load_release_model
from proca.models.metadata import CHECKPOINT_CLASS_NAMES

__all__ = ["run_convert"]


def run_convert(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, class_set: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Convert a released ProCA/FADA/SDCA ``.pth`` checkpoint into a proca ``.safetensors`` checkpoint.

    The entry point of ``proca convert``; prints one summary line.

    Args:
        src: the release's checkpoint.
        dst: output file (written atomically).
        class_set: ``"cityscapes19"`` or ``"synthia16"``; default: from the class count.
        force: replace an existing ``dst`` (refused otherwise, before ``src`` is read).

    Returns:
        A summary: ``src``, ``dst``, ``arch``, ``num_classes``, ``class_set``, ``norm``, ``iteration``,
        ``ignored_entries``, ``parameters``.

    Raises:
        ConfigError: unknown ``class_set``.
        CheckpointError: unsafe, corrupt or unrecognised ``src`` (or one that already is a proca checkpoint),
            or ``dst`` equal to ``src``.
        OutputError: ``dst`` exists (without ``force``) or cannot be written.
    """
    src, dst = Path(src), Path(dst)
    if class_set is not None and class_set not in CHECKPOINT_CLASS_NAMES:
        raise ConfigError(
            f"unknown class set {class_set!r} for --class-set; valid: {', '.join(CHECKPOINT_CLASS_NAMES)}"
        )
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise CheckpointError(f"output {dst} is the input file; choose another output path (e.g. model.safetensors)")
    if src.is_file() and sniff_format(src) == "safetensors":
        try:
            load_model(src)
        except CheckpointError:
            raise CheckpointError(
                f"{src} is a safetensors file but not a proca model checkpoint; convert reads the released "
                "ProCA/FADA/SDCA .pth checkpoints"
            ) from None
        raise CheckpointError(
            f"{src} is already a proca .safetensors checkpoint; nothing to convert (use it directly with "
            "proca eval, infer or pseudo-label)"
        )
    check_new_file(dst, force=force, option="DST")
    model, meta = load_release_model(src, class_set=class_set)
    save_model(model, dst, metadata=meta)
    summary = {
        "src": str(src),
        "dst": str(dst),
        "arch": meta["arch"],
        "num_classes": meta["num_classes"],
        "class_set": meta["class_set"],
        "norm": meta["norm"],
        "iteration": meta["iteration"],
        "ignored_entries": meta["ignored_entries"],
        "parameters": count_parameters(model),
    }
    from rich.console import Console

    # The iteration count is kept (as metadata), so only the entries really left out are called dropped.
    kept = f"; iteration {summary['iteration']} kept as metadata" if summary["iteration"] is not None else ""
    dropped = ", ".join(e for e in summary["ignored_entries"] if not (e == "iteration" and kept)) or "nothing"
    Console(highlight=False).print(
        f"[green]converted[/] {src} -> {dst}: {summary['arch']}, {summary['num_classes']} classes "
        f"({summary['class_set'] or 'no known class set'}), norm={summary['norm']}, "
        f"{summary['parameters']:,} parameters{kept}; dropped: {dropped}",
        soft_wrap=True,
    )
    return summary
