"""Transform presets: labels stay nearest (no new values), shapes, normalisation, seeded randomness."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torchvision import tv_tensors

from proca.data import transforms as T


def _sample(h: int = 37, w: int = 53, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 19, (h, w), generator=g)
    label[:5] = 255
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    return {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(label), "name": "x", "path": "/x.png"}


PRESETS = {
    "source": lambda: T.source_train_transform((24, 40)),
    "source_nojitter": lambda: T.source_train_transform((24, 40), jitter=False),
    "target": lambda: T.target_train_transform((24, 40)),
    "self_training": lambda: T.self_training_transform((37, 53), crop=(24, 40)),
    "self_training_native": lambda: T.self_training_transform(None, crop=(30, 30)),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_label_values_and_shapes(name: str) -> None:
    tf = PRESETS[name]()
    for seed in range(4):
        sample = _sample(seed=seed)
        values = set(sample["label"].unique().tolist())
        torch.manual_seed(seed)
        out = tf(sample)
        assert out["name"] == "x" and out["path"] == "/x.png"
        assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.int64
        assert out["image"].shape[-2:] == out["label"].shape
        assert out["image"].shape[0] == 3
        # nearest: no new values, except 255 padding where the crop is larger than the scaled image
        assert set(out["label"].unique().tolist()) <= values | {255}
        assert out["image"].abs().max() < 3.0  # normalised


def test_self_training_pads_labels_with_ignore() -> None:
    tf = T.self_training_transform((10, 10), scale=(0.5, 0.5), crop=(10, 10), jitter=False)
    sample = _sample(10, 10)
    sample["label"] = tv_tensors.Mask(torch.zeros(10, 10, dtype=torch.int64))
    out = tf(sample)
    assert (out["label"] == 255).sum() == 100 - 25 and (out["label"] == 0).sum() == 25


def test_test_transform_resizes_only_the_image() -> None:
    out = T.test_transform((16, 32))(_sample())
    assert out["image"].shape == (3, 16, 32) and out["label"].shape == (37, 53)
    same = T.test_transform()(_sample())
    assert same["image"].shape == (3, 37, 53)
    assert torch.equal(T.denormalize(same["image"]), _sample()["image"].as_subclass(torch.Tensor))


def test_randomness_follows_torch_seed() -> None:
    tf = T.self_training_transform((37, 53), crop=(24, 40))
    torch.manual_seed(7)
    a = tf(_sample())
    torch.manual_seed(7)
    b = tf(_sample())
    torch.manual_seed(8)
    c = tf(_sample())
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])


def test_normalize_roundtrip_and_errors() -> None:
    img = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    assert torch.equal(T.denormalize(T.normalize(img)), img)
    with pytest.raises(ValueError, match="size"):
        T.source_train_transform((0, 10))
    with pytest.raises(ValueError, match="crop"):
        T.self_training_transform(None)


# (H, W) -> (h, w): the GTA5 resize of the release (1914x1052 -> 1280x720), down and up, odd and prime sizes.
PIL_SIZES = [
    ((1052, 1914), (720, 1280)),
    ((1024, 2048), (512, 1024)),
    ((37, 53), (24, 40)),
    ((24, 40), (37, 53)),
    ((7, 13), (61, 97)),
    ((101, 67), (33, 89)),
    ((1, 5), (3, 2)),
    ((253, 158), (113, 93)),
]


@pytest.mark.parametrize(("src", "dst"), PIL_SIZES)
def test_resize_mask_matches_pil_nearest_bit_exact(src: tuple[int, int], dst: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    h, w = src
    ramp = (np.arange(h, dtype=np.int32)[:, None] * 4096 + np.arange(w, dtype=np.int32)[None]).astype(np.int32)
    pil = np.asarray(Image.fromarray(ramp, mode="I").resize((dst[1], dst[0]), Image.Resampling.NEAREST))
    ours = T.resize_mask(tv_tensors.Mask(torch.from_numpy(ramp)), dst)
    assert isinstance(ours, tv_tensors.Mask)
    assert np.array_equal(ours.numpy(), pil)


def test_presets_resize_labels_as_pil() -> None:
    import numpy as np
    from PIL import Image

    sample = _sample(1052, 1914)
    label = sample["label"].numpy().astype(np.uint8)
    pil = np.asarray(Image.fromarray(label).resize((1280, 720), Image.Resampling.NEAREST))
    for tf in (T.source_train_transform((720, 1280), jitter=False), T.target_train_transform((720, 1280))):
        assert np.array_equal(tf(dict(sample))["label"].numpy(), pil)


def test_random_scale_resizes_labels_as_pil() -> None:
    import numpy as np
    from PIL import Image

    sample = _sample(37, 53)
    torch.manual_seed(3)
    out = T.RandomScale((0.6, 1.7))(dict(sample))
    h, w = out["label"].shape[-2:]
    label = sample["label"].numpy().astype(np.uint8)
    assert np.array_equal(out["label"].numpy(), np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST)))
