"""Checkpoint metadata: the keys every loaded checkpoint has, and their defaults.

``proca.models`` may not import ``proca.data`` (the library floor), so the two class sets a
checkpoint can name are listed here by name only; ``tests/models`` checks that they equal the
tables of :mod:`proca.data.classes`, the one source of truth.
"""

from __future__ import annotations

import json
from typing import Any

import proca
from proca.errors import CheckpointError

__all__ = [
    "CHECKPOINT_CLASS_NAMES",
    "DEFAULT_EVAL_INPUT_SIZE",
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "class_set_for",
    "complete_metadata",
]

FORMAT_VERSION = 1
DEFAULT_EVAL_INPUT_SIZE = [512, 1024]

# Class names (train-id order) of the class sets a checkpoint may name; equal to proca.data.classes.
CHECKPOINT_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cityscapes19": (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ),
    "synthia16": (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle",
    ),
}  # fmt: skip

METADATA_KEYS: tuple[str, ...] = (
    "format_version",
    "proca_version",
    "arch",
    "num_classes",
    "class_set",
    "class_names",
    "stage",
    "iteration",
    "eval_input_size",
    "norm",
    "config",
    "metrics",
)


def class_set_for(num_classes: int) -> str | None:
    """The class set with ``num_classes`` classes (19 -> cityscapes19, 16 -> synthia16), else None."""
    for name, classes in CHECKPOINT_CLASS_NAMES.items():
        if len(classes) == num_classes:
            return name
    return None


def complete_metadata(
    given: dict[str, Any] | None, *, arch: str, num_classes: int, norm: str, source: str
) -> dict[str, Any]:
    """Fill in every key of :data:`METADATA_KEYS`; ``arch``, ``num_classes`` and ``norm`` come from the model.

    ``class_set`` defaults to the set with ``num_classes`` classes (None when there is none) and
    ``class_names`` to that set's names (``class_0``, ``class_1``, ... without one). Extra keys are kept.

    Args:
        given: caller's metadata (may be None).
        arch, num_classes, norm: the model's.
        source: the file or argument the metadata belongs to, named in errors.

    Raises:
        CheckpointError: the metadata contradicts the model or a class set, or is not JSON-serialisable.
    """
    meta: dict[str, Any] = dict(given or {})
    for key, value in (("arch", arch), ("num_classes", num_classes), ("norm", norm)):
        if key in meta and meta[key] != value:
            raise CheckpointError(f"{source}: metadata {key}={meta[key]!r} contradicts the model's {key}={value!r}")
        meta[key] = value
    class_set = meta.get("class_set") or class_set_for(num_classes)
    if class_set is not None:
        names = CHECKPOINT_CLASS_NAMES.get(class_set)
        if names is None:
            raise CheckpointError(
                f"{source}: unknown class_set {class_set!r}; valid: {', '.join(CHECKPOINT_CLASS_NAMES)}"
            )
        if len(names) != num_classes:
            raise CheckpointError(
                f"{source}: class_set {class_set!r} has {len(names)} classes but the model predicts {num_classes}"
            )
        given_names = meta.get("class_names")
        if given_names is not None and list(given_names) != list(names):
            raise CheckpointError(
                f"{source}: metadata class_names do not match the {class_set} class table (first difference: "
                f"{_first_difference(list(given_names), list(names))}); fix or remove class_names in the metadata"
            )
        meta.setdefault("class_names", list(names))
    meta["class_set"] = class_set
    meta.setdefault("class_names", [f"class_{i}" for i in range(num_classes)])
    if len(meta["class_names"]) != num_classes:
        raise CheckpointError(
            f"{source}: {len(meta['class_names'])} class_names given for a model with {num_classes} classes"
        )
    meta["class_names"] = list(meta["class_names"])
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("proca_version", proca.__version__)
    meta.setdefault("stage", None)
    meta.setdefault("iteration", None)
    meta.setdefault("eval_input_size", list(DEFAULT_EVAL_INPUT_SIZE))
    size = meta["eval_input_size"]
    if size is not None and not (
        isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, (int, float)) for v in size)
    ):
        raise CheckpointError(
            f"{source}: metadata eval_input_size {size!r} is not [H, W]; pass --input-size HxW when using it, "
            "or re-save the checkpoint with a valid eval_input_size"
        )
    meta["eval_input_size"] = list(size) if size is not None else None
    meta.setdefault("config", {})
    meta.setdefault("metrics", {})
    try:
        json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: metadata is not JSON-serialisable ({err})") from None
    return meta


def _first_difference(given: list[Any], table: list[str]) -> str:
    for i, (a, b) in enumerate(zip(given, table, strict=False)):
        if a != b:
            return f"class {i} is {a!r}, the table says {b!r}"
    return f"{len(given)} names for {len(table)} classes"
