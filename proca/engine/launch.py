"""Distributed runs: torchrun self-launch, process-group set-up and the helpers every stage uses.

``proca train --gpus N`` (CUDA, NCCL) or ``--nproc N`` (CPU, gloo) writes the resolved config to
``RUN/config.json`` and starts ``python -m proca.engine.worker`` under ``python -m torch.distributed.run``
with N processes per node; ``--nnodes``,
``--node-rank`` and ``--rdzv-endpoint`` pass through. Inside the launched processes the usual
torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) are set and
:func:`init_distributed` joins the group from them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from proca.errors import ConfigError, ProcaError

__all__ = [
    "DistInfo",
    "agree_on_error",
    "all_reduce_mean",
    "any_flag",
    "barrier",
    "cleanup_distributed",
    "in_torchrun",
    "init_distributed",
    "launch_torchrun",
    "torchrun_command",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run.

    Attributes:
        rank: global rank (0 writes files).
        world_size: processes in the run.
        local_rank: rank on this node (CUDA device index).
        device: the device this process trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0


def in_torchrun() -> bool:
    """True inside a process started by torchrun (its environment variables are set)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(
    worker_args: Sequence[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    python: str | None = None,
) -> list[str]:
    """The command that starts ``python -m proca.engine.worker WORKER_ARGS`` under torchrun.

    Args:
        worker_args: the worker's arguments (the run options; the config is read from ``RUN/config.json``).
        nproc_per_node: processes per node.
        nnodes: nodes; above 1 a rendezvous endpoint ``host:port`` is required.
        node_rank: this node's rank (static rendezvous).
        rdzv_endpoint: ``host:port`` of node 0.
        python: interpreter (default: this one).
    """
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"--node-rank {node_rank} does not fit --nnodes {nnodes}; node ranks are 0 .. {nnodes - 1}.")
    cmd = [python or sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ConfigError(f"--nnodes {nnodes} needs --rdzv-endpoint host:port (node 0's address and a free port).")
        host, _, port = rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--rdzv-endpoint {rdzv_endpoint!r} is not host:port, for example node0:29500.")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    return [*cmd, "-m", "proca.engine.worker", *worker_args]


def launch_torchrun(cmd: Sequence[str], *, threads_per_process: int | None = None) -> None:
    """Run the torchrun command and wait; a failing process becomes a :class:`ProcaError`.

    Ctrl-C is forwarded to torchrun (same process group), which stops the workers; we then wait for it.
    """
    env = dict(os.environ)
    if threads_per_process is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads_per_process))
    proc = subprocess.Popen(list(cmd), env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()
        raise
    if code != 0:
        raise ProcaError(f"the distributed training exited with status {code}; the first error is printed above.")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun prepared (NCCL on CUDA, gloo on CPU); a single process otherwise.

    Args:
        device: the device requested with ``--device``; on CUDA each process takes ``cuda:LOCAL_RANK``.
    """
    if not in_torchrun():
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local} on this node has no GPU (this node has {torch.cuda.device_count()}); "
                "use --gpus <= the number of GPUs."
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if world > 1 and not dist.is_initialized():
        # a generous timeout: rank 0 alone writes the pseudo labels while the others wait
        dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(hours=2))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars over processes (identity for a single process)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def any_flag(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (every process gets the same answer)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def agree_on_error(error: BaseException | None, device: torch.device) -> None:
    """Raise the same :class:`ProcaError` on every process when ``error`` is set on any of them.

    A collective every process calls at the same point (before the step's own collectives): an error on one
    rank (a corrupt image in its batch) then stops every rank with that rank's message instead of leaving the
    others waiting in the next all-reduce. Without a process group, ``error`` is simply raised.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        return
    if not any_flag(error is not None, device):
        return
    from proca.errors import user_message

    mine = None if error is None else user_message(error)
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, mine)
    rank, first = next((r, m) for r, m in enumerate(messages) if m is not None)
    if error is not None and isinstance(error, ProcaError) and rank == dist.get_rank():
        raise error
    raise ProcaError(f"process {rank}: {first}")
