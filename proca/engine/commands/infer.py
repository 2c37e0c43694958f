"""``proca infer``: segment your own photos (any size, files, folders or globs).

Each photo is resized to the network input (by default the checkpoint's evaluation pixel count at the
photo's own aspect ratio; ``--input-size`` forces one size), predicted at one or more scales (+ flip), and
the prediction is upsampled to the photo's own size. Photos of equal size share a forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from proca.data.classes import ClassSet
from proca.engine.device import resolve_device
from proca.engine.encode import INFER_FORMATS, check_format, save_prediction
from proca.engine.loop import AsyncWriter, PreparedDataset, default_num_workers, iterate_batches
from proca.engine.predict import aspect_input_size, check_eval_size, eval_input_size, load_for_inference, predict_ids
from proca.engine.progress import ProgressBar
from proca.errors import ConfigError, DataError
from proca.io import check_new_files

__all__ = ["INFER_FORMATS", "output_name", "run_infer"]


def output_name(name: str, path: str) -> str:
    """Relative output name (without suffix) of an input: the dataset's name, else the file's stem."""
    candidate = Path(name) if name else Path(Path(path).stem)
    if candidate.is_absolute() or ".." in candidate.parts or not candidate.parts:
        candidate = Path(Path(path).stem or "image")
    if candidate.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}:
        candidate = candidate.with_suffix("")
    return candidate.as_posix()


def _size_key(path: str) -> tuple[int, int]:
    from proca.data._decode import image_header_size

    return image_header_size(path) or (0, 0)  # refuses a too large image before any work


def _save(train_ids: np.ndarray, path: Path, class_set: ClassSet, fmt: str, photo: np.ndarray | None) -> None:
    save_prediction(train_ids, path, class_set, fmt, photo=photo)


def run_infer(
    checkpoint: Path,
    inputs: Sequence[str],
    *,
    out: Path,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fmt: str = "color",
    input_size: tuple[int, int] | None = None,
    device: str = "auto",
    batch_size: int = 1,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Predict every input image and write ``out/<name>.png`` in ``fmt``.

    Output names follow the inputs: ``photo.jpg`` -> ``out/photo.png``; images found inside a folder keep
    their path relative to it (the dataset makes colliding names unique with ``-2``, ``-3``; any clash left
    gets ``_1``, ``_2`` ...). Images inside ``out`` are never inputs (so a later run does not read its own
    predictions back). Prediction files that exist already are refused before any work unless ``force``.

    Returns:
        The files written, in input order.
    """
    from proca.data.datasets import ImageFolderDataset
    from proca.io import check_writable

    check_format(fmt, INFER_FORMATS)
    if not inputs:
        raise DataError("no inputs given; name image files, folders or glob patterns.")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the predictions (new or existing).")
    check_writable(out, "--out", folder=True)
    dataset = ImageFolderDataset(list(inputs), exclude=[out])
    if len(dataset) == 0:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}; give image files, folders or globs.")
    # the order (by size: the headers are read, a too large image is refused) and the output files are
    # settled before the checkpoint is loaded, so an existing output is refused before any work
    files = [str(f) for f in getattr(dataset, "files", [])]
    if len(files) == len(dataset):
        order = sorted(range(len(dataset)), key=lambda i: (_size_key(files[i]), i))
    else:
        order = list(range(len(dataset)))
    out = Path(out)
    used: dict[str, int] = {}
    targets: dict[int, Path] = {}
    for index in order:
        base = output_name(dataset.names[index], str(dataset.images[index]))
        count = used.get(base, 0)
        used[base] = count + 1
        targets[index] = out / (f"{base}.png" if count == 0 else f"{base}_{count}.png")
    check_new_files(list(targets.values()), force=force, option="--out")
    dev = resolve_device(device)
    model, class_set, meta = load_for_inference(checkpoint, dev)
    reference = eval_input_size(meta, checkpoint) if input_size is None else input_size
    if input_size is None:
        check_eval_size(checkpoint, reference, dataset.images[0])

    def size_fn(photo_size: tuple[int, int]) -> tuple[int, int]:
        return tuple(input_size) if input_size is not None else aspect_input_size(photo_size, reference)  # type: ignore[return-value]

    prepared = PreparedDataset(dataset, size_fn=size_fn, keep_photo=fmt == "overlay")
    written: dict[int, Path] = {}
    with AsyncWriter() as writer, ProgressBar(len(order), "infer", enabled=progress) as bar:
        for batch in iterate_batches(
            prepared, batch_size=batch_size, indices=order, num_workers=default_num_workers(dev)
        ):
            ids = predict_ids(model, batch.images.to(dev), out_size=batch.out_size, scales=scales, flip=flip)
            pred = ids.cpu().numpy()
            del ids
            for k, index in enumerate(batch.indices):
                path = targets[index]
                written[index] = path
                photo = None
                if batch.photos is not None:
                    photo = batch.photos[k].permute(1, 2, 0).contiguous().numpy()
                writer.submit(_save, pred[k], path, class_set, fmt, photo)
            bar.advance(len(batch.names))
    if progress:
        from rich.console import Console

        Console().print(f"wrote {len(written)} {fmt} image(s) to {out}")
    return [written[i] for i in sorted(written)]
