"""The pieces of the DAFormer/MIC self-training step, as plain functions (each unit-tested on its own).

- EMA teacher: :func:`ema_weight`, :func:`ema_update`;
- pseudo labels with the confidence-weighted quality estimate and DAFormer's crop: :func:`pseudo_labels`;
- DACS ClassMix: :func:`class_mix_mask`, :func:`mix`;
- DACS' strong augmentation of mixed images: :func:`color_jitter`, :func:`gaussian_blur`, :func:`strong_augment`;
- rare-class sampling: :func:`rcs_class_probs`, :class:`RareClassStream`;
- the ImageNet feature distance: :func:`downscale_label_ratio`, :func:`feature_distance`;
- MIC's block masks: :func:`block_mask`;
- the pixel-weighted segmentation loss: :func:`weighted_cross_entropy`.

Random draws take an explicit ``torch.Generator`` (or NumPy ``Generator``) seeded per sample from the
run's seed and the sample's position, so a step's draws do not depend on the number of processes or on
whether the run was interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.errors import DataError

__all__ = [
    "RareClassStream",
    "block_mask",
    "class_mix_mask",
    "color_jitter",
    "downscale_label_ratio",
    "ema_update",
    "ema_weight",
    "feature_distance",
    "gaussian_blur",
    "mix",
    "pseudo_labels",
    "rcs_class_probs",
    "strong_augment",
    "weighted_cross_entropy",
]

IGNORE = 255


# ------------------------------------------------------------------------------------------- EMA teacher


def ema_weight(alpha: float, iteration: int) -> float:
    """The teacher's EMA weight at ``iteration`` (0-based): ``min(1 - 1 / (iteration + 1), alpha)``.

    At iteration 0 the weight is 0, i.e. the teacher is a copy of the student (DAFormer's initialisation).
    """
    return min(1.0 - 1.0 / (iteration + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, weight: float) -> None:
    """``teacher <- weight * teacher + (1 - weight) * student`` for parameters and floating buffers.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied. Parameters and buffers are paired
    by name; the two modules must have the same structure.
    """
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    for name, t in [*t_params.items(), *t_bufs.items()]:
        s = s_params[name] if name in t_params else s_bufs[name]
        if t.is_floating_point():
            t.mul_(weight).add_(s.detach().to(t.dtype), alpha=1.0 - weight)
        else:
            t.copy_(s)


# ------------------------------------------------------------------------------------------ pseudo labels


@torch.no_grad()
def pseudo_labels(
    logits: Tensor, threshold: float, *, ignore_top: int = 0, ignore_bottom: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher pseudo labels with DAFormer's quality estimate and pseudo-label crop.

    Each image's weight is the share of its pixels whose maximum softmax probability is ``>= threshold``
    (DAFormer computes the share over the whole batch; here per image, so it does not depend on how the batch
    is split over processes); the top ``ignore_top`` and bottom ``ignore_bottom`` rows get weight 0.

    Args:
        logits: teacher logits at the image size, (B, C, H, W).
        threshold: confidence threshold (0.968).

    Returns:
        ``labels`` (B, H, W) int64 argmax, ``weight`` (B, H, W) float32 and ``confident`` (B, H, W) bool
        (max probability >= threshold).
    """
    prob, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
    confident = prob >= threshold
    share = confident.flatten(1).float().mean(1)
    weight = share.view(-1, 1, 1).expand_as(prob).clone()
    if ignore_top > 0:
        weight[:, :ignore_top, :] = 0
    if ignore_bottom > 0:
        weight[:, max(0, weight.shape[1] - ignore_bottom) :, :] = 0
    return labels, weight, confident


# --------------------------------------------------------------------------------------------- ClassMix


def class_mix_mask(label: Tensor, generator: torch.Generator) -> Tensor:
    """DACS ClassMix: a mask of the pixels of half of the classes present in a source label map.

    Of the ``n`` classes present (ignored pixels excluded), ``ceil(n / 2)`` are drawn without replacement;
    the mask is 1 on their pixels. (DAFormer draws from the classes of the whole batch, the ignore label
    included; here from the image's own classes.)

    Shape:
        label (H, W) int -> mask (H, W) float32.
    """
    classes = torch.unique(label)
    classes = classes[classes != IGNORE]
    n = int(classes.numel())
    if n == 0:
        return torch.zeros(label.shape, dtype=torch.float32, device=label.device)
    order = torch.randperm(n, generator=generator).to(classes.device)
    chosen = classes[order[: (n + n % 2) // 2]]
    return torch.isin(label, chosen).float()


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """``mask * source + (1 - mask) * target`` (mask broadcast over leading channel dimensions).

    Shape:
        mask (H, W); source, target (..., H, W) -> (..., H, W), of the inputs' dtype.
    """
    m = mask.to(source.dtype) if source.is_floating_point() else mask.bool()
    if source.is_floating_point():
        return m * source + (1 - m) * target
    return torch.where(m, source, target)


# -------------------------------------------------------------------------------------- strong augmentation


def color_jitter(image: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Colour jitter of one image in [0, 1]: brightness, contrast, saturation (factors ~ U(1-s, 1+s)) and hue
    (shift ~ U(-s, s), at most 0.5), in this order, as kornia's ``ColorJitter(s, s, s, s)`` that DAFormer uses.

    Shape:
        image (3, H, W) float in [0, 1] -> (3, H, W).
    """
    from torchvision.transforms.v2 import functional as TF

    u = torch.rand(4, generator=generator).tolist()
    lo = max(0.0, 1.0 - strength)
    out = TF.adjust_brightness(image, lo + (1.0 + strength - lo) * u[0])
    out = TF.adjust_contrast(out, lo + (1.0 + strength - lo) * u[1])
    out = TF.adjust_saturation(out, lo + (1.0 + strength - lo) * u[2])
    hue = min(strength, 0.5)
    return TF.adjust_hue(out, -hue + 2 * hue * u[3]).clamp(0, 1)


def _blur_kernel_size(size: int) -> int:
    """DAFormer's blur kernel side: ceil(10 % of the side), minus one when that is even (at least 1)."""
    k = math.ceil(0.1 * size)
    return max(1, math.floor(k - 0.5 + k % 2))


def gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    """Gaussian blur with ``sigma`` and DAFormer's kernel size (about 10 % of each side, odd), reflect padding.

    Shape:
        image (C, H, W) -> (C, H, W).
    """
    from torchvision.transforms.v2 import functional as TF

    ky, kx = _blur_kernel_size(image.shape[-2]), _blur_kernel_size(image.shape[-1])
    return TF.gaussian_blur(image, kernel_size=[kx, ky], sigma=[sigma, sigma])


def strong_augment(
    image: Tensor,
    generator: torch.Generator,
    *,
    jitter_strength: float,
    jitter_probability: float,
    blur: bool,
    mean: Sequence[float],
    std: Sequence[float],
) -> Tensor:
    """DACS' strong augmentation of one normalised image: colour jitter when ``u > jitter_probability``
    (u ~ U(0, 1); so applied with probability 1 - p, as DAFormer), then Gaussian blur when ``blur`` and
    ``u' > 0.5`` with ``sigma ~ U(0.15, 1.15)``.

    Shape:
        image (3, H, W) normalised with ``mean``/``std`` -> (3, H, W) normalised.
    """
    u_jitter, u_blur, u_sigma = torch.rand(3, generator=generator).tolist()
    out = image
    if u_jitter > jitter_probability and jitter_strength > 0:
        m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
        s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
        out = (color_jitter((out * s + m).clamp(0, 1), jitter_strength, generator) - m) / s
    if blur and u_blur > 0.5:
        out = gaussian_blur(out, 0.15 + u_sigma)
    return out


# ---------------------------------------------------------------------------------------- rare classes


def rcs_class_probs(class_pixels: Sequence[int] | np.ndarray, temperature: float) -> np.ndarray:
    """Rare-class sampling probabilities: ``p_c = softmax((1 - f_c) / T)`` with ``f_c`` the class's pixel share.

    Classes with no pixel get probability 0 (DAFormer only lists classes that occur).

    Shape:
        class_pixels (C,) -> (C,) float64 summing to 1.
    """
    n = np.asarray(class_pixels, dtype=np.float64)
    present = n > 0
    if not present.any():
        raise DataError("rare-class sampling: the source label info counts no labelled pixel.")
    freq = n[present] / n[present].sum()
    z = (1.0 - freq) / temperature
    e = np.exp(z - z.max())
    out = np.zeros_like(n)
    out[present] = e / e.sum()
    return out


class RareClassStream:
    """DAFormer's rare-class sampling as a position-addressed stream of (image, class) draws.

    At stream position ``p``: a class ``c ~ p_c`` (:func:`rcs_class_probs` over the classes that have at least
    one image with more than ``min_pixels`` pixels of them), then uniformly one of those images. The result
    is encoded ``image * (C + 1) + c + 1`` so that the dataset can crop around class ``c``
    (:func:`decode`). Every draw is seeded by ``(seed, stream, position)``: a pure function of the position.

    Args:
        pixel_counts: (N, C) pixels of each class in each source image (the label info).
        temperature: T (0.01).
        min_pixels: 3000.
        seed, stream: the run's seed and the stream id.
    """

    def __init__(
        self, pixel_counts: np.ndarray, *, temperature: float, min_pixels: int, seed: int, stream: int
    ) -> None:
        counts = np.asarray(pixel_counts, dtype=np.int64)
        self.num_classes = counts.shape[1]
        self.images = [np.flatnonzero(counts[:, c] > min_pixels) for c in range(self.num_classes)]
        totals = counts.sum(0) * np.array([len(i) > 0 for i in self.images])
        if not totals.any():
            raise DataError(
                f"rare-class sampling: no source image has more than {min_pixels} pixels of any class; lower "
                "daformer.rcs_min_pixels or set daformer.rcs=false."
            )
        self.probs = rcs_class_probs(totals, temperature)
        self.seed, self.stream = seed, stream

    def draw(self, position: int) -> tuple[int, int]:
        """(image index, class) at ``position``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, 2, position]))
        c = int(rng.choice(self.num_classes, p=self.probs))
        pool = self.images[c]
        return int(pool[int(rng.integers(len(pool)))]), c

    def __call__(self, begin: int, end: int) -> np.ndarray:
        out = []
        for p in range(begin, end):
            image, c = self.draw(p)
            out.append(image * (self.num_classes + 1) + c + 1)
        return np.asarray(out, dtype=np.int64)

    @staticmethod
    def decode(index: int, num_classes: int) -> tuple[int, int | None]:
        """(image index, class or None) of an encoded stream item (class None: no class-aware crop)."""
        image, c = divmod(int(index), num_classes + 1)
        return image, (c - 1 if c > 0 else None)


# ----------------------------------------------------------------------------------- feature distance


def downscale_label_ratio(labels: Tensor, factor: int, min_ratio: float, num_classes: int) -> Tensor:
    """Labels of ``factor x factor`` patches: the majority class where it covers ``>= min_ratio`` of the patch
    (ignored pixels count as a class of their own), else 255.

    Shape:
        labels (B, H, W) -> (B, H // factor, W // factor) int64.
    """
    x = labels.clone()
    x[x == IGNORE] = num_classes
    onehot = F.one_hot(x.long(), num_classes + 1).permute(0, 3, 1, 2).float()
    share, out = F.avg_pool2d(onehot, kernel_size=factor).max(dim=1)
    out[out == num_classes] = IGNORE
    out[share < min_ratio] = IGNORE
    return out


def feature_distance(
    student: Tensor,
    imagenet: Tensor,
    labels: Tensor,
    *,
    classes: Sequence[int] | None,
    min_ratio: float,
    num_classes: int,
) -> Tensor:
    """DAFormer's ImageNet feature distance: the mean L2 distance between the student's and the frozen
    ImageNet encoder's last feature map, over the feature pixels of ``classes`` (all pixels when None).

    A feature pixel belongs to a class when :func:`downscale_label_ratio` gives it that class. With no such
    pixel the distance is 0 (DAFormer's mean of an empty set would be NaN).

    Shape:
        student, imagenet (B, A, h, w); labels (B, H, W) -> scalar.
    """
    dist = torch.linalg.vector_norm(student.float() - imagenet.float(), dim=1)
    if classes is None:
        return dist.mean()
    factor = max(1, labels.shape[-1] // student.shape[-1])
    small = downscale_label_ratio(labels, factor, min_ratio, num_classes)[..., : dist.shape[-2], : dist.shape[-1]]
    mask = torch.isin(small, torch.tensor(list(classes), device=small.device))
    if not bool(mask.any()):
        return dist.sum() * 0.0
    return dist[mask].mean()


# ---------------------------------------------------------------------------------------------- MIC


def block_mask(shape: tuple[int, int, int], block: int, ratio: float, generator: torch.Generator) -> Tensor:
    """MIC's random patch mask: a grid of ``round(H / block) x round(W / block)`` cells, each kept (1) when
    u ~ U(0, 1) exceeds ``ratio``, upsampled nearest to (H, W).

    Shape:
        shape (B, H, W) -> mask (B, 1, H, W) float32.
    """
    b, h, w = shape
    gh, gw = max(1, round(h / block)), max(1, round(w / block))
    cells = (torch.rand((b, 1, gh, gw), generator=generator) > ratio).float()
    return F.interpolate(cells, size=(h, w), mode="nearest")


# ------------------------------------------------------------------------------------------------ loss


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Pixel-weighted cross entropy as mmseg's decode loss: logits upsampled bilinearly
    (``align_corners=False``) to the labels, per-pixel CE (0 on ignored pixels) times ``weight``, mean over
    all pixels.

    Shape:
        logits (B, C, h, w); labels (B, H, W); weight (B, H, W) or None -> scalar.
    """
    up = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(up, labels, ignore_index=IGNORE, reduction="none")
    if weight is not None:
        loss = loss * weight
    return loss.mean()
