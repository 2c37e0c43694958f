"""Peak memory and time of predicting a huge photo (banded output, tiled network input) against a normal one.

Each case runs ``proca.predict`` (the code path of ``proca infer`` and ``proca eval``) in its own
process on a random-weight ``deeplabv2_resnet18`` checkpoint whose evaluation size is ``--reference``;
the photo file is written before the timed call. Reported: wall seconds of the call and its extra peak
memory (peak resident set size during the call minus the resident size just before it; Linux VmHWM,
reset through ``/proc/self/clear_refs``).

Cases:
- ``normal``: a 1024x2048 JPEG, default input (the reference pixel count at the photo's aspect ratio);
- ``huge``: an 8000x8000 JPEG, default input: the (C, 8000, 8000) probabilities are never held, the
  argmax is taken a band of rows at a time;
- ``huge-tiled``: the same photo with ``input_size=(2304, 2304)``, over ``proca.config.TILE_PIXEL_LIMIT``:
  the network runs on overlapping 1024x1024 windows.

Usage: ``python benchmarks/bench_tiles.py [--threads 2] [--reference 256x512] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "normal": ((1024, 2048), None),
    "huge": ((8000, 8000), None),
    "huge-tiled": ((8000, 8000), (2304, 2304)),
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _photo(path: Path, size: tuple[int, int]) -> None:
    import numpy as np
    from PIL import Image

    h, w = size
    rows = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    rgb = np.stack([rows + 0 * cols, 0 * rows + cols, (rows + cols) / 2], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


def run_case(name: str, folder: Path, threads: int, reference: tuple[int, int]) -> dict[str, object]:
    import torch

    import proca
    from proca.models import build_model, save_model
    from proca.models.checkpoint import load_model

    torch.set_num_threads(threads)
    size, input_size = CASES[name]
    photo = folder / f"{size[0]}x{size[1]}.jpg"
    if not photo.is_file():
        _photo(photo, size)
    ckpt = folder / "tiny.safetensors"
    if not ckpt.is_file():
        torch.manual_seed(0)
        model = build_model("deeplabv2_resnet18", num_classes=19)
        save_model(model, ckpt, metadata={"eval_input_size": list(reference), "class_set": "cityscapes19"})
    load_model(ckpt)  # warm the imports and the reader
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    ids = proca.predict(ckpt, photo, input_size=input_size)
    seconds = time.perf_counter() - start
    peak = _rss_kib("VmHWM")
    assert ids.shape == size
    return {
        "case": name,
        "photo": f"{size[0]}x{size[1]}",
        "input_size": None if input_size is None else f"{input_size[0]}x{input_size[1]}",
        "seconds": round(seconds, 2),
        "extra_peak_mib": round((peak - before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", default="256x512", help="the checkpoint's eval_input_size HxW")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    reference = tuple(int(v) for v in args.reference.split("x"))
    assert len(reference) == 2
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.folder), args.threads, reference)))  # type: ignore[arg-type]
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="proca-tiles-") as folder:
        for name in CASES:
            cmd = [sys.executable, __file__, "--case", name, "--folder", folder]
            cmd += ["--threads", str(args.threads), "--reference", args.reference]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=dict(os.environ)).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
    load = os.getloadavg()[0]
    print(f"1-minute load average at the end: {load:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "load_average": load}, indent=2) + "\n")


if __name__ == "__main__":
    main()
