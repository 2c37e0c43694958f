"""Datasets, class tables, label info, class-balanced sampling, transforms and synthetic scenes.

Importing ``proca.data`` loads only the class tables; the readers, label info, sampler and
transforms (which import torch and torchvision) load on first access of their names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proca.data.classes import CITYSCAPES_19, CLASS_SETS, IGNORE_INDEX, SYNTHIA_16, ClassSet, get_class_set

if TYPE_CHECKING:
    from proca.data.benchmarks import ACDCDataset, BDD100KDataset, DarkZurichDataset, MapillaryVistasDataset
    from proca.data.datasets import (
        CityscapesDataset,
        GTA5Dataset,
        ImageFolderDataset,
        PseudoLabelDataset,
        SegmentationDataset,
        SynthiaDataset,
        cityscapes_root,
        read_list_file,
    )
    from proca.data.label_info import LabelInfo, build_label_info, read_label_info, run_label_info
    from proca.data.sampler import ClassBalancedSampler
    from proca.data.synthetic import write_synthetic_datasets

__all__ = [
    "CITYSCAPES_19",
    "CLASS_SETS",
    "IGNORE_INDEX",
    "SYNTHIA_16",
    "ACDCDataset",
    "BDD100KDataset",
    "CityscapesDataset",
    "ClassBalancedSampler",
    "ClassSet",
    "DarkZurichDataset",
    "GTA5Dataset",
    "ImageFolderDataset",
    "LabelInfo",
    "MapillaryVistasDataset",
    "PseudoLabelDataset",
    "SegmentationDataset",
    "SynthiaDataset",
    "build_label_info",
    "cityscapes_root",
    "get_class_set",
    "read_label_info",
    "read_list_file",
    "run_label_info",
    "write_synthetic_datasets",
]

_LAZY = {
    "ACDCDataset": "proca.data.benchmarks",
    "BDD100KDataset": "proca.data.benchmarks",
    "DarkZurichDataset": "proca.data.benchmarks",
    "MapillaryVistasDataset": "proca.data.benchmarks",
    "CityscapesDataset": "proca.data.datasets",
    "GTA5Dataset": "proca.data.datasets",
    "ImageFolderDataset": "proca.data.datasets",
    "PseudoLabelDataset": "proca.data.datasets",
    "SegmentationDataset": "proca.data.datasets",
    "SynthiaDataset": "proca.data.datasets",
    "cityscapes_root": "proca.data.datasets",
    "read_list_file": "proca.data.datasets",
    "LabelInfo": "proca.data.label_info",
    "build_label_info": "proca.data.label_info",
    "read_label_info": "proca.data.label_info",
    "run_label_info": "proca.data.label_info",
    "ClassBalancedSampler": "proca.data.sampler",
    "write_synthetic_datasets": "proca.data.synthetic",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'proca.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
