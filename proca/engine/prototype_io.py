"""The prototype file of a run (``RUN/prototypes.safetensors``): both prototype sets and their pixel counts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from proca.errors import CheckpointError
from proca.io import atomic_write_bytes

__all__ = ["PROTOTYPE_LEVELS", "load_prototypes", "save_prototypes"]

PROTOTYPE_LEVELS = ("feature", "output")
"""Feature level (A = the backbone's channels) and output level (A = C, the logits)."""

_HEADER = "proca_prototypes"


def save_prototypes(path: str | Path, estimators: Mapping[str, nn.Module], metadata: dict[str, Any]) -> None:
    """Write both prototype sets into one safetensors file (``<level>.prototypes``, ``<level>.counts``)."""
    from safetensors.torch import save

    tensors = {
        f"{level}.{name}": getattr(est, name).detach().cpu().contiguous().clone()
        for level, est in estimators.items()
        for name in ("prototypes", "counts")
    }
    atomic_write_bytes(path, save(tensors, metadata={_HEADER: json.dumps(metadata)}))


def load_prototypes(path: str | Path) -> dict[str, Tensor]:
    """Read a file written by :func:`save_prototypes` (or a checkpoint's ``prototypes.*``) into flat tensors.

    Raises:
        CheckpointError: missing file or missing prototype sets.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prototype file {path} does not exist; run --stage prototypes first.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {k.removeprefix("prototypes."): handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable prototype file ({err}); rerun --stage prototypes.") from None
    missing = [f"{lv}.{n}" for lv in PROTOTYPE_LEVELS for n in ("prototypes", "counts") if f"{lv}.{n}" not in tensors]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; rerun --stage prototypes.")
    return tensors
