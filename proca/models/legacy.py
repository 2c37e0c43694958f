"""The release's checkpoints (ProCA, FADA, SDCA): read them safely and map their keys.

``proca convert`` (:func:`proca.engine.commands.convert.run_convert`) writes them as proca checkpoints.

Their ``.pth`` files are ``torch.save`` pickles of a dict::

    {"feature_extractor": {"backbone.conv1.weight": ..., ...},   # optionally "module."-prefixed (DDP)
     "classifier": {"conv2d_list.0.weight": ..., ...},
     "iteration": int, "optimizer_fea": ..., "optimizer_cls": ...,  # optional, ignored
     "model_D": ..., "optimizer_D": ...}                            # FADA's discriminator, ignored

Our :class:`~proca.models.DeepLabV2` uses the same names, so the mapping is: ``feature_extractor``
keys as they are, ``classifier`` keys under ``classifier.``. Files are read with
``torch.load(weights_only=True)`` only, so a poisoned pickle is refused before it can run anything.
The architecture (ResNet-101/50/18, VGG-16), the normalisation (BatchNorm, or FrozenBatchNorm for files
without ``num_batches_tracked``) and the class count are inferred from the tensors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from proca.errors import CheckpointError
from proca.models._keys import few as _few
from proca.models._keys import mismatch_summary
from proca.models._state import load_state_dict_into
from proca.models.backbones import BACKBONE_FEATURE_DIMS
from proca.models.builders import build_model
from proca.models.deeplabv2 import DeepLabV2
from proca.models.metadata import complete_metadata
from proca.safeload import read_torch_file as _read_torch_file

__all__ = [
    "ReleaseCheckpoint",
    "infer_release_arch",
    "load_release_model",
    "parse_release_checkpoint",
    "proca_to_release_state_dict",
    "read_torch_file",
    "release_to_proca_state_dict",
]

REQUIRED_ENTRIES = ("feature_extractor", "classifier")
_IGNORED_EXACT = frozenset({"iteration", "epoch", "best_miou", "best_mIoU"})
_IGNORED_PREFIXES = ("optimizer", "model_D", "discriminator", "scheduler", "lr_scheduler")
_HEAD_KEYS = tuple(f"conv2d_list.{i}.{p}" for i in range(4) for p in ("weight", "bias"))
_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 4, 6, 3)): "resnet50",
    (False, (2, 2, 2, 2)): "resnet18",
}
_LAYER_BLOCK = re.compile(r"^backbone\.layer([1-4])\.(\d+)\.")


@dataclass
class ReleaseCheckpoint:
    """A release checkpoint mapped to our keys.

    Attributes:
        arch: our builder name, e.g. ``"deeplabv2_resnet101"``.
        num_classes: C, from the classifier's weights.
        norm: ``"batch"`` or ``"frozen"`` (no ``num_batches_tracked`` in the file).
        state_dict: the weights under :class:`DeepLabV2` keys.
        iteration: the file's ``iteration`` entry when it has an integer one.
        ignored: top-level entries that were skipped (optimisers, discriminator, iteration).
    """

    arch: str
    num_classes: int
    norm: str
    state_dict: dict[str, Tensor]
    iteration: int | None = None
    ignored: list[str] = field(default_factory=list)


def read_torch_file(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> Any:
    """Read a released ``.pth`` file safely (``weights_only=True``); see :func:`proca.safeload.read_torch_file`."""
    return _read_torch_file(
        path, map_location=map_location, expected="a released ProCA/FADA/SDCA .pth or a proca .safetensors file"
    )


def _strip_module(state: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def release_to_proca_state_dict(
    feature_extractor: dict[str, Tensor], classifier: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Map the release's two state dicts to :class:`DeepLabV2` keys (``module.`` prefixes removed).

    ``backbone.conv1.weight`` stays ``backbone.conv1.weight``; ``conv2d_list.0.weight`` becomes
    ``classifier.conv2d_list.0.weight``.
    """
    out = dict(_strip_module(feature_extractor))
    out.update({f"classifier.{k}": v for k, v in _strip_module(classifier).items()})
    return out


def proca_to_release_state_dict(state_dict: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """The inverse of :func:`release_to_proca_state_dict`: ``{"feature_extractor": ..., "classifier": ...}``.

    Raises:
        CheckpointError: a key that is neither ``backbone.*`` nor ``classifier.*``.
    """
    fe: dict[str, Tensor] = {}
    cls: dict[str, Tensor] = {}
    other = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            fe[key] = value
        elif key.startswith("classifier."):
            cls[key.removeprefix("classifier.")] = value
        else:
            other.append(key)
    if other:
        raise CheckpointError(
            f"cannot map {_few(sorted(other))} to the release layout (backbone.* / classifier.* only)"
        )
    return {"feature_extractor": fe, "classifier": cls}


def infer_release_arch(feature_extractor: dict[str, Tensor], source: str = "checkpoint") -> tuple[str, str]:
    """Infer ``(arch, norm)`` from a release ``feature_extractor`` state dict (``module.`` already removed).

    Raises:
        CheckpointError: a backbone that is not ResNet-18/50/101 or VGG-16 (the message says what was found).
    """
    keys = list(feature_extractor)
    stray = sorted(k for k in keys if not k.startswith("backbone."))
    if stray:
        raise CheckpointError(
            f"{source}: feature_extractor has keys outside 'backbone.': {_few(stray)}; expected the "
            "ProCA/FADA/SDCA feature extractor (backbone.conv1.weight, backbone.layer1.0...)"
        )
    if "backbone.conv1.weight" in feature_extractor:
        blocks = [0, 0, 0, 0]
        for key in keys:
            m = _LAYER_BLOCK.match(key)
            if m:
                stage, index = int(m.group(1)) - 1, int(m.group(2))
                blocks[stage] = max(blocks[stage], index + 1)
        bottleneck = "backbone.layer1.0.conv3.weight" in feature_extractor
        name = _RESNETS.get((bottleneck, tuple(blocks)))
        if name is None:
            kind = "bottleneck" if bottleneck else "basic"
            raise CheckpointError(
                f"{source}: the backbone is a ResNet with {blocks} {kind} blocks per stage, which is not one of "
                "ResNet-18 [2, 2, 2, 2] basic, ResNet-50 [3, 4, 6, 3] or ResNet-101 [3, 4, 23, 3] bottleneck"
            )
        has_bn = any(k.endswith(".running_mean") for k in keys)
        frozen = has_bn and not any(k.endswith(".num_batches_tracked") for k in keys)
        return f"deeplabv2_{name}", "frozen" if frozen else "batch"
    if "backbone.0.weight" in feature_extractor and "backbone.31.weight" in feature_extractor:
        return "deeplabv2_vgg16", "batch"
    raise CheckpointError(
        f"{source}: cannot recognise the backbone (keys start {_few(sorted(keys), 3)}); expected a ResNet "
        "(backbone.conv1.weight ...) or the VGG-16 of FADA/SDCA (backbone.0.weight ... backbone.31.weight)"
    )


def _check_classifier(classifier: dict[str, Tensor], feature_dim: int, source: str) -> int:
    missing = [k for k in _HEAD_KEYS if k not in classifier]
    unexpected = sorted(k for k in classifier if k not in _HEAD_KEYS)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: classifier is not the ASPP-v2 head ({mismatch_summary(missing, unexpected, [])}); "
            "expected conv2d_list.{0..3}."
            "{weight,bias}"
        )
    weight = classifier["conv2d_list.0.weight"]
    if not isinstance(weight, Tensor) or weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise CheckpointError(f"{source}: classifier conv2d_list.0.weight has shape {shape}, expected (C, A, 3, 3)")
    if weight.shape[1] != feature_dim:
        raise CheckpointError(
            f"{source}: classifier takes {weight.shape[1]} input channels but the backbone gives {feature_dim}"
        )
    return int(weight.shape[0])


def parse_release_checkpoint(obj: Any, source: str = "checkpoint") -> ReleaseCheckpoint:
    """Check a loaded release checkpoint dict and map it to our keys.

    Args:
        obj: what ``torch.load(weights_only=True)`` returned.
        source: the file name, used in errors.

    Raises:
        CheckpointError: anything but the ProCA/FADA/SDCA layout; the message lists what was unexpected.
    """
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not the ProCA/FADA/SDCA checkpoint dict "
            "with 'feature_extractor' and 'classifier'"
        )
    keys = [str(k) for k in obj]
    missing = [k for k in REQUIRED_ENTRIES if k not in obj]
    if missing:
        if obj and all(isinstance(v, Tensor) for v in obj.values()) and any(k.startswith("backbone.") for k in keys):
            raise CheckpointError(
                f"{source} is the state dict of a proca network (keys like {_few(sorted(keys), 2)}) saved with "
                "torch.save, not a released checkpoint; load it into proca.models.build_model(...) and write it "
                "with proca.models.save_model to get a .safetensors checkpoint"
            )
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            raise CheckpointError(
                f"{source} is a bare state dict (keys like {_few(sorted(keys), 3)}), not the ProCA/FADA/SDCA layout: "
                "a dict with 'feature_extractor' and 'classifier' state dicts"
            )
        raise CheckpointError(
            f"{source} lacks {', '.join(repr(k) for k in missing)} (it has {_few(sorted(keys))}); expected the "
            "ProCA/FADA/SDCA layout with 'feature_extractor' and 'classifier' state dicts"
        )
    ignored = sorted(k for k in keys if k in _IGNORED_EXACT or k.startswith(_IGNORED_PREFIXES))
    unexpected = sorted(k for k in keys if k not in REQUIRED_ENTRIES and k not in ignored)
    if unexpected:
        raise CheckpointError(
            f"{source} has unexpected entries {_few(unexpected)}; a ProCA/FADA/SDCA checkpoint holds "
            "'feature_extractor', 'classifier' and optionally iteration, optimizer_*, model_D"
        )
    parts: dict[str, dict[str, Tensor]] = {}
    for name in REQUIRED_ENTRIES:
        part = obj[name]
        if not isinstance(part, dict):
            raise CheckpointError(f"{source}: {name!r} is a {type(part).__name__}, expected a state dict")
        bad = sorted(str(k) for k, v in part.items() if not isinstance(v, Tensor))
        if bad:
            raise CheckpointError(f"{source}: {name!r} has non-tensor entries {_few(bad)}")
        parts[name] = {str(k): (v.float() if v.is_floating_point() else v) for k, v in _strip_module(part).items()}
    arch, norm = infer_release_arch(parts["feature_extractor"], source)
    num_classes = _check_classifier(parts["classifier"], BACKBONE_FEATURE_DIMS[arch.removeprefix("deeplabv2_")], source)
    iteration = obj.get("iteration")
    return ReleaseCheckpoint(
        arch=arch,
        num_classes=num_classes,
        norm=norm,
        state_dict=release_to_proca_state_dict(parts["feature_extractor"], parts["classifier"]),
        iteration=int(iteration) if isinstance(iteration, int) and not isinstance(iteration, bool) else None,
        ignored=ignored,
    )


def load_release_model(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu", class_set: str | None = None
) -> tuple[DeepLabV2, dict[str, Any]]:
    """Read a ProCA/FADA/SDCA ``.pth`` file into a :class:`DeepLabV2` and complete metadata.

    Args:
        path: the release checkpoint.
        map_location: device for the weights.
        class_set: ``"cityscapes19"`` or ``"synthia16"``; default: from the class count (None if neither fits).

    Returns:
        The model (train mode, as built) and metadata with every key of ``METADATA_KEYS`` plus
        ``converted_from`` (file name) and ``ignored_entries``.

    Raises:
        CheckpointError: unsafe, corrupt or unrecognised file, or weights that do not fit.
    """
    path = Path(path)
    release = parse_release_checkpoint(read_torch_file(path, map_location=map_location), str(path))
    with torch.device("meta"):
        model = build_model(release.arch, num_classes=release.num_classes, norm=release.norm)
    assert isinstance(model, DeepLabV2)  # release archs are all deeplabv2_*
    load_state_dict_into(model, release.state_dict, str(path), assign=True)
    meta = complete_metadata(
        {
            "class_set": class_set,
            "stage": None,
            "iteration": release.iteration,
            "converted_from": path.name,
            "ignored_entries": release.ignored,
        },
        arch=release.arch,
        num_classes=release.num_classes,
        norm=release.norm,
        source=str(path),
    )
    return model, meta
