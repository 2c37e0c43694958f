"""DeepLabV2 networks, their builders, and checkpoint files (ours and the release's).

- :class:`DeepLabV2` (dilated backbone at output stride 8 + ASPP-v2 head) and the builders
  :func:`deeplabv2_resnet101`, :func:`deeplabv2_resnet50`, :func:`deeplabv2_resnet18`,
  :func:`deeplabv2_vgg16`; :func:`build_model` picks one by name from :data:`MODEL_BUILDERS`.
- :func:`save_model` / :func:`load_model`: one ``.safetensors`` file with JSON metadata;
  :func:`load_model` also reads the release's ``.pth`` files (safely, ``weights_only=True``).
- :func:`save_state` / :func:`load_state`: resumable training state, safetensors + JSON.
- :mod:`proca.models.legacy`: the release's key layout (``proca convert`` is :mod:`proca.engine.commands.convert`).
"""

from __future__ import annotations

from proca.models.backbones import IMAGENET_FILES, NORMS, resnet_backbone, vgg16_backbone
from proca.models.builders import (
    MODEL_BUILDERS,
    build_model,
    deeplabv2_resnet18,
    deeplabv2_resnet50,
    deeplabv2_resnet101,
    deeplabv2_vgg16,
)
from proca.models.checkpoint import LoadedCheckpoint, load_model, load_state, save_model, save_state
from proca.models.deeplabv2 import ASPPClassifierV2, DeepLabV2, count_parameters
from proca.models.metadata import FORMAT_VERSION, METADATA_KEYS

__all__ = [
    "FORMAT_VERSION",
    "IMAGENET_FILES",
    "METADATA_KEYS",
    "MODEL_BUILDERS",
    "NORMS",
    "ASPPClassifierV2",
    "DeepLabV2",
    "LoadedCheckpoint",
    "build_model",
    "count_parameters",
    "deeplabv2_resnet18",
    "deeplabv2_resnet50",
    "deeplabv2_resnet101",
    "deeplabv2_vgg16",
    "load_model",
    "load_state",
    "resnet_backbone",
    "save_model",
    "save_state",
    "vgg16_backbone",
]
