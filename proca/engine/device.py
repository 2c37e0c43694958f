"""Turn the ``--device`` option into a :class:`torch.device`; count the CPUs this process may use."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

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
    """CPUs this process may run on: its affinity mask where the OS has one (Linux), else ``os.cpu_count()``.

    Under ``taskset``, cgroup cpusets or a SLURM allocation the affinity is what counts, not the machine.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        try:
            return max(1, len(affinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def _say_stderr(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message, soft_wrap=True)


def cap_workers(requested: int, *, say: Callable[[str], None] | None = _say_stderr, what: str = "DataLoader") -> int:
    """Lower a worker-process count to the CPUs this process may use (see :func:`usable_cpus`).

    Args:
        requested: the count asked for (0: load in the main process; never raised).
        say: called with one line when the count is lowered (default: printed to stderr); ``None`` is silent.
        what: names the workers in that line.

    Returns:
        ``min(requested, usable_cpus())``.
    """
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    if say is not None:
        say(f"{what} workers: {requested} requested, {cpus} CPU(s) usable by this process; using {cpus}.")
    return cpus
