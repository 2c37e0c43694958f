"""Compatibility names: prediction moved to :mod:`proca.engine.predict`, the batching plumbing to
:mod:`proca.engine.loop` and the progress bar to :mod:`proca.engine.progress`.

New code imports from those modules; this one only re-exports them.
"""

from __future__ import annotations

from proca.engine.loop import AsyncWriter, Batch, PreparedDataset, default_num_workers, iterate_batches
from proca.engine.predict import aspect_input_size, load_for_inference, predict_probs, resize_images
from proca.engine.progress import ProgressBar

__all__ = [
    "AsyncWriter",
    "Batch",
    "PreparedDataset",
    "ProgressBar",
    "aspect_input_size",
    "default_num_workers",
    "iterate_batches",
    "load_for_inference",
    "predict_probs",
    "resize_images",
]
