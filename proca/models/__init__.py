"""DeepLabV2 and MiT (DAFormer, SegFormer) networks, their builders, and checkpoint files (ours and the release's).

- :class:`DeepLabV2` (dilated backbone at output stride 8 + ASPP-v2 head) and the builders
  :func:`deeplabv2_resnet101`, :func:`deeplabv2_resnet50`, :func:`deeplabv2_resnet18`,
  :func:`deeplabv2_vgg16`; :func:`build_model` picks one by name from :data:`MODEL_BUILDERS`.
- :class:`MiTSegmenter` (SegFormer's Mix Transformer encoder + a DAFormer or SegFormer head, stride 4) and
  the builders ``daformer_mit_b0`` ... ``daformer_mit_b5``, ``segformer_mit_b0`` ... ``segformer_mit_b5``.
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
from proca.models.mit_builders import (
    daformer_mit_b0,
    daformer_mit_b1,
    daformer_mit_b2,
    daformer_mit_b3,
    daformer_mit_b4,
    daformer_mit_b5,
    segformer_mit_b0,
    segformer_mit_b1,
    segformer_mit_b2,
    segformer_mit_b3,
    segformer_mit_b4,
    segformer_mit_b5,
)
from proca.models.mix_transformer import MIT_VARIANTS, MixTransformer, load_mit_weights, mix_transformer
from proca.models.segformer import MiTSegmenter
from proca.models.segformer_heads import DAFormerHead, SegFormerHead

__all__ = [
    "FORMAT_VERSION",
    "IMAGENET_FILES",
    "METADATA_KEYS",
    "MIT_VARIANTS",
    "MODEL_BUILDERS",
    "NORMS",
    "ASPPClassifierV2",
    "DAFormerHead",
    "DeepLabV2",
    "LoadedCheckpoint",
    "MiTSegmenter",
    "MixTransformer",
    "SegFormerHead",
    "build_model",
    "count_parameters",
    "daformer_mit_b0",
    "daformer_mit_b1",
    "daformer_mit_b2",
    "daformer_mit_b3",
    "daformer_mit_b4",
    "daformer_mit_b5",
    "deeplabv2_resnet18",
    "deeplabv2_resnet50",
    "deeplabv2_resnet101",
    "deeplabv2_vgg16",
    "load_mit_weights",
    "load_model",
    "load_state",
    "mix_transformer",
    "resnet_backbone",
    "save_model",
    "save_state",
    "segformer_mit_b0",
    "segformer_mit_b1",
    "segformer_mit_b2",
    "segformer_mit_b3",
    "segformer_mit_b4",
    "segformer_mit_b5",
    "vgg16_backbone",
]
