"""Tests for the memory-bank variant: projection head, ring queues, anchor sampling, loss, DDP sync."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from proca.errors import DataError
from proca.losses.memory_bank import (
    MemoryBank,
    MemoryBankContrastiveLoss,
    ProjectionHead,
    memory_bank_contrastive_loss,
    sample_anchors,
)


def _indexed(n: int, dim: int = 3) -> torch.Tensor:
    """(N, dim) embeddings whose first channel is the pixel index, so a stored entry names its pixel."""
    emb = torch.zeros(n, dim)
    emb[:, 0] = torch.arange(n, dtype=torch.float32)
    emb[:, 1] = 1.0
    return emb


# ---------------------------------------------------------------------------------------------- head


def test_projection_head_shape_and_unit_norm() -> None:
    head = ProjectionHead(8, 16, 4)
    out = head(torch.randn(2, 8, 5, 6))
    assert out.shape == (2, 4, 5, 6)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 5, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(torch.randn(2, 8, 5, 6)).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- bank


def test_ring_pointer_advances_by_number_stored_and_wraps() -> None:
    bank = MemoryBank(3, 3, pixel_queue_size=5, prototype_queue_size=2, pixels_per_class=3)
    labels = torch.tensor([0] * 10 + [1] * 2)  # class 0: many pixels, class 1: fewer than 3, class 2: absent
    emb = _indexed(12)
    emb[:, 2] = 1.0  # step marker
    bank.enqueue(emb, labels)
    assert bank.pixel_ptr.tolist() == [3, 2, 0]
    assert bank.pixel_filled.tolist() == [3, 2, 0]
    assert bank.prototype_ptr.tolist() == [1, 1, 0]
    assert bank.prototype_filled.tolist() == [1, 1, 0]
    first = bank.pixel_queue[0, :3, 0].clone()
    assert len(set(first.tolist())) == 3 and all(v < 10 for v in first.tolist())  # distinct class-0 pixels
    assert sorted(bank.pixel_queue[1, :2, 0].tolist()) == [10.0, 11.0]

    emb[:, 2] = 2.0
    bank.enqueue(emb, labels)
    assert bank.pixel_ptr.tolist() == [1, 4, 0]  # (3 + 3) % 5, 2 + 2
    assert bank.pixel_filled.tolist() == [5, 4, 0]
    assert bank.pixel_queue[0, :, 2].tolist() == [2.0, 1.0, 1.0, 2.0, 2.0]  # slots 3, 4, 0 hold step 2
    assert bank.prototype_ptr.tolist() == [0, 0, 0]
    assert bank.prototype_filled.tolist() == [2, 2, 0]

    emb_all, lab_all = bank.pixel_entries()
    assert emb_all.shape == (9, 3) and lab_all.tolist() == [0] * 5 + [1] * 4
    proto, proto_lab = bank.prototype_entries()
    assert proto_lab.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(proto.norm(dim=1), torch.ones(4))
    both, both_lab = bank.entries()
    assert both.shape[0] == 13 and both_lab.tolist() == lab_all.tolist() + proto_lab.tolist()


def test_more_entries_than_slots_keeps_the_last_ones() -> None:
    bank = MemoryBank(1, 3, pixel_queue_size=3, prototype_queue_size=4, pixels_per_class=4)
    bank.enqueue(_indexed(6), torch.zeros(6, dtype=torch.long))
    assert bank.pixel_ptr.tolist() == [1] and bank.pixel_filled.tolist() == [3]
    assert len(set(bank.pixel_queue[0, :, 0].tolist())) == 3


def test_prototype_entry_is_normalised_class_mean() -> None:
    bank = MemoryBank(2, 2, pixels_per_class=0)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    bank.enqueue(emb, torch.tensor([0, 0, 255]))
    proto, lab = bank.prototype_entries()
    assert lab.tolist() == [0]
    torch.testing.assert_close(proto[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert bank.pixel_filled.tolist() == [0, 0]


def test_enqueue_accepts_maps_ignores_255_and_rejects_bad_labels() -> None:
    bank = MemoryBank(2, 4, pixels_per_class=100)
    labels = torch.full((2, 3, 3), 255)
    labels[0, 0, 0] = 1
    bank.enqueue(torch.randn(2, 4, 3, 3), labels)
    assert bank.pixel_filled.tolist() == [0, 1]
    with pytest.raises(DataError, match="value 7"):
        bank.enqueue(torch.randn(2, 4, 3, 3), torch.full((2, 3, 3), 7))


def test_enqueue_is_deterministic_under_a_seed_and_state_dict_round_trips() -> None:
    emb, labels = torch.randn(200, 4), torch.randint(0, 3, (200,))
    banks = []
    for _ in range(2):
        bank = MemoryBank(3, 4, pixel_queue_size=8, pixels_per_class=5)
        gen = torch.Generator().manual_seed(3)
        for _ in range(3):
            bank.enqueue(emb, labels, generator=gen)
        banks.append(bank)
    torch.testing.assert_close(banks[0].pixel_queue, banks[1].pixel_queue)
    torch.manual_seed(1)
    banks[0].enqueue(emb, labels)
    torch.manual_seed(1)
    banks[1].enqueue(emb, labels)
    torch.testing.assert_close(banks[0].pixel_queue, banks[1].pixel_queue)
    restored = MemoryBank(3, 4, pixel_queue_size=8, pixels_per_class=5)
    restored.load_state_dict(banks[0].state_dict())
    for name, value in banks[0].state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)


# ---------------------------------------------------------------------------------------------- sampling


def _sample(labels: list[int], preds: list[int] | None, **kwargs: object) -> tuple[list[int], list[int]]:
    emb = _indexed(len(labels))
    anchors, anchor_labels = sample_anchors(
        emb, torch.tensor(labels), None if preds is None else torch.tensor(preds), **kwargs
    )
    idx = anchors[:, 0].long().tolist()
    assert len(set(idx)) == len(idx)  # without replacement
    assert all(labels[i] == c for i, c in zip(idx, anchor_labels.tolist(), strict=True))
    return idx, anchor_labels.tolist()


def _hard_easy(idx: list[int], labels: list[int], preds: list[int], cls: int) -> tuple[int, int]:
    mine = [i for i in idx if labels[i] == cls]
    hard = sum(preds[i] != cls for i in mine)
    return hard, len(mine) - hard


def test_sampling_half_hard_half_easy() -> None:
    labels = [0] * 40
    preds = [1] * 20 + [0] * 20
    idx, _ = _sample(labels, preds, max_per_class=10)
    assert _hard_easy(idx, labels, preds, 0) == (5, 5)
    idx, _ = _sample(labels, preds, max_per_class=5)
    assert _hard_easy(idx, labels, preds, 0) == (2, 3)


def test_sampling_fall_backs() -> None:
    labels = [0] * 30 + [1] * 30 + [2] * 12 + [3] * 3 + [255] * 5
    preds = [0] * 30 + [2] * 30 + [2] + [0] * 11 + [3] * 3 + [0] * 5  # 0: no hard, 1: no easy, 2: 1 easy
    idx, anchor_labels = _sample(labels, preds, max_per_class=10)
    assert _hard_easy(idx, labels, preds, 0) == (0, 10)
    assert _hard_easy(idx, labels, preds, 1) == (10, 0)
    assert _hard_easy(idx, labels, preds, 2) == (9, 1)
    assert _hard_easy(idx, labels, preds, 3) == (0, 3)  # tiny class: all its pixels
    assert 255 not in anchor_labels and anchor_labels == sorted(anchor_labels)
    idx, anchor_labels = _sample(labels, preds, max_per_class=10, min_pixels=11)
    assert 3 not in anchor_labels and set(anchor_labels) == {0, 1, 2}
    _, anchor_labels = _sample(labels, None, max_per_class=4)  # no predictions: all easy
    assert anchor_labels == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 3


def test_sampling_nothing_valid_and_maps() -> None:
    anchors, anchor_labels = sample_anchors(
        torch.randn(4, 3), torch.full((4,), 255), torch.zeros(4, dtype=torch.long), max_per_class=5
    )
    assert anchors.shape == (0, 3) and anchor_labels.shape == (0,)
    emb = torch.randn(2, 3, 4, 5)
    labels = torch.randint(0, 2, (2, 4, 5))
    anchors, anchor_labels = sample_anchors(emb, labels, labels, max_per_class=3)
    assert anchors.shape == (6, 3)
    flat = emb.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(a, f) for f in flat) for a in anchors)
    with pytest.raises(ValueError, match="shape"):
        sample_anchors(emb, labels[:, :2], None, max_per_class=3)


def test_sampling_deterministic_with_generator() -> None:
    emb, labels, preds = torch.randn(300, 4), torch.randint(0, 4, (300,)), torch.randint(0, 4, (300,))
    a1, _ = sample_anchors(emb, labels, preds, max_per_class=6, generator=torch.Generator().manual_seed(5))
    a2, _ = sample_anchors(emb, labels, preds, max_per_class=6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a1, a2)


# ---------------------------------------------------------------------------------------------- loss


def _naive_loss(anchors, anchor_labels, bank, bank_labels, temperature, base_temperature, denominator):
    total, used = 0.0, 0
    valid = [k for k in range(bank.shape[0]) if bank_labels[k] >= 0]
    for i in range(anchors.shape[0]):
        logits = {k: float(anchors[i] @ bank[k]) / temperature for k in valid}
        positives = [k for k in valid if bank_labels[k] == anchor_labels[i]]
        if not positives:
            continue
        terms = []
        for p in positives:
            if denominator == "all":
                z = sum(math.exp(v) for v in logits.values())
            else:
                z = math.exp(logits[p]) + sum(math.exp(logits[k]) for k in valid if bank_labels[k] != anchor_labels[i])
            terms.append(logits[p] - math.log(z))
        total += -(temperature / base_temperature) * sum(terms) / len(terms)
        used += 1
    return total / used if used else 0.0


@pytest.mark.parametrize("denominator", ["all", "negatives"])
@pytest.mark.parametrize("base_temperature", [None, 0.07])
def test_loss_matches_naive_loop(denominator: str, base_temperature: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    anchors = F.normalize(torch.randn(7, 5, generator=gen, dtype=torch.float64), dim=1)
    anchor_labels = torch.tensor([0, 0, 1, 2, 2, 3, 1])  # class 3 has no positive in the bank
    bank = F.normalize(torch.randn(9, 5, generator=gen, dtype=torch.float64), dim=1)
    bank_labels = torch.tensor([0, 1, 2, 0, -1, 1, 2, 2, -1])  # -1: empty slots
    got = memory_bank_contrastive_loss(
        anchors,
        anchor_labels,
        bank,
        bank_labels,
        temperature=0.2,
        base_temperature=base_temperature,
        denominator=denominator,  # type: ignore[arg-type]
    )
    want = _naive_loss(
        anchors, anchor_labels.tolist(), bank, bank_labels.tolist(), 0.2, base_temperature or 0.2, denominator
    )
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("denominator", ["all", "negatives"])
def test_loss_gradcheck(denominator: str) -> None:
    gen = torch.Generator().manual_seed(1)
    anchors = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    anchor_labels, bank_labels = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 0, -1, 1])

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return memory_bank_contrastive_loss(a, anchor_labels, b, bank_labels, temperature=0.5, denominator=denominator)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(fn, (anchors, bank))


def test_zero_valid_loss_backpropagates() -> None:
    anchors = torch.randn(3, 4, requires_grad=True)
    empty = memory_bank_contrastive_loss(anchors, torch.tensor([0, 1, 1]), torch.zeros(0, 4), torch.zeros(0).long())
    no_pos = memory_bank_contrastive_loss(anchors, torch.tensor([0, 1, 1]), torch.randn(2, 4), torch.tensor([2, -1]))
    for loss in (empty, no_pos):
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, anchors)
        assert torch.count_nonzero(grad) == 0

    head = ProjectionHead(4, 4, 3)
    crit = MemoryBankContrastiveLoss(max_anchors_per_class=4, min_pixels_per_class=1)
    loss = crit(head(torch.randn(1, 4, 3, 3)), torch.full((1, 3, 3), 255), MemoryBank(2, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None for p in head.parameters())


def test_module_against_functional_and_autocast() -> None:
    torch.manual_seed(0)
    bank = MemoryBank(3, 4, pixel_queue_size=6, prototype_queue_size=3, pixels_per_class=3)
    emb = F.normalize(torch.randn(2, 4, 5, 5), dim=1)
    labels = torch.randint(0, 3, (2, 5, 5))
    preds = torch.randint(0, 3, (2, 5, 5))
    bank.enqueue(emb, labels)
    crit = MemoryBankContrastiveLoss(0.1, max_anchors_per_class=4, min_pixels_per_class=1)
    got = crit(emb, labels, bank, preds, generator=torch.Generator().manual_seed(2))
    anchors, anchor_labels = sample_anchors(
        emb, labels, preds, max_per_class=4, generator=torch.Generator().manual_seed(2)
    )
    entries, entry_labels = bank.entries()
    assert entries.shape[0] == int(bank.pixel_filled.sum() + bank.prototype_filled.sum())  # empty slots excluded
    want = _naive_loss(anchors, anchor_labels.tolist(), entries, entry_labels.tolist(), 0.1, 0.1, "all")
    assert got.item() == pytest.approx(want, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = crit(emb.bfloat16(), labels, bank, preds, generator=torch.Generator().manual_seed(2))
    assert low.dtype == torch.float32 and low.item() == pytest.approx(want, rel=2e-2)


# ---------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank = MemoryBank(3, 4, pixel_queue_size=7, prototype_queue_size=4, pixels_per_class=2)
        gen = torch.Generator().manual_seed(100 + rank)  # different data and choices on each rank
        data = []
        for _ in range(3):
            emb = torch.randn(2, 4, 3, 3, generator=gen)
            labels = torch.randint(0, 3, (2, 3, 3), generator=gen)
            labels[:, 0] = 255 if rank == 0 else labels[:, 0]
            data.append((emb, labels))
            bank.enqueue(emb, labels, generator=gen)
        torch.save({"state": bank.state_dict(), "data": data}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.distributed
def test_banks_stay_identical_across_ranks(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, value in r0["state"].items():
        torch.testing.assert_close(r1["state"][name], value, msg=name)
    state = r0["state"]
    # per step each rank stores up to 2 pixels per class: filled counts add up over ranks and steps
    expected = torch.zeros(3, dtype=torch.long)
    for step in range(3):
        for r in (r0, r1):
            labels = r["data"][step][1]
            expected += torch.stack([torch.clamp((labels == c).sum(), max=2) for c in range(3)])
    assert state["pixel_filled"].tolist() == torch.clamp(expected, max=7).tolist()
    assert state["pixel_ptr"].tolist() == (expected % 7).tolist()
    # the last class mean of class 0 is the mean over both ranks' pixels of the last step
    emb = torch.cat([r0["data"][2][0], r1["data"][2][0]]).permute(0, 2, 3, 1).reshape(-1, 4)
    labels = torch.cat([r0["data"][2][1], r1["data"][2][1]]).reshape(-1)
    mean = F.normalize(emb[labels == 0].mean(0), dim=0)
    last = (int(state["prototype_ptr"][0]) - 1) % 4
    torch.testing.assert_close(state["prototype_queue"][0, last], mean)
