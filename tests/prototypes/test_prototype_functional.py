"""class_sums, confident_labels and downsample_labels against naive computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from proca.errors import ConfigError, DataError
from proca.prototypes import class_sums, confident_labels, downsample_labels, functional

IGNORE = 255


def naive_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for f, c in zip(features.double(), labels.tolist(), strict=True):
        if c != IGNORE:
            sums[c] += f
            counts[c] += 1
    return sums, counts


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 60),
    dim=st.integers(1, 9),
    num_classes=st.integers(1, 6),
    ignore_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_class_sums_match_naive(n: int, dim: int, num_classes: int, ignore_frac: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = IGNORE
    sums, counts = class_sums(features, labels, num_classes)
    ref_sums, ref_counts = naive_sums(features, labels, num_classes)
    assert counts.dtype == torch.int64
    assert torch.equal(counts, ref_counts)
    # float32 chunk sums (then float64): float32 rounding over up to 60 terms
    torch.testing.assert_close(sums, ref_sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1000, 16384])
def test_class_sums_chunks_and_layouts_agree(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(functional, "_CHUNK", chunk)
    monkeypatch.setattr(functional, "_HALF_CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    b, a, h, w, c = 2, 5, 50, 90, 7  # 4,500 pixels per image
    features = torch.randn(b, a, h, w, generator=g)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.3] = IGNORE
    flat_feats = features.permute(0, 2, 3, 1).reshape(-1, a)
    sums4, counts4 = class_sums(features, labels, c)
    sums2, counts2 = class_sums(flat_feats, labels.reshape(-1), c)
    ref_sums, ref_counts = naive_sums(flat_feats, labels.reshape(-1), c)
    assert torch.equal(counts4, ref_counts) and torch.equal(counts2, ref_counts)
    torch.testing.assert_close(sums4, ref_sums, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(sums2, ref_sums, rtol=1e-6, atol=1e-4)
    half_sums, _ = class_sums(features.to(torch.bfloat16), labels, c)
    half_ref, _ = naive_sums(flat_feats.to(torch.bfloat16), labels.reshape(-1), c)
    torch.testing.assert_close(half_sums, half_ref, rtol=1e-6, atol=1e-4)


def test_ignored_pixels_never_matter() -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(200, 4, generator=g)
    labels = torch.randint(0, 3, (200,), generator=g)
    labels[::3] = IGNORE
    sums, counts = class_sums(features, labels, 3)
    features[labels == IGNORE] = torch.randn(int((labels == IGNORE).sum()), 4, generator=g) * 1e6
    sums2, counts2 = class_sums(features, labels, 3)
    assert torch.equal(sums, sums2) and torch.equal(counts, counts2)


def test_half_precision_features_are_summed_in_float32_or_better() -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.rand(5000, 3, generator=g).to(torch.bfloat16)
    labels = torch.zeros(5000, dtype=torch.long)
    sums, _ = class_sums(features, labels, 2)
    exact = features.double().sum(0)
    torch.testing.assert_close(sums[0], exact, rtol=1e-6, atol=0)


def test_class_sums_reject_bad_labels() -> None:
    with pytest.raises(DataError, match="outside"):
        class_sums(torch.randn(4, 2), torch.tensor([0, 1, 7, IGNORE]), 3)
    with pytest.raises(DataError, match="do not fit"):
        class_sums(torch.randn(4, 2), torch.tensor([0, 1]), 3)


@pytest.mark.parametrize("mode", ["logit", "prob"])
def test_confident_labels_match_naive(mode: str) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 7, generator=g) * 2
    out = confident_labels(logits, 0.9 if mode == "logit" else 0.5, mode=mode)  # type: ignore[arg-type]
    for b in range(2):
        for i in range(6):
            for j in range(7):
                scores = logits[b, :, i, j]
                conf = scores.max() if mode == "logit" else scores.softmax(0).max()
                expected = int(scores.argmax()) if conf >= (0.9 if mode == "logit" else 0.5) else IGNORE
                assert int(out[b, i, j]) == expected
    assert out.dtype == torch.int64 and out.shape == (2, 6, 7)


def test_confident_labels_reject_unknown_mode() -> None:
    with pytest.raises(ConfigError, match="mode"):
        confident_labels(torch.randn(1, 2, 3, 3), mode="softmax")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 80), w=st.integers(1, 80), oh=st.integers(1, 40), ow=st.integers(1, 40))
def test_downsample_labels_equals_float_interpolate(h: int, w: int, oh: int, ow: int) -> None:
    labels = torch.randint(0, 256, (2, h, w))
    expected = F.interpolate(labels.unsqueeze(0).float(), size=(oh, ow), mode="nearest").squeeze(0).long()
    assert torch.equal(downsample_labels(labels, (oh, ow)), expected)
    assert torch.equal(downsample_labels(labels.to(torch.uint8), (oh, ow)), expected)
