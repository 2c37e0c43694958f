"""Loading a state dict into a model with an error that says what does not fit (used by checkpoint and legacy)."""

from __future__ import annotations

import torch
from torch import Tensor

from proca.errors import CheckpointError
from proca.models._keys import mismatch_summary

__all__ = ["load_state_dict_into"]


def load_state_dict_into(model: torch.nn.Module, state: dict[str, Tensor], source: str, *, assign: bool) -> None:
    """``model.load_state_dict(state, strict=True)`` with a :class:`CheckpointError` listing what does not fit."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: the weights do not fit {getattr(model, 'arch', 'the model')} "
            f"({mismatch_summary(missing, unexpected, wrong)})"
        )
    model.load_state_dict(state, strict=True, assign=assign)
