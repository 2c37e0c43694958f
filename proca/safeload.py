"""Reading torch ``.pth`` files without running code.

``torch.load(weights_only=True)`` refuses any pickled object other than tensors and plain
containers; :func:`read_torch_file` turns its many failure modes into one-sentence
:class:`~proca.errors.CheckpointError` messages that tell a corrupt file from a refused one and name
the refused object. Shared by :mod:`proca.models` (released checkpoints, ImageNet weights) and
:mod:`proca.prototypes` (released prototype files).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from proca.errors import CheckpointError

__all__ = ["read_torch_file"]


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    if "weights_only" in line:  # torch's advice to load unsafely is never passed on
        return "refused by the safe loader (weights_only=True)"
    return line if len(line) <= limit else line[:limit] + "..."


def read_torch_file(
    path: str | os.PathLike[str], *, map_location: Any = "cpu", what: str = "checkpoint", expected: str | None = None
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-sentence :class:`CheckpointError` messages.

    Args:
        path: the ``.pth`` file.
        map_location: passed to ``torch.load``.
        what: what the file is, for messages (``"checkpoint"``, ``"prototype file"``).
        expected: what a valid file would be, appended to the corrupt-file message.

    Raises:
        CheckpointError: the file is missing, corrupt or truncated, or holds objects other than tensors and
            plain containers (refused unread: unpickling them could run code).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    hint = f"; give {expected}" if expected else ""
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4 ...": torch's notes about the file, not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False (running the file's code); it is never passed on
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        operand = re.search(r"Unsupported operand (\d+)", str(err))
        if operand is not None:
            raise CheckpointError(
                f"{what} {path} was refused: it is a plain Python pickle (opcode {operand.group(1)}), not torch's "
                f"tensor format, and proca never unpickles arbitrary objects{hint}"
            ) from None
        if refused is None:  # torch reports random bytes as a weights-only failure too
            raise CheckpointError(
                f"{what} {path} is not a readable torch file (corrupt, truncated or not a .pth file){hint}"
            ) from None
        raise CheckpointError(
            f"{what} {path} was refused: it references {refused.group(1)}, a Python object other than tensors and "
            "plain containers that could run code when unpickled, so proca does not load it"
        ) from None
    except Exception as err:  # zip/pickle readers raise many types for truncated or corrupt files
        raise CheckpointError(
            f"{what} {path} is not a readable torch file (corrupt or truncated?): {type(err).__name__}: "
            f"{_first_line(err)}"
        ) from None
