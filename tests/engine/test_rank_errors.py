"""An error on one process stops every process with the same message instead of a hang (gloo, 2 processes)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _worker(rank: int, port: int, out_dir: str, where: str) -> None:
    from proca.engine.launch import agree_on_error
    from proca.errors import DataError, ProcaError, user_message
    from proca.prototypes import PrototypeEstimator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    message = "no error"
    try:
        if where == "estimator":
            est = PrototypeEstimator(4, 3)
            labels = torch.zeros(1, 2, 2, dtype=torch.long)
            if rank == 1:
                labels[0, 0, 0] = 7  # not a train id of 4 classes
            est.update(torch.randn(1, 3, 2, 2), labels)
        else:
            error = DataError("corrupt.png: cannot decode the image") if rank == 0 else None
            agree_on_error(error, torch.device("cpu"))
    except ProcaError as err:
        message = user_message(err)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.txt").write_text(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.parametrize("where", ["estimator", "batch"])
def test_an_error_on_one_rank_stops_both_with_its_message(tmp_path: Path, where: str) -> None:
    context = mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path), where), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        assert time.monotonic() < deadline, "a process hung"
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(WORLD)]
    expected = "labels hold values outside" if where == "estimator" else "corrupt.png: cannot decode"
    assert all(expected in m for m in messages), messages
    bad = 1 if where == "estimator" else 0
    assert messages[1 - bad].startswith(f"process {bad}: ")  # the other process names the one that failed
