"""Memory-bank variant of ProCA: a projection head, per-class queues and a supervised contrastive loss.

Anchor pixels (per class, half mispredicted "hard", half correctly predicted "easy") are contrasted
against per-class queues of stored pixel embeddings and of stored class means. Positives are the bank
entries of the anchor's class; every other valid bank entry is a negative. Empty queue slots never
take part. See ``docs/memory_bank.md`` for the released script's defects and what is done instead.

Shape names: B batch, D embedding channels, A backbone feature channels, C classes, H/W height/width,
N pixels, M anchors, K bank entries, S queue slots per class.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.errors import DataError

__all__ = [
    "MemoryBank",
    "MemoryBankContrastiveLoss",
    "ProjectionHead",
    "memory_bank_contrastive_loss",
    "sample_anchors",
]

Denominator = Literal["all", "negatives"]


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16 inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _flatten(embeddings: Tensor, labels: Tensor, name: str = "labels") -> tuple[Tensor, Tensor]:
    """(B, D, H, W) + (B, H, W) or (N, D) + (N,) -> (N, D) + (N,)."""
    if embeddings.dim() == 4:
        b, d, h, w = embeddings.shape
        if labels.shape != (b, h, w):
            raise ValueError(
                f"{name} must have shape (B, H, W) = {(b, h, w)} to match embeddings {tuple(embeddings.shape)}, "
                f"got {tuple(labels.shape)}; downsample them to the embedding resolution first."
            )
        return embeddings.permute(0, 2, 3, 1).reshape(-1, d), labels.reshape(-1)
    if embeddings.dim() == 2:
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"{name} must have shape (N,) = ({embeddings.shape[0]},) to match embeddings "
                f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}."
            )
        return embeddings, labels
    raise ValueError(f"embeddings must be (B, D, H, W) or (N, D), got shape {tuple(embeddings.shape)}.")


def _random_keys(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """n uniform keys in [0, 1) from ``generator`` (or the global RNG), on ``device``."""
    if generator is None:
        return torch.rand(n, device=device)
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _take_per_group(groups: Tensor, quota: Tensor, generator: torch.Generator | None) -> Tensor:
    """Indices of a uniformly random subset of ``quota[g]`` elements of every group ``g``.

    Args:
        groups: group id of each element, in ``[0, G)``.
        quota: how many to take from each group (at most the group's size).
        generator: source of randomness; None uses torch's global RNG.

    Returns:
        Indices into ``groups``, ordered by group.

    Shape:
        groups (N,), quota (G,) -> (sum(quota),).
    """
    n = groups.numel()
    if n == 0:
        return groups.new_zeros(0, dtype=torch.long)
    shuffle = torch.argsort(_random_keys(n, groups.device, generator))
    order = shuffle[torch.sort(groups[shuffle], stable=True).indices]
    sorted_groups = groups[order]
    sizes = torch.bincount(groups, minlength=quota.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(n, device=groups.device) - starts[sorted_groups]
    return order[rank < quota[sorted_groups]]


def _check_labels(labels: Tensor, num_classes: int, ignore_index: int, name: str) -> None:
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise DataError(
            f"{name} holds the value {value}; valid values are 0..{num_classes - 1} and {ignore_index} (ignore)."
        )


class ProjectionHead(nn.Module):
    """1x1 conv, BatchNorm, ReLU, 1x1 conv, L2-normalised over channels (as released).

    Args:
        in_channels: backbone feature channels A (2048 for ResNets, 1024 for the release's VGG).
        hidden_channels: channels of the hidden layer.
        out_channels: embedding channels D.

    Shape:
        (B, A, H, W) -> (B, D, H, W), unit L2 norm along D (float32, float64 kept).
    """

    def __init__(self, in_channels: int = 2048, hidden_channels: int = 2048, out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1),
            nn.BatchNorm2d(hidden_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1),
        )

    def forward(self, features: Tensor) -> Tensor:
        out = self.proj(features)
        return F.normalize(out.to(_math_dtype(out.dtype)), p=2, dim=1)


def sample_anchors(
    embeddings: Tensor,
    labels: Tensor,
    predictions: Tensor | None,
    *,
    max_per_class: int,
    min_pixels: int = 1,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample anchor pixels per class, half hard (mispredicted) and half easy (correctly predicted).

    A class with ``n`` labelled pixels gives ``min(max_per_class, n)`` anchors: ``k // 2`` hard and the
    rest easy; when a class has too few of one kind the other kind fills the gap, and a class with fewer
    than ``min_pixels`` labelled pixels (in particular, none) is skipped. Pixels are drawn uniformly
    without replacement over the whole batch.

    Args:
        embeddings: pixel embeddings.
        labels: class per pixel (ground truth or pseudo label); ``ignore_index`` is skipped.
        predictions: predicted class per pixel; None treats every labelled pixel as easy.
        max_per_class: at most this many anchors per class.
        min_pixels: classes with fewer labelled pixels are skipped (the release uses 11).
        ignore_index: label value to skip.
        generator: source of randomness; None uses torch's global RNG.

    Returns:
        ``(anchors, anchor_labels)``, grouped by class (hard before easy within a class).

    Shape:
        embeddings (B, D, H, W) or (N, D); labels and predictions (B, H, W) or (N,)
        -> anchors (M, D), anchor_labels (M,).
    """
    if max_per_class < 0:
        raise ValueError(f"max_per_class must be >= 0, got {max_per_class}.")
    flat, lab = _flatten(embeddings, labels)
    pred = lab if predictions is None else _flatten(embeddings, predictions, "predictions")[1]
    valid = (lab != ignore_index) & (lab >= 0)
    index = torch.nonzero(valid).squeeze(1)
    lab = lab[index].long()
    num_classes = int(lab.max()) + 1 if lab.numel() else 1
    easy = (pred[index] == lab).long()
    groups = 2 * lab + easy  # 2c: hard pixels of class c, 2c + 1: easy ones
    counts = torch.bincount(groups, minlength=2 * num_classes).view(num_classes, 2)
    n_hard, n_easy = counts[:, 0], counts[:, 1]
    total = n_hard + n_easy
    want = torch.clamp(total, max=max_per_class) * (total >= max(min_pixels, 1))
    keep_hard = torch.minimum(n_hard, want // 2)
    keep_easy = torch.minimum(n_easy, want - keep_hard)
    keep_hard = torch.minimum(n_hard, want - keep_easy)
    quota = torch.stack([keep_hard, keep_easy], dim=1).reshape(-1)
    chosen = index[_take_per_group(groups, quota, generator)]
    return flat[chosen], labels.reshape(-1)[chosen].long()


def memory_bank_contrastive_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    bank_embeddings: Tensor,
    bank_labels: Tensor,
    *,
    temperature: float = 0.1,
    base_temperature: float | None = None,
    denominator: Denominator = "all",
) -> Tensor:
    """Supervised contrastive loss of anchors against a bank of labelled embeddings.

    For anchor ``i`` with logits ``l_ik = <a_i, b_k> / temperature`` and positives ``P(i)`` (bank
    entries of its class), the anchor's loss is ``-(temperature / base_temperature) * mean_{p in P(i)}
    log(exp(l_ip) / Z_ip)`` with ``Z_ip = sum_k exp(l_ik)`` over all valid entries (``denominator="all"``,
    SupCon) or ``Z_ip = exp(l_ip) + sum_{n not in P(i)} exp(l_in)`` (``"negatives"``, the released
    formula). The result is the mean over anchors with at least one positive; with no such anchor (or an
    empty bank) it is a zero that still backpropagates. Bank entries with a negative label are invalid
    and ignored. The math runs in float32 (float64 kept), outside autocast.

    Args:
        anchors: anchor embeddings (normally L2-normalised).
        anchor_labels: class of each anchor.
        bank_embeddings: stored embeddings (normally detached).
        bank_labels: class of each stored embedding; < 0 marks an empty slot.
        temperature: softmax temperature.
        base_temperature: loss scale reference; None means ``temperature`` (scale 1).
        denominator: ``"all"`` or ``"negatives"``, see above.

    Returns:
        Scalar loss.

    Shape:
        anchors (M, D), anchor_labels (M,), bank_embeddings (K, D), bank_labels (K,) -> ().
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if denominator not in ("all", "negatives"):
        raise ValueError(f"denominator must be 'all' or 'negatives', got {denominator!r}.")
    if anchors.dim() != 2 or bank_embeddings.dim() != 2 or anchors.shape[1] != bank_embeddings.shape[1]:
        raise ValueError(
            f"anchors (M, D) and bank_embeddings (K, D) must share D, got {tuple(anchors.shape)} and "
            f"{tuple(bank_embeddings.shape)}."
        )
    scale = temperature / (temperature if base_temperature is None else base_temperature)
    zero = (anchors * 0.0).sum()
    valid = bank_labels >= 0
    if not bool(valid.all()):
        bank_embeddings, bank_labels = bank_embeddings[valid], bank_labels[valid]
    if anchors.shape[0] == 0 or bank_embeddings.shape[0] == 0:
        return zero + (bank_embeddings * 0.0).sum()
    dtype = _math_dtype(torch.promote_types(anchors.dtype, bank_embeddings.dtype))
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        logits = anchors.to(dtype) @ bank_embeddings.to(dtype).T / temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        positive = anchor_labels.view(-1, 1) == bank_labels.view(1, -1)
        if denominator == "all":
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        else:
            exp = torch.exp(logits)
            negatives = (exp * ~positive).sum(dim=1, keepdim=True)
            log_prob = logits - torch.log((exp + negatives).clamp_min(torch.finfo(dtype).tiny))
        num_pos = positive.sum(dim=1)
        mean_log_prob = (log_prob * positive).sum(dim=1) / num_pos.clamp(min=1)
        has_pos = (num_pos > 0).to(dtype)
        loss = -scale * (mean_log_prob * has_pos).sum() / has_pos.sum().clamp(min=1)
    return loss + zero


class MemoryBank(nn.Module):
    """Per-class ring queues of pixel embeddings and of class-mean embeddings.

    Every :meth:`enqueue` stores, per class present in the batch, ``pixels_per_class`` randomly chosen
    pixel embeddings (fewer if the class has fewer pixels) and one class mean (L2-normalised). Each
    class's ring pointer advances by the number of entries stored and wraps; ``*_filled`` counts the
    valid slots so empty ones are never returned. Under an initialised ``torch.distributed`` the
    entries are gathered from all ranks (pixels: rank order; class means: over all ranks' pixels), so
    every rank's bank stays identical; every rank must then call :meth:`enqueue` the same number of times.
    All state is in buffers (``state_dict()`` resumes it, ``.to()`` moves it).

    Args:
        num_classes: number of classes C.
        dim: embedding channels D.
        pixel_queue_size: pixel slots per class.
        prototype_queue_size: class-mean slots per class.
        pixels_per_class: pixels stored per class per step (per rank under torch.distributed).
        ignore_index: label value never stored.

    Shape:
        pixel_queue (C, S, D), prototype_queue (C, S', D); pointers and fill counts (C,).
    """

    pixel_queue: Tensor
    pixel_ptr: Tensor
    pixel_filled: Tensor
    prototype_queue: Tensor
    prototype_ptr: Tensor
    prototype_filled: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        *,
        pixel_queue_size: int = 1000,
        prototype_queue_size: int = 1000,
        pixels_per_class: int = 10,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("dim", dim),
            ("pixel_queue_size", pixel_queue_size),
            ("prototype_queue_size", prototype_queue_size),
        ):
            if value < 1:
                raise ValueError(f"MemoryBank {name} must be >= 1, got {value}.")
        if pixels_per_class < 0:
            raise ValueError(f"MemoryBank pixels_per_class must be >= 0, got {pixels_per_class}.")
        self.num_classes = num_classes
        self.dim = dim
        self.pixels_per_class = pixels_per_class
        self.ignore_index = ignore_index
        self.register_buffer("pixel_queue", torch.zeros(num_classes, pixel_queue_size, dim))
        self.register_buffer("pixel_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("pixel_filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("prototype_queue", torch.zeros(num_classes, prototype_queue_size, dim))
        self.register_buffer("prototype_ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("prototype_filled", torch.zeros(num_classes, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, pixel_queue_size={self.pixel_queue.shape[1]}, "
            f"prototype_queue_size={self.prototype_queue.shape[1]}, pixels_per_class={self.pixels_per_class}"
        )

    def reset(self) -> None:
        """Empty both queues."""
        for buf in (self.pixel_queue, self.pixel_ptr, self.pixel_filled):
            buf.zero_()
        for buf in (self.prototype_queue, self.prototype_ptr, self.prototype_filled):
            buf.zero_()

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor, *, generator: torch.Generator | None = None) -> None:
        """Store random pixels and the mean embedding of every class present (detached, float32).

        Args:
            embeddings: pixel embeddings.
            labels: class per pixel; ``ignore_index`` pixels are never stored.
            generator: source of randomness; None uses torch's global RNG.

        Shape:
            embeddings (B, D, H, W) or (N, D); labels (B, H, W) or (N,).
        """
        flat, lab = _flatten(embeddings.detach(), labels)
        if flat.shape[1] != self.dim:
            raise ValueError(f"MemoryBank of dim {self.dim} got embeddings with {flat.shape[1]} channels.")
        _check_labels(lab, self.num_classes, self.ignore_index, "MemoryBank.enqueue labels")
        device = self.pixel_queue.device
        flat = flat.to(device=device, dtype=self.pixel_queue.dtype)
        lab = lab.to(device)
        c, k, d = self.num_classes, self.pixels_per_class, self.dim
        index = torch.nonzero(lab != self.ignore_index).squeeze(1)
        lab = lab[index].long()
        counts = torch.bincount(lab, minlength=c)
        sums = flat.new_zeros(c, d).index_add_(0, lab, flat[index])
        # this rank's chosen pixels, padded to (C, k, D) so that ranks can gather equal shapes
        stored = torch.clamp(counts, max=k)
        picked = _take_per_group(lab, stored, generator)  # grouped by class
        picked_labels = lab[picked]
        padded = flat.new_zeros(c, k, d)
        padded[picked_labels, self._rank_in_class(picked_labels, c)] = flat[index[picked]]
        padded, stored, sums, counts = self._gather(padded, stored, sums, counts)
        # pixels: (W, C, k, D) -> per class, rank-major
        slot = torch.arange(k, device=device)
        mask = (slot.view(1, 1, k) < stored.unsqueeze(-1)).transpose(0, 1)  # (C, W, k)
        pixel_entries = padded.transpose(0, 1)[mask]
        pixel_labels = torch.arange(c, device=device).view(c, 1, 1).expand_as(mask)[mask]
        self._write(self.pixel_queue, self.pixel_ptr, self.pixel_filled, pixel_entries, pixel_labels)
        present = torch.nonzero(counts > 0).squeeze(1)
        means = F.normalize(sums[present] / counts[present].unsqueeze(1).to(sums.dtype), p=2, dim=1)
        self._write(self.prototype_queue, self.prototype_ptr, self.prototype_filled, means, present)

    @staticmethod
    def _rank_in_class(labels: Tensor, num_classes: int) -> Tensor:
        """Position of each element among the elements of its class; ``labels`` must be grouped by class."""
        sizes = torch.bincount(labels, minlength=num_classes)
        starts = torch.cumsum(sizes, 0) - sizes
        return torch.arange(labels.numel(), device=labels.device) - starts[labels]

    @staticmethod
    def _gather(*tensors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Stack per-rank pixel selections along a new rank axis; sum class sums and counts over ranks."""
        padded, stored, sums, counts = tensors
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return padded.unsqueeze(0), stored.unsqueeze(0), sums, counts
        world = dist.get_world_size()
        all_padded = [torch.empty_like(padded) for _ in range(world)]
        all_stored = [torch.empty_like(stored) for _ in range(world)]
        dist.all_gather(all_padded, padded.contiguous())
        dist.all_gather(all_stored, stored.contiguous())
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        return torch.stack(all_padded), torch.stack(all_stored), sums, counts

    @staticmethod
    def _write(queue: Tensor, ptr: Tensor, filled: Tensor, entries: Tensor, labels: Tensor) -> None:
        """Write ``entries`` (grouped by class) into the class rings, advancing each pointer by its count."""
        size = queue.shape[1]
        n = torch.bincount(labels, minlength=queue.shape[0])
        rank = MemoryBank._rank_in_class(labels, queue.shape[0])
        keep = rank >= n[labels] - size  # more than ``size`` entries for a class: only the last ones survive
        labels, rank, entries = labels[keep], rank[keep], entries[keep]
        queue[labels, (ptr[labels] + rank) % size] = entries.to(queue.dtype)
        ptr.copy_((ptr + n) % size)
        filled.copy_(torch.clamp(filled + n, max=size))

    @staticmethod
    def _valid(queue: Tensor, filled: Tensor) -> tuple[Tensor, Tensor]:
        c, size, _ = queue.shape
        mask = torch.arange(size, device=queue.device).view(1, size) < filled.view(c, 1)
        labels = torch.arange(c, device=queue.device).view(c, 1).expand(c, size)
        return queue[mask], labels[mask]

    def pixel_entries(self) -> tuple[Tensor, Tensor]:
        """Valid pixel-queue entries and their classes. Shape: (K, D), (K,)."""
        return self._valid(self.pixel_queue, self.pixel_filled)

    def prototype_entries(self) -> tuple[Tensor, Tensor]:
        """Valid class-mean-queue entries and their classes. Shape: (K, D), (K,)."""
        return self._valid(self.prototype_queue, self.prototype_filled)

    def entries(self) -> tuple[Tensor, Tensor]:
        """Valid entries of both queues (pixels first), the contrast set of the loss. Shape: (K, D), (K,)."""
        pix, pix_labels = self.pixel_entries()
        proto, proto_labels = self.prototype_entries()
        return torch.cat([pix, proto]), torch.cat([pix_labels, proto_labels])


class MemoryBankContrastiveLoss(nn.Module):
    """Sample anchors, contrast them against a :class:`MemoryBank` (pixel and class-mean queues together).

    The module does not update the bank: call ``bank.enqueue(embeddings.detach(), labels)`` after the
    loss, so that anchors are not contrasted with copies of themselves.

    Args:
        temperature: softmax temperature.
        base_temperature: loss scale reference; None means ``temperature``.
        max_anchors_per_class: anchors per class (the release: 10).
        min_pixels_per_class: classes with fewer labelled pixels give no anchor (the release: 11).
        ignore_index: label value to skip.
        denominator: ``"all"`` (SupCon) or ``"negatives"`` (the released formula); see
            :func:`memory_bank_contrastive_loss`.

    Shape:
        embeddings (B, D, H, W), labels and predictions (B, H, W) -> ().
    """

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        base_temperature: float | None = None,
        max_anchors_per_class: int = 10,
        min_pixels_per_class: int = 11,
        ignore_index: int = 255,
        denominator: Denominator = "all",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if denominator not in ("all", "negatives"):
            raise ValueError(f"denominator must be 'all' or 'negatives', got {denominator!r}.")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.max_anchors_per_class = max_anchors_per_class
        self.min_pixels_per_class = min_pixels_per_class
        self.ignore_index = ignore_index
        self.denominator: Denominator = denominator

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"max_anchors_per_class={self.max_anchors_per_class}, "
            f"min_pixels_per_class={self.min_pixels_per_class}, denominator={self.denominator!r}"
        )

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        bank: MemoryBank,
        predictions: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Loss of anchors sampled from ``embeddings`` against ``bank``'s valid entries.

        Args:
            embeddings: projection-head output.
            labels: class per pixel at the embedding resolution (ground truth or pseudo label).
            bank: the memory bank (read only here).
            predictions: argmax of the segmentation logits at the embedding resolution; None (e.g. for
                pseudo labels, which are the prediction) treats every labelled pixel as easy.
            generator: source of randomness for the anchor sampling.
        """
        anchors, anchor_labels = sample_anchors(
            embeddings,
            labels,
            predictions,
            max_per_class=self.max_anchors_per_class,
            min_pixels=self.min_pixels_per_class,
            ignore_index=self.ignore_index,
            generator=generator,
        )
        bank_embeddings, bank_labels = bank.entries()
        loss = memory_bank_contrastive_loss(
            anchors,
            anchor_labels,
            bank_embeddings,
            bank_labels,
            temperature=self.temperature,
            base_temperature=self.base_temperature,
            denominator=self.denominator,
        )
        return loss + (embeddings * 0.0).sum()
