"""Prototype contrastive loss against a naive per-pixel computation; gradients; edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proca.errors import ConfigError
from proca.losses import PrototypeContrastiveLoss, prototype_contrastive_loss

IGNORE = 255


def naive_loss(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over labelled pixels of -log softmax(cos(f, p_c) / tau)[label], one pixel at a time (float64)."""
    terms = []
    for f, y in zip(features.double(), labels.tolist(), strict=True):
        if y == IGNORE:
            continue
        f_unit = f / torch.clamp(torch.sqrt((f * f).sum()), min=1e-12)
        cosines = []
        for p in prototypes.double():
            p_unit = p / max(math.sqrt(float((p * p).sum())), 1e-12)
            cosines.append((f_unit * p_unit).sum() / tau)
        logits = torch.stack(cosines)
        terms.append(torch.logsumexp(logits, 0) - logits[y])
    return torch.stack(terms).mean()


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 25),
    dim=st.integers(1, 6),
    num_classes=st.integers(1, 5),
    tau=st.sampled_from([50.0, 1.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_value_and_gradient_match_naive(n: int, dim: int, num_classes: int, tau: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[0] = 0  # at least one labelled pixel
    labels[torch.rand(n, generator=g) < 0.3] = IGNORE
    labels[0] = 0
    prototypes = torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    x1 = features.clone().requires_grad_()
    x2 = features.clone().requires_grad_()
    ours = prototype_contrastive_loss(x1, labels, prototypes, temperature=tau)
    ref = naive_loss(x2, labels, prototypes, tau)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("layout", ["flat", "image"])
def test_gradcheck(layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(4, 5, generator=g, dtype=torch.float64)
    if layout == "flat":
        features = torch.randn(9, 5, generator=g, dtype=torch.float64)
        labels = torch.tensor([0, 1, 2, 3, IGNORE, 1, 2, 0, IGNORE])
    else:
        features = torch.randn(2, 5, 3, 2, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 4, (2, 3, 2), generator=g)
        labels[0, 0, 0] = IGNORE
    features.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: prototype_contrastive_loss(f, labels, prototypes, temperature=0.3), (features,)
    )


def test_flat_and_image_layouts_agree() -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 4, 6, generator=g)
    labels = torch.randint(0, 5, (2, 4, 6), generator=g)
    labels[1, 2] = IGNORE
    prototypes = torch.randn(5, 8, generator=g)
    x4 = features.clone().requires_grad_()
    x2 = features.permute(0, 2, 3, 1).reshape(-1, 8).clone().requires_grad_()
    l4 = prototype_contrastive_loss(x4, labels, prototypes, temperature=0.2)
    l2 = prototype_contrastive_loss(x2, labels.reshape(-1), prototypes, temperature=0.2)
    torch.testing.assert_close(l4, l2)
    (l4 + l2).backward()
    assert x4.grad is not None and x2.grad is not None
    torch.testing.assert_close(x4.grad.permute(0, 2, 3, 1).reshape(-1, 8), x2.grad)


def test_ignored_pixels_get_no_gradient_and_do_not_change_the_loss() -> None:
    g = torch.Generator().manual_seed(2)
    features = torch.randn(20, 4, generator=g)
    labels = torch.randint(0, 3, (20,), generator=g)
    labels[::4] = IGNORE
    prototypes = torch.randn(3, 4, generator=g)
    x = features.clone().requires_grad_()
    loss = prototype_contrastive_loss(x, labels, prototypes, temperature=0.5)
    loss.backward()
    assert x.grad is not None and torch.count_nonzero(x.grad[labels == IGNORE]) == 0
    other = features.clone()
    other[labels == IGNORE] = 1e6
    assert prototype_contrastive_loss(other, labels, prototypes, temperature=0.5) == loss.detach()


def test_prototypes_get_no_gradient() -> None:
    prototypes = torch.randn(3, 4, requires_grad=True)
    features = torch.randn(6, 4, requires_grad=True)
    prototype_contrastive_loss(features, torch.tensor([0, 1, 2, 0, 1, 2]), prototypes).backward()
    assert prototypes.grad is None and features.grad is not None


@pytest.mark.parametrize("shape", [(7, 4), (2, 4, 3, 3), (0, 4)])
def test_all_ignored_batch_is_a_zero_that_backpropagates(shape: tuple[int, ...]) -> None:
    features = torch.randn(*shape, requires_grad=True)
    labels = torch.full((shape[0],) if len(shape) == 2 else (shape[0], *shape[2:]), IGNORE)
    loss = prototype_contrastive_loss(features, labels, torch.randn(5, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert features.grad is not None and torch.count_nonzero(features.grad) == 0


def test_zero_feature_vectors_are_finite() -> None:
    features = torch.zeros(3, 4, requires_grad=True)
    loss = prototype_contrastive_loss(features, torch.tensor([0, 1, 2]), torch.randn(3, 4))
    loss.backward()
    assert torch.isclose(loss, torch.tensor(math.log(3.0)))
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_released_temperature_keeps_the_loss_near_log_c() -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(500, 32, generator=g)
    prototypes = torch.randn(19, 32, generator=g)
    labels = torch.randint(0, 19, (500,), generator=g)
    loss = prototype_contrastive_loss(features, labels, prototypes)
    assert abs(loss.item() - math.log(19)) < 0.04


def test_module_matches_function_and_half_precision_runs() -> None:
    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 16, 5, 5, generator=g)
    labels = torch.randint(0, 6, (2, 5, 5), generator=g)
    prototypes = torch.randn(6, 16, generator=g)
    module = PrototypeContrastiveLoss(temperature=0.1)
    expected = prototype_contrastive_loss(features, labels, prototypes, temperature=0.1)
    assert module(features=features, labels=labels, prototypes=prototypes) == expected
    x = features.to(torch.bfloat16).requires_grad_()
    low = module(features=x, labels=labels, prototypes=prototypes)
    low.backward()
    assert low.dtype == torch.float32 and x.grad is not None and x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(low, expected, rtol=2e-2, atol=2e-2)
    with pytest.raises(ConfigError, match="temperature"):
        PrototypeContrastiveLoss(temperature=0.0)


@pytest.mark.cuda
def test_cuda_matches_cpu_and_runs_under_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    features = torch.randn(2, 64, 9, 11, generator=g)
    labels = torch.randint(0, 19, (2, 9, 11), generator=g)
    labels[0, :3] = IGNORE
    prototypes = torch.randn(19, 64, generator=g)
    x_cpu = features.clone().requires_grad_()
    x_gpu = features.cuda().requires_grad_()
    l_cpu = prototype_contrastive_loss(x_cpu, labels, prototypes, temperature=0.1)
    l_gpu = prototype_contrastive_loss(x_gpu, labels.cuda(), prototypes.cuda(), temperature=0.1)
    (l_cpu + l_gpu.cpu()).backward()
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-5, atol=1e-6)
    assert x_gpu.grad is not None and x_cpu.grad is not None
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-4, atol=1e-6)
    conv = torch.nn.Conv2d(64, 64, 1).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = prototype_contrastive_loss(conv(features.cuda()), labels.cuda(), prototypes.cuda(), temperature=0.1)
    loss.backward()
    assert torch.isfinite(loss) and conv.weight.grad is not None
