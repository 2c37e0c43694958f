"""Class prototypes as state: a running (count-weighted) mean or an EMA of per-class feature means."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from proca.errors import CheckpointError, ConfigError, DataError
from proca.io import atomic_write_bytes
from proca.prototypes.functional import class_sums
from proca.safeload import read_torch_file

__all__ = ["PrototypeEstimator"]

_FORMAT = "proca.prototypes"
_FORMAT_VERSION = "1"


class PrototypeEstimator(nn.Module):
    """Per-class prototypes (mean feature vectors), updated batch by batch.

    With ``momentum=None`` (the release's default) the prototypes are the exact mean of every labelled
    pixel seen so far: for each class c with n_c > 0 pixels in a batch,
    ``proto_c <- (1 - w) proto_c + w * batch_mean_c`` with ``w = n_c / (n_c + N_c)``, then
    ``N_c += n_c``. With a float ``momentum`` m the batch mean replaces a fraction m of the prototype,
    ``proto_c <- (1 - m) proto_c + m * batch_mean_c`` (the release's EMA, where m = 0.9 weighs the new
    batch, as in BatchNorm's ``momentum``); ``N_c`` counts the class's pixels (the release added the
    batch's pixel total), and a class seen for the first time takes its batch mean (the release blended it
    with the zero initialisation). Classes absent from a batch are left untouched.

    When ``torch.distributed`` is initialised (and ``sync=True``), each update all-reduces the per-class
    sums and counts first, so every rank applies the same update and holds the prototypes of the union
    of all ranks' pixels (the release let each GPU drift apart).

    Prototype math runs in float64; ``prototypes`` is stored in float32 and ``counts`` in int64 (exact
    far beyond the ~1e8 pixels of a source pass). Both are buffers, so ``.to()``, ``state_dict()`` and
    ``load_state_dict()`` work as for any module.

    Args:
        num_classes: C.
        feature_dim: A, the feature channels (2048 for a ResNet-101 backbone; C for output-level prototypes).
        ignore_index: label of pixels to skip.
        momentum: None for the running mean, or the EMA weight of the batch mean in (0, 1].
        sync: all-reduce sums and counts across ranks when torch.distributed is initialised.

    Shape:
        prototypes (C, A) float32; counts (C,) int64.
    """

    prototypes: Tensor
    counts: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        *,
        ignore_index: int = 255,
        momentum: float | None = None,
        sync: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1 or feature_dim < 1:
            raise ConfigError(
                f"PrototypeEstimator needs num_classes >= 1 and feature_dim >= 1, got {num_classes} and {feature_dim}."
            )
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ConfigError(f"PrototypeEstimator momentum must be None or in (0, 1], got {momentum}.")
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.ignore_index = ignore_index
        self.momentum = momentum
        self.sync = sync
        self.register_buffer("prototypes", torch.zeros(num_classes, feature_dim, dtype=torch.float32))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, "
            f"ignore_index={self.ignore_index}, momentum={self.momentum}"
        )

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Fold a batch of labelled pixels into the prototypes (features are treated as detached).

        Args:
            features: (N, A) or (B, A, H, W), any floating dtype and device.
            labels: (N,) or (B, H, W) class indices, ``ignore_index`` for pixels to skip.

        Shape:
            features (N, A) or (B, A, H, W); labels (N,) or (B, H, W).
        """
        channels = features.shape[1] if features.dim() in (2, 4) else -1
        if channels != self.feature_dim:
            raise ConfigError(
                f"features of shape {tuple(features.shape)} do not fit this estimator's feature_dim "
                f"{self.feature_dim}; pass (N, {self.feature_dim}) or (B, {self.feature_dim}, H, W)."
            )
        synced = self.sync and dist.is_available() and dist.is_initialized()
        if not synced:
            sums, counts = class_sums(features.detach(), labels, self.num_classes, ignore_index=self.ignore_index)
        else:
            try:
                sums, counts = class_sums(features.detach(), labels, self.num_classes, ignore_index=self.ignore_index)
                error: DataError | None = None
            except DataError as err:  # agreed on below, so the other processes do not wait in the all-reduce
                error = err
            _raise_on_any_rank(error, features.device)
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self._apply_sums(sums.to(self.prototypes.device), counts.to(self.counts.device))

    def _apply_sums(self, sums: Tensor, counts: Tensor) -> None:
        """Update from per-class sums (C, A) and counts (C,) that already cover every rank."""
        present = (counts > 0).unsqueeze(1)
        old = self.prototypes.to(sums.dtype)
        n = counts.to(sums.dtype)
        if self.momentum is None:
            weight = n / (n + self.counts.to(sums.dtype))
        else:
            # first sighting of a class: take its batch mean instead of blending with the zero init
            weight = torch.where(self.counts == 0, 1.0, self.momentum).to(sums.dtype)
        # rows of absent classes hold 0/0 here and are discarded by the where
        new = torch.lerp(old, sums / n.unsqueeze(1), weight.unsqueeze(1))
        self.prototypes.copy_(torch.where(present, new, old))
        self.counts.add_(counts)

    def reset(self) -> None:
        """Forget every pixel seen: zero prototypes and counts."""
        self.prototypes.zero_()
        self.counts.zero_()

    def save(self, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> None:
        """Write prototypes and counts to a ``.safetensors`` file (atomically).

        Args:
            path: destination file.
            metadata: extra JSON-serialisable information stored in the header (e.g. the class set).
        """
        from safetensors.torch import save

        header = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "ignore_index": str(self.ignore_index),
            "momentum": json.dumps(self.momentum),
            "metadata": json.dumps(metadata or {}),
        }
        tensors = {"prototypes": self.prototypes.detach().cpu().contiguous(), "counts": self.counts.detach().cpu()}
        atomic_write_bytes(path, save(tensors, metadata=header))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        map_location: str | torch.device = "cpu",
        momentum: float | None = None,
        ignore_index: int | None = None,
    ) -> PrototypeEstimator:
        """Read an estimator written by :meth:`save`, or the release's ``prototype_*_dist.pth`` file.

        Args:
            path: a ``.safetensors`` file from :meth:`save`, or a release ``.pth`` holding ``Proto`` and ``Amount``.
            map_location: device for the buffers.
            momentum: override the stored momentum (a release file stores none: it gets the running mean).
            ignore_index: override the stored ignore index.

        Raises:
            CheckpointError: the file is missing, unreadable or does not hold prototypes.
        """
        file = Path(path)
        if not file.is_file():
            raise CheckpointError(
                f"prototype file {file} does not exist; pass a file written by PrototypeEstimator.save."
            )
        header: dict[str, str] = {}
        if file.suffix in (".pth", ".pt"):
            protos, counts = _read_release(file)
        else:
            protos, counts, header = _read_safetensors(file)
        if protos.dim() != 2 or counts.shape != protos.shape[:1]:
            raise CheckpointError(
                f"prototype file {file} holds prototypes of shape {tuple(protos.shape)} and counts of shape "
                f"{tuple(counts.shape)}; expected (C, A) and (C,)."
            )
        stored_momentum = json.loads(header.get("momentum", "null"))
        estimator = cls(
            protos.shape[0],
            protos.shape[1],
            ignore_index=int(header.get("ignore_index", 255)) if ignore_index is None else ignore_index,
            momentum=stored_momentum if momentum is None else momentum,
        )
        estimator.prototypes.copy_(protos.float())
        estimator.counts.copy_(counts)
        return estimator.to(map_location)


def _read_safetensors(file: Path) -> tuple[Tensor, Tensor, dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            header = handle.metadata() or {}
            keys = set(handle.keys())
            if not {"prototypes", "counts"} <= keys:
                raise CheckpointError(
                    f"prototype file {file} lacks the tensors 'prototypes' and 'counts' (it has {sorted(keys)}); "
                    "pass a file written by PrototypeEstimator.save."
                )
            return handle.get_tensor("prototypes"), handle.get_tensor("counts").long(), header
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"prototype file {file} is not a readable safetensors file ({err}).") from err


def _read_release(file: Path) -> tuple[Tensor, Tensor]:
    state = read_torch_file(file, what="prototype file", expected="a proca .safetensors or a released prototype .pth")
    if not isinstance(state, dict) or not {"Proto", "Amount"} <= set(state):
        raise CheckpointError(f"release prototype file {file} must hold a dict with 'Proto' and 'Amount' tensors.")
    # the release kept counts in float32; round them back to integers
    return state["Proto"].float(), state["Amount"].double().round().long()


def _raise_on_any_rank(error: DataError | None, device: torch.device) -> None:
    """Raise the same :class:`DataError` on every process when any process has one (a collective)."""
    flag = torch.tensor([0.0 if error is None else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    rank, first = next((r, m) for r, m in enumerate(messages) if m is not None)
    if error is not None:
        raise error
    raise DataError(f"process {rank}: {first}")
