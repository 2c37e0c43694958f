"""Turn the ``--device`` option into a :class:`torch.device`."""

from __future__ import annotations

import re

import torch

from proca.errors import ConfigError

__all__ = ["cap_workers", "resolve_device", "usable_cpus"]

_VALID = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device) -> torch.device:
    """Resolve a device name the way every proca command does.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or ``"mps"``; a :class:`torch.device` is returned unchanged after the same checks.

    Returns:
        The device.

    Raises:
        ConfigError: the name is not a device, or CUDA (or device ``N``) is not available here.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name!s}: CUDA is not available on this machine (torch {torch.__version__}); "
                "use --device cpu or auto."
            )
        if match.group(1) is not None:
            index = int(match.group(1))
            count = torch.cuda.device_count()
            if index >= count:
                raise ConfigError(
                    f"--device {name!s}: this machine has {count} CUDA device(s), valid: cuda:0..cuda:{count - 1}."
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    if text == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"--device {name!s}: MPS is not available on this machine; use --device cpu or auto.")
        return torch.device("mps")
    raise ConfigError(f"--device {name!s} is not a device; valid: {_VALID}.")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cap_workers(requested: int, *, say: bool = True) -> int:
    """``requested`` DataLoader workers, at most :func:`usable_cpus`; says so in one line when lowered."""
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if say:
        from rich.console import Console

        Console(stderr=True, highlight=False).print(
            f"[dim]num_workers {requested} lowered to {cpus}: this process may use {cpus} CPU(s)[/]"
        )
    return cpus
