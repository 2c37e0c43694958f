"""Class-balanced source sampling: the release's sub-epoch algorithm, lazy, seeded, resumable, DDP-aware.

The release builds its whole training list up front (40-70 s for 720,000 draws on our 2-core machine, unseeded,
different on every GPU). :class:`ClassBalancedSampler` generates the same kind of stream one
sub-epoch at a time:

- The stream is cut into sub-epochs of 3,000 draws. Within a sub-epoch, ``n_c`` counts the draws
  so far whose file contains class c; ``d = n / sum(n)`` (all zeros at the start);
  ``w_c = 1 / ln(1.01 + d_c)``, normalised; a class c is drawn from w; the next file of c's list
  is taken (the list is walked in a random order and reshuffled when exhausted) and that file's
  classes are added to ``n``.
- Sub-epoch ``e`` depends only on ``(seed, e)``: its class draws and its per-class file orders come
  from generators seeded with ``(seed, e)`` and ``(seed, e, c, pass)``. So the stream is the same
  for every process, any position can be reached by generating at most one sub-epoch, and
  start-up (building the class lists, then 256 draws) does not grow with ``num_samples``.
- Under DDP, rank r of w takes the draws ``start + r, start + r + w, start + r + 2w, ...`` of the
  common stream: the ranks' shares are disjoint and together cover it.

Fixes relative to the release (see docs/data.md): after reshuffling a class list the release
continues at index 1 (``ind % (n - 1)``), so the first file of every reshuffled pass is skipped;
a class with a single file divides by zero (``ind % 0``) the second time it is drawn; a class
with no file crashes with an IndexError. Here a pass always starts at index 0, single-file classes
repeat their file, and classes without files get weight 0. One deliberate difference: the
per-class file order restarts in every sub-epoch instead of carrying the cursor across
sub-epochs, which is what makes positions reachable without replaying the stream.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate, chain

import numpy as np
from torch.utils.data import Sampler

from proca.data.label_info import LabelInfo
from proca.errors import DataError

__all__ = ["SUB_EPOCH_SIZE", "ClassBalancedSampler"]

SUB_EPOCH_SIZE = 3000
_CLASS_STREAM = 0x5EED_C1A5
_FILE_STREAM = 0xF11E_0DE5
_CHUNK = 256  # draws generated per step: the first index costs a fraction of a sub-epoch


class ClassBalancedSampler(Sampler[int]):
    """Yields indices into ``label_info.files``, drawn class-balanced as in the release.

    Args:
        label_info: the source label info (see :func:`proca.data.read_label_info`).
        num_samples: length of the common stream (all ranks together), e.g. iterations x global batch.
        num_classes: number of train ids (19 or 16); larger ids in the label info are ignored.
        seed: stream seed; the same seed gives the same stream on every machine.
        rank: this process's rank under DDP.
        world_size: number of ranks.
        start: position in the common stream to resume from: the number of draws already consumed by
            all ranks together (``iteration * global_batch_size``).
        sub_epoch_size: draws per sub-epoch (3000 in the release).

    ``len(self)`` is ``ceil((num_samples - start) / world_size)`` for every rank; where
    ``num_samples - start`` is not a multiple of ``world_size`` the last ranks read a few draws past
    ``num_samples`` (the stream is endless), so every rank yields the same number of indices.
    """

    def __init__(
        self,
        label_info: LabelInfo,
        num_samples: int,
        *,
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        sub_epoch_size: int = SUB_EPOCH_SIZE,
    ) -> None:
        if num_samples < 0 or start < 0:
            raise ValueError(f"num_samples and start must be >= 0, got {num_samples} and {start}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_classes < 1 or sub_epoch_size < 1:
            raise ValueError("num_classes and sub_epoch_size must be positive")
        self.num_samples = int(num_samples)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.start = int(start)
        self.sub_epoch_size = int(sub_epoch_size)
        self.files = list(label_info.files)

        # Membership matrix (N files x C classes), built vectorised: start-up must stay well under 0.2 s.
        mapping = label_info.file_to_classes
        lists = [mapping.get(name, ()) for name in self.files]
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
        keep = (flat >= 0) & (flat < num_classes)
        member = np.zeros((len(lists), num_classes), dtype=bool)
        member[rows[keep], flat[keep]] = True
        self._member = member
        self._file_classes: dict[int, tuple[int, ...]] = {}
        self._class_files = [np.flatnonzero(member[:, c]) for c in range(num_classes)]
        self._available = [len(f) > 0 for f in self._class_files]
        if not any(self._available):
            raise DataError(
                f"the label info ({len(self.files)} files) has no file with a train id below {num_classes}; "
                "check that it was made for this dataset and class set"
            )
        self._state: _SubEpoch | None = None

    def __len__(self) -> int:
        remaining = max(0, self.num_samples - self.start)
        return -(-remaining // self.world_size)

    def __iter__(self) -> Iterator[int]:
        for j in range(len(self)):
            yield self.draw(self.start + self.rank + j * self.world_size)

    def draw(self, position: int) -> int:
        """File index at ``position`` of the common stream."""
        e, k = divmod(position, self.sub_epoch_size)
        return int(self._sub_epoch(e, k + 1)[k])

    def stream(self, begin: int, end: int) -> np.ndarray:
        """File indices of the common stream at positions ``begin .. end - 1``. Shape: (end - begin,)."""
        out = np.empty(max(0, end - begin), dtype=np.int64)
        pos = begin
        while pos < end:
            e, k = divmod(pos, self.sub_epoch_size)
            take = min(self.sub_epoch_size - k, end - pos)
            out[pos - begin : pos - begin + take] = self._sub_epoch(e, k + take)[k : k + take]
            pos += take
        return out

    def _sub_epoch(self, e: int, upto: int) -> np.ndarray:
        """The draws of sub-epoch ``e``, generated at least up to ``upto`` (in chunks). Shape: (sub_epoch_size,)."""
        state = self._state
        if state is None or state.epoch != e:
            state = self._state = _SubEpoch(self, e)
        if state.filled < upto:
            state.advance(min(self.sub_epoch_size, max(upto, state.filled + _CHUNK)))
        return state.out

    def _order(self, e: int, c: int, p: int) -> np.ndarray:
        files = self._class_files[c]
        if len(files) == 1:
            return files
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, e, c, p, _FILE_STREAM])))
        return files[rng.permutation(len(files))]

    def class_draw_frequencies(self, begin: int, end: int) -> np.ndarray:
        """Fraction of draws in ``begin .. end - 1`` whose file contains each class. Shape: (C,)."""
        draws = self.stream(begin, end)
        return self._member[draws].sum(axis=0) / max(1, len(draws))


class _SubEpoch:
    """The generation state of one sub-epoch: class counts, per-class file orders and cursors."""

    def __init__(self, sampler: ClassBalancedSampler, epoch: int) -> None:
        self.sampler = sampler
        self.epoch = epoch
        n = sampler.num_classes
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([sampler.seed, epoch, _CLASS_STREAM])))
        self.uniforms = rng.random(sampler.sub_epoch_size).tolist()
        self.out = np.empty(sampler.sub_epoch_size, dtype=np.int64)
        self.filled = 0
        self.counts = [0] * n
        self.total = 0
        self.cursor = [0] * n
        self.passes = [0] * n
        self.orders: list[np.ndarray | None] = [None] * n
        self.uniform_cum = list(accumulate(1.0 if a else 0.0 for a in sampler._available))
        self.last_available = max(j for j in range(n) if sampler._available[j])

    def advance(self, upto: int) -> None:
        """Generate draws ``filled .. upto - 1`` (the release's inner loop, with its bugs fixed)."""
        sampler = self.sampler
        available, file_classes, member = sampler._available, sampler._file_classes, sampler._member
        counts, cursor, orders, out, uniforms = self.counts, self.cursor, self.orders, self.out, self.uniforms
        total = self.total
        log = math.log
        for i in range(self.filled, upto):
            if total == 0:
                cum = self.uniform_cum
            else:
                inv = 1.0 / total
                cum = list(
                    accumulate(1.0 / log(1.01 + n * inv) if a else 0.0 for n, a in zip(counts, available, strict=True))
                )
            c = bisect_right(cum, uniforms[i] * cum[-1])
            if c >= len(counts):  # u * sum rounded up to the last edge
                c = self.last_available
            order = orders[c]
            if order is None or cursor[c] >= len(order):
                if order is not None:
                    self.passes[c] += 1
                order = orders[c] = sampler._order(self.epoch, c, self.passes[c])
                cursor[c] = 0  # a new pass starts at its first file (the release starts at index 1)
            f = int(order[cursor[c]])
            cursor[c] += 1
            out[i] = f
            classes = file_classes.get(f)
            if classes is None:
                classes = file_classes[f] = tuple(np.flatnonzero(member[f]).tolist())
            for cc in classes:
                counts[cc] += 1
            total += len(classes)
        self.total = total
        self.filled = upto
