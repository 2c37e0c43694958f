"""Lovasz-softmax against the set definition of the Lovasz extension of the Jaccard loss."""

from __future__ import annotations

import pytest
import torch

from proca.errors import ConfigError
from proca.losses import LovaszSoftmaxLoss, lovasz_softmax

IGNORE = 255


def naive_lovasz(probs: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> float:
    """For each class: sort pixel errors descending; sum e_(i) * (J(M_i) - J(M_{i-1})), J(M) = |M| / |fg ∪ M|."""
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).tolist()
    y = labels.reshape(-1).tolist()
    keep = [i for i, lab in enumerate(y) if lab != IGNORE]
    losses = []
    for c in classes:
        fg = {i for i in keep if y[i] == c}
        errors = sorted(((abs((1.0 if i in fg else 0.0) - p[i][c]), i) for i in keep), reverse=True)
        total, previous, chosen = 0.0, 0.0, set()
        for err, i in errors:
            chosen.add(i)
            jaccard = len(chosen) / len(fg | chosen)
            total += err * (jaccard - previous)
            previous = jaccard
        losses.append(total)
    return sum(losses) / len(losses)


def tiny_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (2, 3, 5), generator=g)  # class 3 absent
    labels[0, 0, :2] = IGNORE
    return probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_present_classes_match_naive(seed: int) -> None:
    probs, labels = tiny_case(seed)
    present = sorted({int(v) for v in labels.reshape(-1).tolist() if v != IGNORE})
    assert lovasz_softmax(probs, labels).item() == pytest.approx(naive_lovasz(probs, labels, present), rel=1e-12)


def test_all_and_listed_classes_match_naive() -> None:
    probs, labels = tiny_case(3)
    assert lovasz_softmax(probs, labels, classes="all").item() == pytest.approx(
        naive_lovasz(probs, labels, [0, 1, 2, 3]), rel=1e-12
    )
    assert lovasz_softmax(probs, labels, classes=[1, 3]).item() == pytest.approx(
        naive_lovasz(probs, labels, [1, 3]), rel=1e-12
    )


def test_perfect_prediction_is_zero_and_gradient_flows() -> None:
    labels = torch.tensor([[[0, 1], [2, 1]]])
    perfect = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).double()
    assert lovasz_softmax(perfect, labels).item() == 0.0
    probs, labels = tiny_case(4)
    probs.requires_grad_()
    LovaszSoftmaxLoss()(probs, labels).backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all() and probs.grad.abs().sum() > 0


def test_all_ignored_is_a_zero_that_backpropagates() -> None:
    probs = torch.rand(1, 3, 2, 2, requires_grad=True)
    loss = lovasz_softmax(probs, torch.full((1, 2, 2), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and probs.grad is not None


def test_bad_classes_argument() -> None:
    probs, labels = tiny_case(5)
    with pytest.raises(ConfigError):
        lovasz_softmax(probs, labels, classes="some")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        lovasz_softmax(probs, labels, classes=[7])
