"""Multi-scale + flip prediction: shapes, probabilities, flip symmetry, and device resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proca.engine.device import resolve_device
from proca.engine.predict import aspect_input_size, predict_probs, resize_images
from proca.errors import ProcaError


class StrideEight(nn.Module):
    """A flip-equivariant stand-in for DeepLabV2: 8x8 average pooling and a 1x1 conv."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pool = nn.AvgPool2d(8, stride=8, ceil_mode=True)
        self.head = nn.Conv2d(3, num_classes, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return self.head(self.pool(x))


class Asymmetric(StrideEight):
    """Not flip-equivariant: adds a left-to-right ramp to the logits of class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        ramp = torch.zeros_like(out)
        ramp[:, 0] = torch.linspace(0, 3, out.shape[-1], device=out.device)
        return out + ramp


def test_single_scale_shape_and_probabilities() -> None:
    model = StrideEight().eval()
    images = torch.randn(2, 3, 32, 64)
    probs = predict_probs(model, images, out_size=(64, 128))
    assert probs.shape == (2, 5, 64, 128)
    assert torch.allclose(probs.sum(1), torch.ones(2, 64, 128), atol=1e-5)
    assert model.calls == [(2, 3, 32, 64)]


def test_multi_scale_input_sizes_follow_the_release() -> None:
    model = StrideEight().eval()
    scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    probs = predict_probs(model, torch.randn(1, 3, 36, 70), out_size=(72, 140), scales=scales, flip=True)
    assert probs.shape == (1, 5, 72, 140)
    assert torch.allclose(probs.sum(1), torch.ones(1, 72, 140), atol=1e-5)
    # One forward per scale, the flip concatenated into the batch; int(size * s) as released.
    assert model.calls == [(2, 3, int(36 * s), int(70 * s)) for s in scales]


def test_input_size_resizes_first() -> None:
    model = StrideEight().eval()
    predict_probs(model, torch.randn(1, 3, 50, 90), out_size=(50, 90), input_size=(32, 64), scales=(1.0, 0.5))
    assert model.calls == [(1, 3, 32, 64), (1, 3, 16, 32)]
    assert resize_images(torch.zeros(1, 3, 4, 4), (4, 4)).shape == (1, 3, 4, 4)


def test_flip_symmetry() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 64)
    model = StrideEight().eval()
    plain = predict_probs(model, images, out_size=(64, 128), scales=(0.75, 1.0))
    flipped = predict_probs(model, images, out_size=(64, 128), scales=(0.75, 1.0), flip=True)
    assert torch.allclose(plain, flipped, atol=1e-5)
    # The prediction of the mirrored image is the mirrored prediction when flip is on.
    asym = Asymmetric().eval()
    a = predict_probs(asym, images, out_size=(64, 128), flip=True)
    b = predict_probs(asym, images.flip(-1), out_size=(64, 128), flip=True)
    assert torch.allclose(a, b.flip(-1), atol=1e-5)
    assert not torch.allclose(a, predict_probs(asym, images, out_size=(64, 128)), atol=1e-3)


def test_bad_scales() -> None:
    with pytest.raises(ValueError):
        predict_probs(StrideEight(), torch.zeros(1, 3, 8, 8), out_size=(8, 8), scales=(0.0,))


def test_aspect_input_size() -> None:
    assert aspect_input_size((1024, 2048), (512, 1024)) == (512, 1024)
    assert aspect_input_size((256, 512), (512, 1024)) == (512, 1024)
    h, w = aspect_input_size((600, 800), (512, 1024))
    assert h % 8 == 0 and w % 8 == 0 and abs(h / w - 0.75) < 0.02


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ProcaError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ProcaError, match="CUDA is not available"):
            resolve_device("cuda:0")
