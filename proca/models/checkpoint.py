"""proca's checkpoint files: one ``.safetensors`` per model, and resumable training state.

A model checkpoint is a safetensors file holding the model's state dict (keys as in
:class:`~proca.models.DeepLabV2` or :class:`~proca.models.MiTSegmenter`), optional prototype tensors under
``prototypes.<name>``, and in its header one metadata entry ``"proca"`` whose value is a JSON object (see
:data:`proca.models.metadata.METADATA_KEYS`). :func:`load_model` rebuilds the architecture from that
metadata alone; it also reads the release's ``.pth`` files (see :mod:`proca.models.legacy`).

Training state (:func:`save_state` / :func:`load_state`) is a safetensors file of tensors plus a
JSON object under the header entry ``"proca_state"``. No format here is a pickle.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor

from proca.errors import CheckpointError
from proca.io import atomic_write_bytes
from proca.models._state import load_state_dict_into
from proca.models.builders import MODEL_BUILDERS, SegmentationModel, build_model
from proca.models.deeplabv2 import DeepLabV2
from proca.models.metadata import complete_metadata
from proca.models.segformer import MiTSegmenter

__all__ = [
    "PROTOTYPE_PREFIX",
    "LoadedCheckpoint",
    "load_model",
    "load_state",
    "load_state_dict_into",
    "non_finite_keys",
    "save_model",
    "save_state",
    "sniff_format",
]

PROTOTYPE_PREFIX = "prototypes."
_MODEL_KEY = "proca"
_STATE_KEY = "proca_state"


@dataclass
class LoadedCheckpoint:
    """What :func:`load_model` returns.

    Attributes:
        model: the network, in eval mode, on ``map_location``.
        metadata: every key of :data:`proca.models.metadata.METADATA_KEYS` (plus any extra ones saved).
        prototypes: prototype tensors saved with the model (names without the ``prototypes.`` prefix),
            for example ``feature.prototypes`` (C, A), ``feature.counts`` (C,); empty when none were saved.
    """

    model: SegmentationModel
    metadata: dict[str, Any]
    prototypes: dict[str, Tensor] = field(default_factory=dict)


def _plain_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors that share no memory (what safetensors can store)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"cannot save {name!r}: expected a tensor, got {type(value).__name__}")
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        if t.numel() and (storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size()):
            t = t.clone()  # a view into shared or larger storage: store its own copy
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _serialize(tensors: dict[str, Tensor], header_key: str, meta: dict[str, Any]) -> bytes:
    return safetensors_save(_plain_tensors(tensors), metadata={header_key: json.dumps(meta, allow_nan=True)})


def _unwrap(model: torch.nn.Module, source: str) -> SegmentationModel:
    """The proca model inside DistributedDataParallel (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    seen = 0
    while not isinstance(model, (DeepLabV2, MiTSegmenter)):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module) or seen > 4:
            raise CheckpointError(
                f"cannot save {type(model).__name__} to {source}: save_model takes a DeepLabV2 or "
                "MiTSegmenter from proca.models"
            )
        model, seen = inner, seen + 1
    return model


def save_model(
    model: SegmentationModel,
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, Any] | None = None,
    prototypes: dict[str, Tensor] | None = None,
) -> None:
    """Write ``model`` (and optional prototypes) as one ``.safetensors`` file, atomically.

    Args:
        model: a :class:`DeepLabV2` or :class:`~proca.models.MiTSegmenter` from a builder (its ``arch`` must be
            a key of ``MODEL_BUILDERS``), or one
            wrapped by DistributedDataParallel or ``torch.compile`` (the wrapper is removed).
        path: output file.
        metadata: stage, iteration, class set, config, metrics, ...; missing keys get defaults and
            ``arch``/``num_classes``/``norm`` come from the model. ``format_version`` and
            ``proca_version`` are always the current ones.
        prototypes: flat dict of tensors, for example ``{"feature.prototypes": (C, A), "feature.counts": (C,),
            "output.prototypes": (C, C), "output.counts": (C,)}``.

    Raises:
        CheckpointError: metadata that contradicts the model or is not JSON-serialisable, non-tensor prototypes.
    """
    model = _unwrap(model, str(path))
    if model.arch not in MODEL_BUILDERS:
        raise CheckpointError(
            f"cannot save a model with arch {model.arch!r}: load_model could not rebuild it; "
            f"valid: {', '.join(MODEL_BUILDERS)}"
        )
    given = dict(metadata or {})
    given.pop("format_version", None)
    given.pop("proca_version", None)
    meta = complete_metadata(given, arch=model.arch, num_classes=model.num_classes, norm=model.norm, source=str(path))
    tensors: dict[str, Tensor] = dict(model.state_dict())
    for name, value in (prototypes or {}).items():
        tensors[PROTOTYPE_PREFIX + name] = value
    bad = non_finite_keys(tensors)
    if bad:
        raise CheckpointError(
            f"{path}: not written, the model holds non-finite values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); the training diverged: resume from the last state with a lower "
            "learning rate."
        )
    atomic_write_bytes(path, _serialize(tensors, _MODEL_KEY, meta))


def non_finite_keys(tensors: dict[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def sniff_format(path: str | os.PathLike[str]) -> str:
    """``"safetensors"``, ``"torch"`` (zip or legacy pickle written by ``torch.save``) or ``"unknown"``.

    Decided from the first bytes, not the suffix.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= os.path.getsize(path) - 8:
            return "safetensors"
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): torch's legacy format
        return "torch"
    return "unknown"


def _read_safetensors(path: Path, header_key: str, device: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from None
    if header_key not in header:
        what = "proca model checkpoint" if header_key == _MODEL_KEY else "proca training-state file"
        hint = " (a training-state file? load it with load_state)" if _STATE_KEY in header else ""
        hint = hint or (" (a model checkpoint? load it with load_model)" if _MODEL_KEY in header else "")
        raise CheckpointError(f"{path} is a safetensors file but not a {what}: no {header_key!r} metadata{hint}")
    try:
        meta = json.loads(header[header_key])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the {header_key!r} metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the {header_key!r} metadata is not a JSON object")
    return tensors, meta


#: The largest class count a checkpoint's metadata may state (the head is built before the weights are read).
MAX_CLASSES = 1000


def _build_on_meta(arch: Any, num_classes: Any, norm: Any, source: str) -> SegmentationModel:
    if arch not in MODEL_BUILDERS:
        raise CheckpointError(f"{source}: unknown arch {arch!r} in the metadata; valid: {', '.join(MODEL_BUILDERS)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= MAX_CLASSES:
        raise CheckpointError(
            f"{source}: num_classes {num_classes!r} in the metadata is not an integer in 1..{MAX_CLASSES} "
            "(proca models predict 19 or 16 classes); the file is damaged or not a proca checkpoint"
        )
    if norm not in ("batch", "frozen"):
        raise CheckpointError(f"{source}: norm {norm!r} in the metadata is not one of batch, frozen")
    if norm != "batch" and not str(arch).startswith("deeplabv2_"):
        raise CheckpointError(f"{source}: norm {norm!r} in the metadata is not valid for {arch} (only batch)")
    with torch.device("meta"):
        return build_model(arch, num_classes=num_classes, norm=norm)


def load_model(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a proca ``.safetensors`` checkpoint or a released ProCA/FADA/SDCA ``.pth`` file.

    The architecture is rebuilt from the file alone (metadata for ours, tensor shapes for the release's).
    ``.pth`` files are read with ``torch.load(weights_only=True)``: a file holding anything but tensors
    and plain containers is refused, never executed.

    Args:
        path: the checkpoint.
        map_location: device for the weights.

    Returns:
        The model in eval mode, the completed metadata and any saved prototypes.

    Raises:
        CheckpointError: missing, corrupt, unsafe or unrecognised file, or weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (give a proca .safetensors or a released .pth file)")
    kind = sniff_format(path)
    device = torch.device(map_location)
    if kind == "torch":
        from proca.models.legacy import load_release_model

        release_model, meta = load_release_model(path, map_location=device)
        return LoadedCheckpoint(model=release_model.eval(), metadata=meta, prototypes={})
    if kind != "safetensors":
        raise CheckpointError(
            f"{path} is neither a safetensors file nor a torch checkpoint (garbage, truncated or another format)"
        )
    tensors, meta = _read_safetensors(path, _MODEL_KEY, str(device))
    version = meta.get("format_version")
    if not isinstance(version, int) or version > 1:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is not supported by this proca (reads version 1); "
            "upgrade proca"
        )
    model = _build_on_meta(meta.get("arch"), meta.get("num_classes"), meta.get("norm", "batch"), str(path))
    prototypes = {k.removeprefix(PROTOTYPE_PREFIX): v for k, v in tensors.items() if k.startswith(PROTOTYPE_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(PROTOTYPE_PREFIX)}
    load_state_dict_into(model, weights, str(path), assign=True)
    meta = complete_metadata(meta, arch=model.arch, num_classes=model.num_classes, norm=model.norm, source=str(path))
    return LoadedCheckpoint(model=model.eval(), metadata=meta, prototypes=prototypes)


def save_state(path: str | os.PathLike[str], tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write resumable training state (tensors + a JSON-serialisable dict) as one safetensors file, atomically.

    Tensors are stored on the CPU (contiguous; shared storage is copied). Use flat names such as
    ``optimizer.state.0.momentum_buffer``, ``rng.torch``; put numbers, strings and lists in ``meta``.

    Raises:
        CheckpointError: a value in ``tensors`` is not a tensor, or ``meta`` is not JSON-serialisable.
    """
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot save training state {path}: meta is not JSON-serialisable ({err})") from None
    atomic_write_bytes(path, _serialize(tensors, _STATE_KEY, meta))


def load_state(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_state`: ``(tensors, meta)``.

    Raises:
        CheckpointError: missing, corrupt or truncated file, or not a proca training-state file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training state {path} does not exist")
    if sniff_format(path) != "safetensors":
        raise CheckpointError(f"{path} is not a proca training-state file (not safetensors: corrupt or truncated?)")
    return _read_safetensors(path, _STATE_KEY, str(torch.device(map_location)))
