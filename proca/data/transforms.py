"""Joint image/label transform presets (``torchvision.transforms.v2``), as in the released recipe.

Each preset takes and returns the sample dict of :mod:`proca.data.datasets`
(``{"image": tv_tensors.Image uint8, "label": tv_tensors.Mask, "name", "path"}``); names and
paths pass through untouched. Labels are ``tv_tensors.Mask`` and are always resized with
:func:`resize_mask`, nearest neighbour picking exactly the source pixels PIL's ``Image.NEAREST`` picks
(the release resizes labels with PIL), so no new label values appear; images are resized bicubic. The output
image is float32, scaled to [0, 1] and normalised with the ImageNet mean and std; the label stays
int64. All randomness comes from torch's global RNG (the engine seeds it per DataLoader worker),
so a seeded run repeats exactly.

Presets (release configs in brackets):

- :func:`source_train_transform`: resize to ``size``; with ``jitter`` colour jitter (brightness,
  contrast, saturation 0.5, hue 0.2, always applied), random grayscale p=0.2, 3x3 Gaussian blur
  sigma 0.1..2.0 [stage 1 without jitter at 720x1280; stage 3 with it].
- :func:`target_train_transform`: resize to ``size`` [stage 3 target, 512x1024].
- :func:`self_training_transform`: random scale, random crop (labels padded with 255), flip p=0.5,
  the colour augmentations [stage 5].
- :func:`test_transform`: resize the image only (bicubic); the label keeps its full size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from proca.data.classes import IGNORE_INDEX

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomScale",
    "denormalize",
    "normalize",
    "pil_nearest_indices",
    "resize_mask",
    "self_training_transform",
    "source_train_transform",
    "target_train_transform",
    "test_transform",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

Size = tuple[int, int]


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (or float in [0, 1]) -> float32 normalised with the ImageNet mean and std.

    Shape:
        (..., 3, H, W) -> (..., 3, H, W).
    """
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: float normalised -> uint8 RGB (rounded, clamped).

    Shape:
        (..., 3, H, W) -> (..., 3, H, W).
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)


def pil_nearest_indices(size_in: int, size_out: int) -> torch.Tensor:
    """Source index of each output pixel along one axis, as PIL's ``Image.NEAREST`` resize picks it.

    PIL samples at pixel centres, ``floor((i + 0.5) * size_in / size_out)``, with the position summed up
    step by step in float64 (``x0 = step / 2``, ``x[i + 1] = x[i] + step``); ``np.cumsum`` adds in the same
    order, so the indices are bit-identical to PIL's, including where the sum lands next to an integer.
    torch's ``nearest`` (floor of ``i * step``) and ``nearest-exact`` (a float32 product) differ from it.

    Shape:
        -> (size_out,) int64.
    """
    step = size_in / size_out
    steps = np.full(size_out, step, dtype=np.float64)
    steps[0] = step * 0.5
    index = np.minimum(np.cumsum(steps).astype(np.int64), size_in - 1)
    return torch.from_numpy(index)


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a label map with nearest neighbour exactly as PIL's ``Image.resize(..., Image.NEAREST)``.

    Any dtype; a ``tv_tensors.Mask`` stays one.

    Shape:
        mask: (..., H, W) -> (..., h, w).
    """
    h, w = int(size[0]), int(size[1])
    if tuple(mask.shape[-2:]) == (h, w):
        return mask
    plain = mask.as_subclass(torch.Tensor)
    rows = pil_nearest_indices(plain.shape[-2], h).to(plain.device)
    cols = pil_nearest_indices(plain.shape[-1], w).to(plain.device)
    out = plain.index_select(-2, rows).index_select(-1, cols)
    return tv_tensors.wrap(out, like=mask) if isinstance(mask, tv_tensors.Mask) else out


class RandomScale(v2.Transform):
    """Resize by a random factor s ~ U(scale): to ``(int(s * H), int(s * W))`` of ``size`` or of the input.

    Images are resized bicubic (antialiased), masks nearest as PIL (:func:`resize_mask`); as the release's
    ``RandomScale``.

    Args:
        scale: (min, max) factor.
        size: reference (H, W); None: the input's own size.
    """

    def __init__(self, scale: tuple[float, float], size: Size | None = None) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = self.size if self.size is not None else v2.query_size(flat_inputs)
        s = float(torch.empty(()).uniform_(self.scale[0], self.scale[1]))
        return {"size": [max(1, int(height * s)), max(1, int(width * s))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return resize_mask(inpt, params["size"])
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return inpt


class _Resize(v2.Transform):
    """Resize to a fixed (H, W): images bicubic (the release resizes PIL images with BICUBIC), masks as PIL NEAREST.

    ``v2.Resize`` would resize masks with torch's floor-nearest, which picks other source pixels than PIL
    (for 1914x1052 -> 1280x720, 956 of the 1280 columns and 524 of the 720 rows).
    """

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return resize_mask(inpt, self.size)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, self.size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return inpt


def _resize(size: Size) -> v2.Transform:
    return _Resize(size)


def _colour() -> list[v2.Transform]:
    return [
        v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2),
        v2.RandomGrayscale(p=0.2),
        v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
    ]


def _to_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
    ]


def _check_size(size: Sequence[int] | None, what: str) -> Size:
    if size is None or len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"{what} must be (height, width) with positive values, got {size!r}")
    return int(size[0]), int(size[1])


def source_train_transform(size: Size, *, jitter: bool = True) -> v2.Compose:
    """Source training: resize to ``size`` (H, W), optional colour augmentations, normalise.

    Args:
        size: output (H, W), e.g. (720, 1280) for GTA5, (760, 1280) for SYNTHIA.
        jitter: colour jitter (always applied), grayscale p=0.2 and 3x3 blur (ProCA stage); False
            for the source-only stage.
    """
    size = _check_size(size, "size")
    return v2.Compose([_resize(size), *(_colour() if jitter else []), *_to_float()])


def target_train_transform(size: Size) -> v2.Compose:
    """Target training: resize to ``size`` (H, W) (labels, if any, nearest) and normalise."""
    size = _check_size(size, "size")
    return v2.Compose([_resize(size), *_to_float()])


def self_training_transform(
    size: Size | None, *, scale: tuple[float, float] = (0.5, 1.5), crop: Size | None = None, jitter: bool = True
) -> v2.Compose:
    """Self-training on pseudo labels: random scale, random crop, flip p=0.5, colour augmentations.

    The image is resized to ``s * size`` with s ~ U(scale), then a ``crop`` window is cut at a random
    place; where the scaled image is smaller than the crop, it is padded (image 0, label 255).
    The release scales the full-resolution Cityscapes image (1024x2048) and crops 512x1024:
    ``self_training_transform(None, crop=(512, 1024))`` or, equivalently for Cityscapes,
    ``self_training_transform((1024, 2048), crop=(512, 1024))``.

    Args:
        size: reference (H, W) the random scale applies to; None: the input's own size.
        scale: (min, max) of the random scale factor.
        crop: crop (H, W); default ``size`` (required when ``size`` is None).
        jitter: add the colour augmentations of the ProCA stage (the release does).
    """
    if size is not None:
        size = _check_size(size, "size")
    if crop is None:
        if size is None:
            raise ValueError("give crop=(height, width) when size is None")
        crop = size
    crop = _check_size(crop, "crop")
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX, "others": 0}
    return v2.Compose(
        [
            RandomScale(scale, size),
            v2.RandomCrop(crop, pad_if_needed=True, fill=fill),
            v2.RandomHorizontalFlip(p=0.5),
            *(_colour() if jitter else []),
            *_to_float(),
        ]
    )


class _ImageOnlyResize(v2.Transform):
    """Resize images only (bicubic); masks pass through at full size."""

    def __init__(self, size: Size) -> None:
        super().__init__()
        self.size = list(size)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, self.size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        return inpt


def test_transform(size: Size | None = None) -> v2.Compose:
    """Evaluation: resize only the image to ``size`` (H, W) bicubic (None: keep it); normalise.

    The label keeps its full resolution: predictions are upsampled to it for scoring.
    """
    steps: list[v2.Transform] = []
    if size is not None:
        steps.append(_ImageOnlyResize(_check_size(size, "size")))
    return v2.Compose([*steps, *_to_float()])


# A preset, not a pytest test: keep pytest from collecting it where a test module imports it by name.
test_transform.__test__ = False  # type: ignore[attr-defined]
