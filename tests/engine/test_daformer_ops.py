"""The DAFormer recipe's pieces against hand computations: EMA, pseudo labels, ClassMix, RCS, FD, MIC masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from proca.engine.stages import daformer_ops as ops


def test_ema_weight_starts_as_a_copy_and_is_capped_at_alpha() -> None:
    assert ops.ema_weight(0.999, 0) == 0.0
    assert ops.ema_weight(0.999, 1) == 0.5
    assert ops.ema_weight(0.999, 9) == pytest.approx(0.9)
    assert ops.ema_weight(0.999, 5000) == 0.999


def test_ema_update_blends_parameters_and_float_buffers_and_copies_counters() -> None:
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
        teacher.running_mean.fill_(0.0)
        student.running_mean.fill_(10.0)
        student.num_batches_tracked.fill_(7)
    ops.ema_update(teacher, student, 0.75)
    torch.testing.assert_close(teacher.weight, torch.full((2,), 0.75 * 1 + 0.25 * 3))
    torch.testing.assert_close(teacher.running_mean, torch.full((2,), 2.5))
    assert int(teacher.num_batches_tracked) == 7
    torch.testing.assert_close(student.weight, torch.full((2,), 3.0))  # the student is untouched


def test_pseudo_labels_weight_is_the_confident_share_and_the_crop_zeroes_rows() -> None:
    logits = torch.zeros(1, 2, 4, 2)
    logits[0, 0, :2] = 10.0  # rows 0-1: class 0, p ~ 1
    logits[0, 1, 2, 0] = 0.1  # row 2, col 0: class 1 barely
    labels, weight, confident = ops.pseudo_labels(logits, 0.968, ignore_top=1, ignore_bottom=1)
    assert labels[0, 0].tolist() == [0, 0] and labels[0, 2, 0] == 1
    assert confident[0].sum() == 4  # the four pixels of rows 0-1
    expected = torch.full((4, 2), 4 / 8)
    expected[0], expected[3] = 0, 0
    torch.testing.assert_close(weight[0], expected)


def test_class_mix_takes_half_of_the_source_classes_rounded_up_and_never_the_ignore_label() -> None:
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255], [4, 4, 4, 4]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = ops.class_mix_mask(label, gen)
        chosen = set(label[mask.bool()].tolist())
        assert len(chosen) == 2 and 255 not in chosen  # ceil(4 / 2) of {0, 1, 2, 4}
        for c in chosen:  # whole classes
            assert bool(mask[label == c].all())
    three = torch.tensor([[0, 1, 2]])
    assert int(ops.class_mix_mask(three, gen).sum()) == 2  # ceil(3 / 2)
    src, tgt = torch.ones(3, 1, 3), torch.zeros(3, 1, 3)
    m = torch.tensor([[1.0, 0.0, 1.0]])
    torch.testing.assert_close(ops.mix(m, src, tgt), m.expand(3, 1, 3))
    lbl = ops.mix(m, torch.tensor([[5, 5, 5]]), torch.tensor([[7, 7, 7]]))
    assert lbl.tolist() == [[5, 7, 5]]


def test_rcs_probabilities_are_a_softmax_of_one_minus_frequency_over_temperature() -> None:
    pixels = np.array([700, 200, 100, 0])
    probs = ops.rcs_class_probs(pixels, 0.1)
    f = np.array([0.7, 0.2, 0.1])
    e = np.exp((1 - f) / 0.1)
    np.testing.assert_allclose(probs[:3], e / e.sum())
    assert probs[3] == 0.0
    assert ops.rcs_class_probs(pixels, 0.01)[2] > 0.99  # T = 0.01: nearly always the rarest class


def test_rare_class_stream_samples_images_holding_the_class_and_is_a_function_of_position() -> None:
    counts = np.array([[5000, 0, 10], [5000, 4000, 0], [5000, 0, 0]])  # class 2 never reaches min_pixels
    stream = ops.RareClassStream(counts, temperature=0.01, min_pixels=3000, seed=0, stream=6)
    assert stream.probs[2] == 0.0 and stream.probs[1] > stream.probs[0]
    items = stream(0, 50)
    assert np.array_equal(items, stream(0, 50)) and np.array_equal(items[10:20], stream(10, 20))
    for item in items:
        image, c = ops.RareClassStream.decode(int(item), 3)
        assert c is not None and counts[image, c] > 3000
    assert ops.RareClassStream.decode(7, 3) == (1, 2)


def test_downscale_label_ratio_and_feature_distance_on_thing_classes() -> None:
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 11  # a thing patch
    labels[0, :2, 2] = 255  # 2 of 4 pixels ignored: ratio 0.5 < 0.75
    small = ops.downscale_label_ratio(labels, 2, 0.75, 19)
    assert small[0].tolist() == [[11, 255], [0, 0]]
    student = torch.zeros(1, 3, 2, 2)
    student[0, :, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # distance 5 at the thing pixel
    student[0, :, 1, 1] = 100.0  # a stuff pixel: not counted
    imnet = torch.zeros(1, 3, 2, 2)
    fd = ops.feature_distance(student, imnet, labels, classes=(11, 12), min_ratio=0.75, num_classes=19)
    assert float(fd) == pytest.approx(5.0)
    none = ops.feature_distance(student, imnet, torch.zeros_like(labels), classes=(11,), min_ratio=0.75, num_classes=19)
    assert float(none) == 0.0  # no thing pixel: 0, not NaN
    every = ops.feature_distance(student, imnet, labels, classes=None, min_ratio=0.75, num_classes=19)
    assert float(every) == pytest.approx((5 + 100 * math.sqrt(3)) / 4)


def test_mic_block_mask_masks_whole_patches_at_the_ratio() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = ops.block_mask((2, 128, 192), 64, 0.7, gen)
    assert mask.shape == (2, 1, 128, 192)
    cells = mask[:, 0].unfold(1, 64, 64).unfold(2, 64, 64)  # (2, 2, 3, 64, 64)
    assert bool((cells.amax((-1, -2)) == cells.amin((-1, -2))).all())  # constant per 64x64 patch
    again = ops.block_mask((2, 128, 192), 64, 0.7, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    rate = ops.block_mask((64, 640, 640), 64, 0.7, gen).mean()
    assert float(rate) == pytest.approx(0.3, abs=0.03)


def test_strong_augment_is_seeded_and_blur_kernel_is_ten_percent_odd() -> None:
    assert ops._blur_kernel_size(512) == 51 and ops._blur_kernel_size(64) == 7 and ops._blur_kernel_size(10) == 1
    image = torch.randn(3, 16, 16)
    kwargs = {"jitter_strength": 0.2, "jitter_probability": 0.2, "blur": True, "mean": (0.5,) * 3, "std": (0.2,) * 3}
    a = ops.strong_augment(image, torch.Generator().manual_seed(3), **kwargs)  # type: ignore[arg-type]
    b = ops.strong_augment(image, torch.Generator().manual_seed(3), **kwargs)  # type: ignore[arg-type]
    torch.testing.assert_close(a, b)
    off = {**kwargs, "jitter_strength": 0.0, "blur": False}
    torch.testing.assert_close(ops.strong_augment(image, torch.Generator(), **off), image)  # type: ignore[arg-type]


def test_weighted_cross_entropy_is_the_mean_over_all_pixels() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [255, 0]]])
    weight = torch.tensor([[[1.0, 0.5, 1.0, 0.0]]]).view(1, 2, 2)
    loss = ops.weighted_cross_entropy(logits, labels, weight)
    assert float(loss) == pytest.approx(math.log(2) * (1 + 0.5) / 4)


def test_distribution_estimator_is_the_pooled_mean_and_variance() -> None:
    from proca.prototypes import DistributionEstimator

    est = DistributionEstimator(2, 1)
    a, b = torch.tensor([[1.0], [3.0]]), torch.tensor([[5.0], [7.0], [9.0]])
    est.update(a, torch.tensor([0, 0]))
    est.update(b, torch.tensor([0, 0, 255]))
    allx = torch.tensor([1.0, 3.0, 5.0, 7.0])
    assert float(est.mean[0, 0]) == pytest.approx(float(allx.mean()))
    assert float(est.var[0, 0]) == pytest.approx(float(allx.var(unbiased=False)))
    assert int(est.counts[0]) == 4 and int(est.counts[1]) == 0 and float(est.mean[1, 0]) == 0.0


def test_distribution_contrast_reduces_to_prototype_cross_entropy_without_variance() -> None:
    from proca.losses import distribution_contrastive_loss

    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    mean = torch.eye(2)
    loss = distribution_contrastive_loss(f, y, mean, torch.zeros(2, 2), temperature=0.5)
    expected = torch.nn.functional.cross_entropy(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), y)
    assert float(loss) == pytest.approx(float(expected))
    with_var = distribution_contrastive_loss(f, y, mean, torch.ones(2, 2), temperature=0.5)
    assert float(with_var) > float(loss)
    with_var.backward()
    assert f.grad is not None and bool(torch.isfinite(f.grad).all())
