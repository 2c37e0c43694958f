"""The streaming confusion matrix against hand-computed cases and the official evaluator's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proca.data.classes import SYNTHIA_16
from proca.engine.metrics import ConfusionMatrix, confusion_matrix, metrics_from_confusion, nanmean
from proca.errors import DataError


def test_hand_computed_case() -> None:
    # 3 classes; 255 ignored.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    assert torch.equal(cm.matrix, expected)
    m = cm.compute()
    # class 0: tp 1, fn 1, fp 2 -> 1/4; class 1: tp 2, fn 1, fp 1 -> 2/4; class 2: tp 1, fn 1, fp 0 -> 1/2
    assert m.iou == pytest.approx((0.25, 0.5, 0.5))
    assert m.acc == pytest.approx((0.5, 2 / 3, 0.5))
    assert m.miou == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert m.pixel_acc == pytest.approx(4 / 7)
    assert m.pixels == 7


def test_streaming_equals_one_shot_and_is_global() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 8, 9), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (6, 8, 9), generator=g)
    cm = ConfusionMatrix(4)
    for i in range(6):
        cm.update(pred[i : i + 1], target[i : i + 1])
    assert torch.equal(cm.matrix, confusion_matrix(pred, target, 4))
    # Global IoU is not the mean of per-image IoUs: check against numpy on the whole split.
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    keep = t != 255
    ious = []
    for c in range(4):
        inter = np.sum((t == c) & (p == c) & keep)
        union = np.sum(((t == c) | (p == c)) & keep)
        ious.append(inter / union)
    assert cm.compute().miou == pytest.approx(float(np.mean(ious)))


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    m = ConfusionMatrix(3)
    m.update(pred, target)
    s = m.compute()
    assert math.isnan(s.iou[2]) and math.isnan(s.acc[2])
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    # Predicted but absent from the ground truth: IoU 0 (counted), accuracy n/a.
    m2 = ConfusionMatrix(3)
    m2.update(torch.tensor([2, 1]), torch.tensor([1, 1]))
    s2 = m2.compute()
    assert s2.iou[2] == 0.0 and math.isnan(s2.acc[2])
    assert math.isnan(s2.iou[0])
    assert s2.miou == pytest.approx(0.25)


def test_predictions_on_ignored_pixels_do_not_count() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([1, 1, 1]), torch.tensor([255, 255, 0]))
    s = cm.compute()
    assert s.iou[0] == 0.0 and s.iou[1] == 0.0 and s.pixels == 1


def test_empty_matrix_is_all_nan() -> None:
    s = ConfusionMatrix(3).compute()
    assert all(math.isnan(v) for v in s.iou) and math.isnan(s.miou) and math.isnan(s.pixel_acc)
    assert math.isnan(nanmean([]))


def test_synthia_16_and_13() -> None:
    ids13 = SYNTHIA_16.subset("13")
    assert len(ids13) == 13 and {3, 4, 5}.isdisjoint(ids13)
    # Classes 0..15 each perfectly predicted except wall (3), fence (4), pole (5) always wrong.
    target = torch.arange(16).repeat(4)
    pred = target.clone()
    pred[(target == 3) | (target == 4) | (target == 5)] = 0
    cm = ConfusionMatrix(16)
    cm.update(pred, target)
    s = cm.compute()
    assert s.iou[3] == s.iou[4] == s.iou[5] == 0.0
    assert s.miou == pytest.approx((12 + 4 / 16) / 16)  # road: 4 tp, 12 fp
    assert cm.miou_subset(ids13) == pytest.approx((12 + 4 / 16) / 13)
    assert s.miou_subset(ids13) == cm.miou_subset(ids13)


def test_score_maps_are_argmaxed() -> None:
    scores = torch.zeros(1, 3, 2, 2)
    scores[0, 2] = 1.0
    cm = ConfusionMatrix(3)
    cm.update(scores, torch.full((1, 2, 2), 2))
    assert cm.compute().iou[2] == 1.0
    with pytest.raises(ValueError):
        cm.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_bad_inputs() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match="neither train ids"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="predictions"):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))


def test_metrics_from_confusion_matches_official_formula() -> None:
    rng = np.random.default_rng(1)
    mat = rng.integers(0, 50, size=(5, 5))
    mat[4, :] = 0
    mat[:, 4] = 0  # class 4 n/a
    s = metrics_from_confusion(torch.from_numpy(mat))
    for c in range(4):
        tp = mat[c, c]
        fn = mat[c, :].sum() - tp
        fp = mat[:, c].sum() - tp
        assert s.iou[c] == pytest.approx(tp / (tp + fp + fn))
    assert math.isnan(s.iou[4])
    assert s.miou == pytest.approx(np.mean(s.iou[:4]))


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _reduce_worker(rank: int, world: int, port: int, queue: object) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([rank % 2]), torch.tensor([0]))
    cm.all_reduce()
    queue.put((rank, cm.matrix.tolist()))  # type: ignore[attr-defined]
    dist.destroy_process_group()


@pytest.mark.distributed
def test_all_reduce_sums_over_ranks() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children need not re-import torch (spawn takes many seconds on a busy machine).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reduce_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1] == [[1, 1], [0, 0]]


def test_other_ignore_values_and_stray_ground_truth() -> None:
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([-1, 1, -1]), 2, ignore_index=-1)
    assert cm.tolist() == [[0, 0], [0, 1]]
    for bad in ([0, 300], [0, -3], [0, 2]):
        with pytest.raises(DataError, match="neither train ids"):
            confusion_matrix(torch.tensor([0, 1]), torch.tensor(bad), 2)
