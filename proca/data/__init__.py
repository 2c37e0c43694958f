"""Datasets, class tables, label info, class-balanced sampling, transforms and synthetic scenes."""

from proca.data.classes import CITYSCAPES_19, CLASS_SETS, IGNORE_INDEX, SYNTHIA_16, ClassSet, get_class_set

__all__ = ["CITYSCAPES_19", "CLASS_SETS", "IGNORE_INDEX", "SYNTHIA_16", "ClassSet", "get_class_set"]
