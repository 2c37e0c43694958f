"""PrototypeEstimator: running mean, EMA, layouts, state and file round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from proca.errors import CheckpointError, ConfigError
from proca.prototypes import PrototypeEstimator

IGNORE = 255


def random_batch(g: torch.Generator, n: int, dim: int, num_classes: int, ignore_frac: float = 0.3):
    features = torch.randn(n, dim, generator=g) * 3 + 1
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = IGNORE
    return features, labels


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    num_classes=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_running_mean_is_the_global_mean_of_every_pixel_seen(sizes: list[int], num_classes: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    est = PrototypeEstimator(num_classes, 3)
    seen_f, seen_l = [], []
    for n in sizes:
        f, lab = random_batch(g, n, 3, num_classes)
        est.update(f, lab)
        seen_f.append(f)
        seen_l.append(lab)
    feats, labels = torch.cat(seen_f).double(), torch.cat(seen_l)
    for c in range(num_classes):
        mask = labels == c
        assert int(est.counts[c]) == int(mask.sum())
        expected = feats[mask].mean(0) if mask.any() else torch.zeros(3, dtype=torch.float64)
        torch.testing.assert_close(est.prototypes[c].double(), expected, rtol=1e-5, atol=1e-5)
    assert est.prototypes.dtype == torch.float32 and est.counts.dtype == torch.int64


def test_ignored_pixels_and_absent_classes_never_matter() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = PrototypeEstimator(4, 3), PrototypeEstimator(4, 3)
    f, lab = random_batch(g, 100, 3, 3)  # class 3 never appears
    a.update(f, lab)
    f2 = f.clone()
    f2[lab == IGNORE] = 1e9
    b.update(f2, lab)
    assert torch.equal(a.prototypes, b.prototypes) and torch.equal(a.counts, b.counts)
    assert int(a.counts[3]) == 0 and torch.count_nonzero(a.prototypes[3]) == 0
    before = a.prototypes[0].clone()
    a.update(torch.randn(5, 3), torch.full((5,), IGNORE))
    assert torch.equal(a.prototypes[0], before)


def test_flat_and_image_layouts_agree() -> None:
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 6, 5, 7, generator=g)
    labels = torch.randint(0, 4, (2, 5, 7), generator=g)
    labels[:, 0] = IGNORE
    a, b = PrototypeEstimator(4, 6), PrototypeEstimator(4, 6)
    a.update(features, labels)
    b.update(features.permute(0, 2, 3, 1).reshape(-1, 6), labels.reshape(-1))
    torch.testing.assert_close(a.prototypes, b.prototypes, rtol=0, atol=1e-6)
    assert torch.equal(a.counts, b.counts)


def test_ema_variant() -> None:
    g = torch.Generator().manual_seed(2)
    est = PrototypeEstimator(3, 2, momentum=0.9)
    f1, l1 = random_batch(g, 50, 2, 2, ignore_frac=0.0)  # classes 0, 1
    est.update(f1, l1)
    for c in (0, 1):  # first sighting takes the batch mean
        torch.testing.assert_close(est.prototypes[c], f1[l1 == c].mean(0))
    f2, l2 = random_batch(g, 60, 2, 3, ignore_frac=0.2)
    before = est.prototypes.clone()
    est.update(f2, l2)
    for c in range(3):
        mask = l2 == c
        mean = f2[mask].mean(0)
        expected = mean if c == 2 else 0.1 * before[c] + 0.9 * mean
        torch.testing.assert_close(est.prototypes[c], expected)
        assert int(est.counts[c]) == int((l1 == c).sum() + mask.sum())  # pixels of the class, not of the batch


def test_state_dict_round_trip_and_buffers() -> None:
    g = torch.Generator().manual_seed(3)
    est = PrototypeEstimator(5, 4)
    est.update(*random_batch(g, 80, 4, 5))
    assert set(est.state_dict()) == {"prototypes", "counts"}
    other = PrototypeEstimator(5, 4)
    other.load_state_dict(est.state_dict())
    assert torch.equal(other.prototypes, est.prototypes) and torch.equal(other.counts, est.counts)
    moved = est.to(torch.device("cpu"))
    assert moved.prototypes.device.type == "cpu"


def test_safetensors_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    est = PrototypeEstimator(5, 4, momentum=0.5, ignore_index=250)
    f, lab = random_batch(g, 80, 4, 5)
    est.update(f, torch.where(lab == IGNORE, 250, lab))
    path = tmp_path / "protos.safetensors"
    est.save(path, metadata={"class_set": "cityscapes19"})
    loaded = PrototypeEstimator.load(path)
    assert torch.equal(loaded.prototypes, est.prototypes) and torch.equal(loaded.counts, est.counts)
    assert loaded.momentum == 0.5 and loaded.ignore_index == 250
    assert not list(tmp_path.glob("*.tmp"))


def test_load_release_pth_file(tmp_path: Path) -> None:
    path = tmp_path / "prototype_feat_dist.pth"
    proto, amount = torch.randn(3, 4), torch.tensor([1.2e8, 0.0, 35.0])
    torch.save({"Proto": proto, "Amount": amount}, path)
    loaded = PrototypeEstimator.load(path)
    assert torch.equal(loaded.prototypes, proto)
    assert loaded.counts.tolist() == [120_000_000, 0, 35] and loaded.momentum is None


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        PrototypeEstimator.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        PrototypeEstimator.load(bad)


def test_wrong_feature_dim_and_momentum_are_config_errors() -> None:
    est = PrototypeEstimator(3, 4)
    with pytest.raises(ConfigError, match="feature_dim 4"):
        est.update(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="momentum"):
        PrototypeEstimator(3, 4, momentum=1.5)


def test_bfloat16_features_update_in_float32() -> None:
    g = torch.Generator().manual_seed(5)
    f, lab = random_batch(g, 300, 4, 3)
    a, b = PrototypeEstimator(3, 4), PrototypeEstimator(3, 4)
    a.update(f.to(torch.bfloat16), lab)
    b.update(f.to(torch.bfloat16).float(), lab)
    torch.testing.assert_close(a.prototypes, b.prototypes, rtol=1e-6, atol=1e-6)
    assert a.prototypes.dtype == torch.float32


@pytest.mark.cuda
def test_cuda_update_matches_cpu() -> None:
    g = torch.Generator().manual_seed(6)
    f, lab = random_batch(g, 20_000, 64, 19)
    cpu, gpu = PrototypeEstimator(19, 64), PrototypeEstimator(19, 64).cuda()
    for _ in range(2):
        cpu.update(f, lab)
        gpu.update(f.cuda(), lab.cuda())
    gpu.update(f.cuda().to(torch.bfloat16), lab.cuda())
    cpu.update(f.to(torch.bfloat16), lab)
    torch.testing.assert_close(gpu.prototypes.cpu(), cpu.prototypes, rtol=1e-6, atol=1e-6)
    assert torch.equal(gpu.counts.cpu(), cpu.counts)
