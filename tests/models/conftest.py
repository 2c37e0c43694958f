"""Small models and release-layout checkpoints for the models tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from proca.models import DeepLabV2, deeplabv2_resnet18
from proca.models.legacy import proca_to_release_state_dict


def randomise_norm_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm layer non-trivial statistics so that eval-mode comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


def release_checkpoint(model: DeepLabV2, *, ddp: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A dict in the release's layout (what ProCA's train_*.py pass to torch.save)."""
    parts = proca_to_release_state_dict(model.state_dict())
    prefix = "module." if ddp else ""
    fe = {prefix + k: v.clone() for k, v in parts["feature_extractor"].items()}
    cls = {prefix + k: v.clone() for k, v in parts["classifier"].items()}
    # Optimiser states with momentum buffers, from copies so that the model's weights stay as saved.
    fea_params = [p.detach().clone().requires_grad_() for p in model.backbone.parameters()]
    cls_params = [p.detach().clone().requires_grad_() for p in model.classifier.parameters()]
    opt_fea = torch.optim.SGD(fea_params, lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    opt_cls = torch.optim.SGD(cls_params, lr=2.5e-3, momentum=0.9, weight_decay=5e-4)
    for p in fea_params + cls_params:
        p.grad = torch.ones_like(p)
    opt_fea.step()
    opt_cls.step()
    ckpt: dict[str, Any] = {
        "iteration": 20000,
        "feature_extractor": fe,
        "classifier": cls,
        "optimizer_fea": opt_fea.state_dict(),
        "optimizer_cls": opt_cls.state_dict(),
    }
    ckpt.update(extra or {})
    return ckpt


@pytest.fixture(name="release_checkpoint")
def release_checkpoint_fixture() -> Callable[..., dict[str, Any]]:
    """:func:`release_checkpoint` as a fixture (tests folders are not packages)."""
    return release_checkpoint


@pytest.fixture(name="randomise_norm_stats")
def randomise_norm_stats_fixture() -> Callable[..., None]:
    """:func:`randomise_norm_stats` as a fixture."""
    return randomise_norm_stats


@pytest.fixture(scope="module")
def r18() -> DeepLabV2:
    torch.manual_seed(0)
    model = deeplabv2_resnet18(num_classes=19)
    randomise_norm_stats(model)
    return model.eval()


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def release_file(tmp_path_factory: pytest.TempPathFactory, r18: DeepLabV2) -> Path:
    path = tmp_path_factory.mktemp("release") / "model_proca_ssl.pth"
    torch.save(release_checkpoint(r18), path)
    return path
