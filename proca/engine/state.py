"""Resumable training state: model, optimiser, RNG states and loop counters in one safetensors file.

Everything is tensors plus a JSON header, written with :func:`proca.models.checkpoint.save_state`
(safetensors; no pickle, so a state file from anywhere is safe to open). The file is written
atomically (temp file + rename), so a process killed while saving leaves the previous state intact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from proca.errors import CheckpointError
from proca.models.checkpoint import load_state, save_state

__all__ = ["STATE_FORMAT", "TrainingState", "capture_rng", "load_training_state", "restore_rng", "save_training_state"]

STATE_FORMAT = "proca-train-state/1"


@dataclass
class TrainingState:
    """What :func:`load_training_state` returns.

    Attributes:
        model: model state dict (CPU tensors).
        optimizer: optimiser state dict in ``torch.optim`` form (load with ``optimizer.load_state_dict``).
        extra: further named tensors (e.g. prototype buffers ``"feature.prototypes"``).
        rng: RNG states for :func:`restore_rng`.
        info: the JSON counters saved with the state (``iteration``, best score, ...).
    """

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    extra: dict[str, Tensor] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The current Python, NumPy, torch CPU and CUDA RNG states (tensors and JSON-able values)."""
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng` (missing entries are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        for index, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.to(torch.uint8), index)


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous().clone()


def save_training_state(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    extra: dict[str, Tensor] | None = None,
    rng: dict[str, Any] | None = None,
) -> None:
    """Write the training state to ``path`` atomically.

    Args:
        path: output ``.safetensors`` file.
        model: the (unwrapped) model; its full state dict is saved.
        optimizer: its per-parameter state tensors are flattened to ``optim.<param>.<name>``;
            hyper-parameters and non-tensor state go to the JSON header.
        info: JSON-able counters (iteration, best score, sampler position, ...).
        extra: more named tensors to keep (prototype buffers).
        rng: RNG states from :func:`capture_rng` (default: captured now).
    """
    tensors: dict[str, Tensor] = {f"model.{k}": _cpu(v) for k, v in model.state_dict().items()}
    from proca.models.checkpoint import non_finite_keys

    bad = non_finite_keys({**tensors, **{f"extra.{k}": v for k, v in (extra or {}).items()}})
    if bad:
        raise CheckpointError(
            f"{path}: training state not written, it holds non-finite values ({', '.join(bad[:3])}); the last "
            "state on disk is kept: resume from it with a lower learning rate."
        )
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{name}"] = _cpu(value)
            else:
                scalars.setdefault(str(pid), {})[name] = value
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = _cpu(v)
    rng = capture_rng() if rng is None else rng
    tensors["rng.torch"] = _cpu(rng["torch"])
    tensors["rng.numpy_keys"] = _cpu(rng["numpy"]["keys"])
    for index, s in enumerate(rng.get("cuda", [])):
        tensors[f"rng.cuda.{index}"] = _cpu(s)
    version, internal, gauss = rng["python"]
    header = {
        "format": STATE_FORMAT,
        "info": info,
        "optimizer_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "rng_python": [version, list(internal), gauss],
        "rng_numpy": {k: v for k, v in rng["numpy"].items() if k != "keys"},
    }
    save_state(path, tensors, header)


def load_training_state(path: str | Path) -> TrainingState:
    """Read a file written by :func:`save_training_state`.

    Raises:
        CheckpointError: missing, unreadable or not a proca training-state file.
    """
    path = Path(path)
    tensors, header = load_state(path)
    if header.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a proca training-state file ({STATE_FORMAT}); use --force.")
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for pid, values in header["optimizer_scalars"].items():
        opt_state.setdefault(int(pid), {}).update(values)
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda s: int(s[9:]))]
    version, internal, gauss = header["rng_python"]
    rng: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": {**header["rng_numpy"], "keys": tensors["rng.numpy_keys"]},
        "torch": tensors["rng.torch"],
    }
    if cuda:
        rng["cuda"] = cuda
    optimizer = {"state": opt_state, "param_groups": header["optimizer_groups"]}
    return TrainingState(model=model, optimizer=optimizer, extra=extra, rng=rng, info=header["info"])
