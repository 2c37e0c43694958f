"""Data pipeline benchmarks: label remapping, sampler start-up, label-info throughput.

    python benchmarks/bench_data.py                      # everything (about 1-2 minutes on 2 cores)
    python benchmarks/bench_data.py --draws 72000        # shorter eager-list baseline

1. Remapping one 1052x1914 GTA5 label (Cityscapes label ids -> 19 train ids): proca's lookup table
   vs a Python loop over the 19 classes (``out[label == k] = v``, as the release does).
2. Class-balanced sampling for 720,000 draws: start-up of ``ClassBalancedSampler`` (construction +
   first index) vs building the whole list eagerly, one ``np.random.choice`` per draw (the release's
   way). Uses ../shared/reference/gtav_label_info.p when present, else a synthetic label info with
   the same size and class frequencies.
3. ``build_label_info`` throughput on generated 1052x1914 palette label PNGs with 1 and N workers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from proca.data.classes import CITYSCAPES_19
from proca.data.label_info import LabelInfo, build_label_info, read_label_info
from proca.data.sampler import ClassBalancedSampler

GTA5_HW = (1052, 1914)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "gtav_label_info.p"


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_remap(repeat: int) -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 34, GTA5_HW, dtype=np.uint8)
    lut = CITYSCAPES_19.lookup_table("gtav")
    pairs = [(int(k), int(v)) for k, v in enumerate(lut) if v != 255]

    def loop() -> np.ndarray:
        out = np.full(label.shape, 255, dtype=np.float32)
        for k, v in pairs:
            out[label == k] = v
        return out

    assert np.array_equal(loop().astype(np.uint8), lut[label])
    t_lut = _best(lambda: lut[label], repeat)
    t_loop = _best(loop, repeat)
    print(f"remap 1052x1914 label: lookup table {t_lut * 1e3:.2f} ms, per-class loop {t_loop * 1e3:.2f} ms "
          f"({t_loop / t_lut:.0f}x)")  # fmt: skip


def _synthetic_info() -> LabelInfo:
    # 24,966 files with GTA5's per-class image frequencies (road .. bicycle).
    freq = [0.993, 0.973, 0.998, 0.956, 0.842, 0.992, 0.743, 0.604, 0.993, 0.979, 0.992, 0.939, 0.131, 0.917,
            0.669, 0.203, 0.045, 0.168, 0.018]  # fmt: skip
    rng = np.random.default_rng(0)
    member = rng.random((24966, 19)) < np.array(freq)
    files = [f"{i + 1:05d}.png" for i in range(24966)]
    return LabelInfo(
        files=files, file_to_classes={f: np.flatnonzero(m).tolist() for f, m in zip(files, member, strict=True)}
    )


def _eager_list(info: LabelInfo, draws: int, num_classes: int = 19, sub_epoch: int = 3000) -> list[str]:
    """The release's way: the whole list up front, one np.random.choice per draw."""
    per_class = info.class_to_files(num_classes)
    cursor = [0] * num_classes
    out: list[str] = []
    for _ in range(-(-draws // sub_epoch)):
        counts = np.zeros(num_classes)
        for _ in range(sub_epoch):
            d = counts / counts.sum() if counts.sum() > 0 else counts
            w = 1.0 / np.log(1.01 + d)
            c = int(np.random.choice(num_classes, p=w / w.sum()))
            if cursor[c] >= len(per_class[c]):
                np.random.shuffle(per_class[c])
                cursor[c] = 0
            name = per_class[c][cursor[c]]
            cursor[c] += 1
            out.append(name)
            counts[info.file_to_classes[name]] += 1
    return out[:draws]


def bench_sampler(draws: int) -> None:
    if REFERENCE.is_file():
        info, source = read_label_info(REFERENCE), "release gtav_label_info.p"
    else:
        info, source = _synthetic_info(), "synthetic GTA5-like label info"
    starts = []
    for _ in range(5):
        t0 = time.perf_counter()
        sampler = ClassBalancedSampler(info, 720_000, num_classes=19, seed=0)
        next(iter(sampler))
        starts.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    sampler.stream(0, 720_000)
    t_all = time.perf_counter() - t0
    np.random.seed(0)
    t0 = time.perf_counter()
    _eager_list(info, draws)
    t_eager = time.perf_counter() - t0
    note = "" if draws == 720_000 else f" (measured {draws} draws, scaled x{720_000 / draws:.0f})"
    print(f"sampler ({source}): start-up {min(starts) * 1e3:.0f} ms (median {np.median(starts) * 1e3:.0f} ms); "
          f"all 720,000 draws lazily {t_all:.1f} s; eager list {t_eager * 720_000 / draws:.1f} s{note}")  # fmt: skip


def bench_label_info(num_files: int, workers: int) -> None:
    rng = np.random.default_rng(0)
    palette = np.zeros((256, 3), np.uint8)
    palette[:19] = CITYSCAPES_19.colors
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gtav"
        (root / "labels").mkdir(parents=True)
        # blocky labels compress like real ones (random noise would make decoding unrealistically slow)
        for i in range(num_files):
            small = rng.integers(0, 34, (GTA5_HW[0] // 16 + 1, GTA5_HW[1] // 16 + 1), dtype=np.uint8)
            lab = np.kron(small, np.ones((16, 16), np.uint8))[: GTA5_HW[0], : GTA5_HW[1]]
            img = Image.fromarray(lab, mode="P")
            img.putpalette(palette.reshape(-1).tolist())
            img.save(root / "labels" / f"{i + 1:05d}.png")
        results = []
        for w in sorted({1, workers}):
            build_label_info("gtav", root, workers=w)  # warm: start the worker server, fill the page cache
            t0 = time.perf_counter()
            build_label_info("gtav", root, workers=w)
            dt = time.perf_counter() - t0
            results.append(f"{w} worker{'s' if w > 1 else ''}: {num_files / dt:.0f} files/s")
        print(f"label info, {num_files} labels of 1052x1914: " + ", ".join(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--draws", type=int, default=720_000, help="draws of the eager-list baseline")
    parser.add_argument("--files", type=int, default=200, help="label files for the label-info benchmark")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=["remap", "sampler", "label-info"])
    args = parser.parse_args()
    if args.only in (None, "remap"):
        bench_remap(args.repeat)
    if args.only in (None, "sampler"):
        bench_sampler(args.draws)
    if args.only in (None, "label-info"):
        bench_label_info(args.files, args.workers)


if __name__ == "__main__":
    main()
