"""Two gloo processes on CPU, each seeing different pixels, end with the prototypes of the union."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from proca.prototypes import PrototypeEstimator

WORLD = 2
NUM_CLASSES, DIM = 4, 6


def rank_batches(rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Different pixels (and a different class mix) on each rank; class 3 only ever on rank 1."""
    g = torch.Generator().manual_seed(100 + rank)
    batches = []
    for step in range(3):
        features = torch.randn(2, DIM, 4, 5, generator=g) + rank * 2
        labels = torch.randint(0, 3 if rank == 0 else NUM_CLASSES, (2, 4, 5), generator=g)
        labels[:, 0, step] = 255
        batches.append((features, labels))
    return batches


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        est = PrototypeEstimator(NUM_CLASSES, DIM)
        for features, labels in rank_batches(rank):
            est.update(features, labels)
        est.save(Path(out_dir) / f"rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.distributed
@pytest.mark.slow
def test_every_rank_holds_the_prototypes_of_the_union(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [PrototypeEstimator.load(tmp_path / f"rank{r}.safetensors") for r in range(WORLD)]
    assert torch.equal(ranks[0].prototypes, ranks[1].prototypes)
    assert torch.equal(ranks[0].counts, ranks[1].counts)

    # the union, seen by one process in the same order of steps
    union = PrototypeEstimator(NUM_CLASSES, DIM)
    pairs = list(zip(rank_batches(0), rank_batches(1), strict=True))
    for (f0, l0), (f1, l1) in pairs:
        union.update(torch.cat([f0, f1]), torch.cat([l0, l1]))
    torch.testing.assert_close(ranks[0].prototypes, union.prototypes, rtol=1e-6, atol=1e-6)
    assert torch.equal(ranks[0].counts, union.counts)

    # and that is the plain mean of every labelled pixel of both ranks
    feats = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, DIM) for r in range(WORLD) for f, _ in rank_batches(r)])
    labels = torch.cat([lab.reshape(-1) for r in range(WORLD) for _, lab in rank_batches(r)])
    for c in range(NUM_CLASSES):
        torch.testing.assert_close(ranks[1].prototypes[c], feats[labels == c].mean(0), rtol=1e-5, atol=1e-5)
