"""Label info: which train ids (and how many pixels of each) every source label file holds.

Class-balanced sampling (:class:`proca.data.sampler.ClassBalancedSampler`) needs, for every file,
the classes it contains, and for every class, the files that contain it. ``proca label-info``
scans the label files once, in parallel, and writes a schema-versioned JSON file
(``ROOT/<dataset>_label_info.json`` by default)::

    {"schema": "proca.label_info", "schema_version": 1, "dataset": "gtav", "class_set": "cityscapes19",
     "num_classes": 19, "class_names": [...],
     "files": [{"file": "00001.png", "classes": [0, 2, 10], "pixels": [51234, 8812, 90211],
                "size": [1052, 1914]}, ...],          # size: the image's (= the label's) height, width
     "class_to_files": [["00001.png", ...], ...],      # index = train id
     "skipped": [],                                    # files left out with --skip-bad
     "skipped_reasons": {}}                            # file -> "unreadable" or "size mismatch"

File names are relative to the label (and image) folder and must stay inside it: a row naming an
absolute path or one with ``..`` is refused. :func:`check_label_info_current` finds a stale file
(a listed image or label gone, or a size that differs from the recorded one) and names the command
that regenerates it.

:func:`read_label_info` reads that JSON and also the release's pickle
``(label_to_file, file_to_label)`` through a restricted unpickler that builds only lists, dicts,
tuples, sets, strings and numbers: a pickle that names any other callable is refused before
anything runs.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from proca.data.classes import CITYSCAPES_19, SYNTHIA_16, ClassSet, RawLabelSpace, get_class_set
from proca.errors import DataError, ProcaError

if TYPE_CHECKING:
    from proca.data._decode import LabelDecoder

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "LabelInfo",
    "build_label_info",
    "check_label_info_current",
    "read_label_info",
    "regenerate_command",
    "run_label_info",
    "scan_label_file",
]

SCHEMA = "proca.label_info"
SCHEMA_VERSION = 1

# dataset name -> (class set, raw label space, label folder relative to the root, image folder)
_SOURCES: dict[str, tuple[ClassSet, RawLabelSpace, str, str]] = {
    "gtav": (CITYSCAPES_19, "gtav", "labels", "images"),
    "synthia": (SYNTHIA_16, "synthia", "RAND_CITYSCAPES/GT/LABELS", "RAND_CITYSCAPES/RGB"),
}


@dataclass
class LabelInfo:
    """Per-file class content of a labelled dataset.

    Attributes:
        files: file names in a fixed order; sampler indices point into this list.
        file_to_classes: file name -> sorted train ids present.
        pixel_counts: file name -> pixel count per train id in ``file_to_classes[file]`` order
            (None for the release's pickle, which has no counts).
        num_classes: number of train ids (None when unknown).
        class_set: class-set name such as ``"cityscapes19"`` (None when unknown).
        dataset: ``"gtav"``, ``"synthia"`` or a built-in dataset name such as ``"bdd100k"`` (None when unknown).
        skipped: files left out (unreadable, or image and label of different sizes).
        sizes: file name -> image (= label) size ``[H, W]`` (None when not recorded).
        skip_reasons: skipped file -> ``"unreadable"`` or ``"size mismatch"``.
    """

    files: list[str]
    file_to_classes: dict[str, list[int]]
    pixel_counts: dict[str, list[int]] | None = None
    num_classes: int | None = None
    class_set: str | None = None
    dataset: str | None = None
    skipped: list[str] = field(default_factory=list)
    sizes: dict[str, list[int]] | None = None
    skip_reasons: dict[str, str] = field(default_factory=dict)

    def skip_summary(self) -> str:
        """``"2 unreadable, 1 size mismatch"``: the skipped files counted by reason."""
        counts: dict[str, int] = {}
        for name in self.skipped:
            reason = self.skip_reasons.get(name, "unreadable")
            counts[reason] = counts.get(reason, 0) + 1
        return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))

    def __len__(self) -> int:
        return len(self.files)

    def class_to_files(self, num_classes: int | None = None) -> list[list[str]]:
        """Files containing each train id, in ``files`` order; ids >= ``num_classes`` are dropped."""
        n = num_classes if num_classes is not None else self.num_classes
        if n is None:
            n = 1 + max((c for cs in self.file_to_classes.values() for c in cs), default=-1)
        out: list[list[str]] = [[] for _ in range(n)]
        for name in self.files:
            for c in self.file_to_classes.get(name, ()):
                if c < n:
                    out[c].append(name)
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON document written by :meth:`save` (schema :data:`SCHEMA`, version :data:`SCHEMA_VERSION`)."""
        from proca import __version__

        names = None
        if self.class_set is not None:
            from proca.data.classes import CLASS_SETS

            names = list(CLASS_SETS[self.class_set].classes) if self.class_set in CLASS_SETS else None
        rows = []
        for name in self.files:
            row: dict[str, Any] = {"file": name, "classes": list(self.file_to_classes.get(name, []))}
            if self.pixel_counts is not None:
                row["pixels"] = list(self.pixel_counts.get(name, []))
            if self.sizes is not None and name in self.sizes:
                row["size"] = list(self.sizes[name])
            rows.append(row)
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "proca_version": __version__,
            "dataset": self.dataset,
            "class_set": self.class_set,
            "num_classes": self.num_classes,
            "class_names": names,
            "files": rows,
            "class_to_files": self.class_to_files(),
            "skipped": list(self.skipped),
            "skipped_reasons": {n: self.skip_reasons[n] for n in self.skipped if n in self.skip_reasons},
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON document atomically."""
        from proca.io import atomic_write_json

        atomic_write_json(path, self.to_json(), indent=None)


# ----------------------------------------------------------------------------------------------
# Reading: our JSON and the release's pickle


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers and scalars; any other global (a callable to run) is refused."""

    _ALLOWED = frozenset({"list", "dict", "str", "int", "float", "tuple", "set", "frozenset", "bool"})

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in self._ALLOWED:
            return getattr(__import__("builtins"), name)
        raise DataError(
            f"{self._path} is not a plain label-info pickle: it references {module}.{name}, which would run code; "
            "refusing to load it (regenerate it with `proca label-info`)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self._path} uses pickle persistent ids; refusing to load it")


def _load_pickle(path: Path) -> LabelInfo:
    try:
        with path.open("rb") as handle:
            obj = _RestrictedUnpickler(handle, path).load()
    except ProcaError:
        raise
    except Exception as err:  # any parse failure of an untrusted file is a user error
        raise DataError(f"cannot read label-info pickle {path} ({type(err).__name__}: {err})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(f"{path} is not the release's label info: expected a pair (label_to_file, file_to_label)")
    label_to_file, file_to_label = obj
    if not (isinstance(label_to_file, list) and all(isinstance(x, list) for x in label_to_file)):
        raise DataError(f"{path}: label_to_file must be a list of lists of file names")
    if not isinstance(file_to_label, dict):
        raise DataError(f"{path}: file_to_label must be a dict file name -> list of train ids")
    num_classes = len(label_to_file)
    mapping: dict[str, list[int]] = {}
    for name, classes in file_to_label.items():
        if not isinstance(name, str) or not isinstance(classes, (list, tuple, set, frozenset)):
            raise DataError(f"{path}: file_to_label entry {name!r} is not file name -> list of train ids")
        _check_row_name(name, path)
        try:
            ids = sorted({_train_id(c) for c in classes})
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{path}: file_to_label[{name!r}] holds {classes!r}, not a list of train ids") from None
        if ids and (ids[0] < 0 or ids[-1] >= num_classes):
            raise DataError(f"{path}: file {name} lists train ids {ids} outside 0..{num_classes - 1}")
        mapping[name] = ids
    for c, names in enumerate(label_to_file):
        for name in names:
            if not isinstance(name, str):
                raise DataError(f"{path}: label_to_file[{c}] holds {name!r}, not a file name")
            _check_row_name(name, path)
            if c not in mapping.setdefault(name, []):
                mapping[name] = sorted({*mapping[name], c})
    class_set = {19: CITYSCAPES_19.name, 16: SYNTHIA_16.name}.get(num_classes)
    dataset = {19: "gtav", 16: "synthia"}.get(num_classes)
    return LabelInfo(
        files=sorted(mapping),
        file_to_classes=mapping,
        num_classes=num_classes,
        class_set=class_set,
        dataset=dataset,
    )


def _load_json(path: Path) -> LabelInfo:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read label-info JSON {path} ({err})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise DataError(f'{path} is not a proca label-info file (no "schema": "{SCHEMA}"); regenerate it')
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path} has label-info schema version {version}; this proca reads version {SCHEMA_VERSION}: "
            "regenerate it with `proca label-info`"
        )
    try:
        files = [str(r["file"]) for r in doc["files"]]
        mapping = {str(r["file"]): [_train_id(c) for c in r["classes"]] for r in doc["files"]}
        has_pixels = all("pixels" in r for r in doc["files"])
        pixels = {str(r["file"]): [int(n) for n in r["pixels"]] for r in doc["files"]} if has_pixels else None
        has_sizes = bool(doc["files"]) and all("size" in r for r in doc["files"])
        sizes = {str(r["file"]): _size(r["size"]) for r in doc["files"]} if has_sizes else None
        reasons = doc.get("skipped_reasons") or {}
        if not isinstance(reasons, dict):
            raise TypeError("skipped_reasons must be an object")
        num_classes = doc.get("num_classes")
        num_classes = _train_id(num_classes) if num_classes is not None else None
        skipped = [str(s) for s in doc.get("skipped", [])]
        class_set = doc.get("class_set")
        dataset = doc.get("dataset")
        if not (class_set is None or isinstance(class_set, str)) or not (dataset is None or isinstance(dataset, str)):
            raise TypeError("class_set and dataset must be strings")
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{path}: malformed label-info entry ({type(err).__name__}: {err}); regenerate it") from None
    for name in files:
        _check_row_name(name, path)
    if num_classes is not None:
        bad = next((f for f, ids in mapping.items() if any(c >= num_classes for c in ids)), None)
        if bad is not None:
            raise DataError(f"{path}: file {bad} lists train ids {mapping[bad]} outside 0..{num_classes - 1}")
    return LabelInfo(
        files=files,
        file_to_classes=mapping,
        pixel_counts=pixels,
        num_classes=num_classes,
        class_set=class_set,
        dataset=dataset,
        skipped=skipped,
        sizes=sizes,
        skip_reasons={str(k): str(v) for k, v in reasons.items()},
    )


def _check_row_name(name: str, path: Path) -> None:
    """A file name of a label-info row: relative, inside the dataset's folder (no ``..``, not absolute)."""
    import ntpath
    import posixpath

    parts = name.replace("\\", "/").split("/")
    if not name or posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0] or ".." in parts:
        raise DataError(
            f"{path}: row {name!r} points outside the dataset folder (file names must be relative, without '..'); "
            "regenerate the label info with `proca label-info`"
        )


def _size(value: Any) -> list[int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise TypeError(f"size {value!r} is not [height, width]")
    h, w = (_train_id(v) for v in value)
    return [h, w]


def _train_id(value: Any) -> int:
    """A non-negative integer train id (or class count) from an untrusted file; ValueError/TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"{value!r} is not an integer")
    number = int(value)
    if number < 0 or (number != value and not isinstance(value, str)):
        raise ValueError(f"{value!r} is not a non-negative integer")
    return number


def read_label_info(path: str | os.PathLike[str]) -> LabelInfo:
    """Read label info: proca's JSON or the release's pickle (``gtav_label_info.p``), safely.

    The format is detected from the content, not the suffix. The pickle goes through a restricted
    unpickler (lists, dicts, tuples, sets, strings, numbers only); its ``files`` are sorted by name.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"label-info file {p} does not exist; create it with `proca label-info gtav --root DATASET_ROOT` "
            "or give the release's gtav_label_info.p"
        )
    with p.open("rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80" or head[:1] in (b"(", b"]", b"}"):
        return _load_pickle(p)
    return _load_json(p)


# ----------------------------------------------------------------------------------------------
# Scanning label files


@dataclass
class _ScanJob:
    path: str
    raw: RawLabelSpace
    class_set: str  # a name, not the lookup table: a 64 KiB SYNTHIA table per job would swamp the pipe
    image: str | None = None  # the label's image: its size must equal the label's


_Scanned = tuple[str, list[int] | None, list[int] | None, list[int] | None, str | None, str | None]
"""(label path, train ids, pixel counts, [H, W], error, reason "unreadable" / "size mismatch")."""


def scan_label_file(
    path: str | os.PathLike[str], raw: str, lut: np.ndarray, num_classes: int
) -> tuple[list[int], list[int]]:
    """Train ids present in one label file and their pixel counts (ignore excluded).

    Args:
        path: the label PNG.
        raw: label space of the file (``"gtav"`` or ``"synthia"``).
        lut: raw id -> train id lookup table.
        num_classes: number of train ids.

    Returns:
        (train ids, pixel counts), both sorted by train id.
    """
    from proca.data._decode import LabelDecoder

    classes, pixels, _ = _count(LabelDecoder(lut, raw, num_classes=num_classes, strict=True), path)
    return classes, pixels


@functools.lru_cache(maxsize=8)
def _decoder(raw: RawLabelSpace, class_set: str) -> LabelDecoder:
    from proca.data._decode import LabelDecoder

    cset = get_class_set(class_set)
    return LabelDecoder(cset.lookup_table(raw), raw, num_classes=cset.num_classes, strict=True)


def _count(decoder: LabelDecoder, path: str | os.PathLike[str]) -> tuple[list[int], list[int], list[int]]:
    num_classes = decoder.num_classes
    ids = decoder.raw_ids(path)
    raw_counts = np.bincount(ids.reshape(-1), minlength=256)  # ids are validated, so they fit the table
    table = decoder.lut[: len(raw_counts)]
    counts = np.bincount(table.astype(np.int64), weights=raw_counts, minlength=256)[:num_classes]
    present = np.flatnonzero(counts)
    return [int(c) for c in present], [int(counts[c]) for c in present], [int(ids.shape[0]), int(ids.shape[1])]


def image_size(path: str | os.PathLike[str]) -> list[int] | None:
    """``[H, W]`` of an image from its header (nothing decoded); None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:  # an unreadable image is reported by the caller
        return None
    return [int(h), int(w)]


def _scan_worker(job: _ScanJob) -> _Scanned:
    try:
        classes, pixels, size = _count(_decoder(job.raw, job.class_set), job.path)
    except ProcaError as err:
        return job.path, None, None, None, str(err), "unreadable"
    except Exception as err:  # reported by name in the parent
        return job.path, None, None, None, f"cannot read label {job.path} ({type(err).__name__}: {err})", "unreadable"
    if job.image is not None:
        found = image_size(job.image)
        if found is None:
            return job.path, None, None, None, f"cannot read image {job.image} (missing or not an image)", "unreadable"
        if found != size:
            return (
                job.path, None, None, None,
                f"label {job.path} is {size[1]}x{size[0]} (WxH) but its image {job.image} is {found[1]}x{found[0]}",
                "size mismatch",
            )  # fmt: skip
    return job.path, classes, pixels, size, None, None


def _mp_context() -> mp.context.BaseContext:
    # forkserver: workers fork from a fresh server process (no inherited threads) that imported the
    # decoder once; spawn where forkserver does not exist.
    methods = mp.get_all_start_methods()
    if "forkserver" in methods and sys.platform != "darwin":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["proca.data._decode"])
        return ctx
    return mp.get_context("spawn")


def _iter_scan(jobs: Sequence[_ScanJob], workers: int) -> Iterator[_Scanned]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _scan_worker(job)
        return
    chunksize = max(1, min(64, len(jobs) // (workers * 8)))
    with _mp_context().Pool(workers) as pool:
        yield from pool.imap(_scan_worker, jobs, chunksize=chunksize)


def _source_files(dataset: str, root: Path, list_file: str | os.PathLike[str] | None) -> tuple[Path, list[str]]:
    from proca.data.datasets import GTA5_LAYOUT, SYNTHIA_LAYOUT, read_list_file

    layout = GTA5_LAYOUT if dataset == "gtav" else SYNTHIA_LAYOUT
    label_dir = root / _SOURCES[dataset][2]
    if not label_dir.is_dir():
        raise DataError(f"{dataset} label folder {label_dir} does not exist; expected layout: {layout}")
    if list_file is not None:
        names = read_list_file(list_file)
    else:
        names = sorted(n for n in os.listdir(label_dir) if n.lower().endswith(".png") and not n.startswith("."))
        if not names:
            raise DataError(f"{dataset} label folder {label_dir} holds no .png files; expected layout: {layout}")
    present = set(os.listdir(label_dir))
    missing = [n for n in names if n not in present and not (label_dir / n).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{dataset} label file {label_dir / missing[0]} does not exist{more}; expected layout: {layout}"
        )
    return label_dir, names


def _builtin_files(
    dataset: str,
    root: str | os.PathLike[str],
    split: str | None,
    list_file: str | os.PathLike[str] | None,
    class_set: ClassSet | None,
) -> tuple[list[str], list[str], RawLabelSpace, ClassSet, Path]:
    """(file identifiers, label paths, label space, class set, label root) of a built-in dataset's split."""
    from proca.data.registry import BUILTIN_DATASETS

    entry = BUILTIN_DATASETS.get(dataset)
    if entry is None:
        valid = [*_SOURCES, *(n for n, e in BUILTIN_DATASETS.items() if e.labelled_splits)]
        raise DataError(f"unknown dataset {dataset!r}; valid: {', '.join(valid)}")
    chosen = split if split is not None else entry.labelled_splits[0]
    if not entry.has_labels(chosen):
        raise DataError(
            f"{dataset} has no labels for split {chosen!r}; labelled splits: {', '.join(entry.labelled_splits)}"
        )
    from proca.data.datasets import read_list_file

    files = read_list_file(list_file) if list_file is not None else None
    cset = class_set or CITYSCAPES_19
    ds = entry.open(root, split=chosen, labels=True, class_set=cset, files=files, flag="--root")
    assert ds.labels is not None
    return list(ds.files), [str(p) for p in ds.labels], entry.raw, cset, entry.resolve_root(root, flag="--root")


def build_label_info(
    dataset: str,
    root: str | os.PathLike[str],
    *,
    list_file: str | os.PathLike[str] | None = None,
    workers: int = 0,
    skip_bad: bool = False,
    progress: bool = False,
    class_set: ClassSet | None = None,
    split: str | None = None,
) -> LabelInfo:
    """Scan the label files of a labelled dataset (in parallel) into a :class:`LabelInfo`.

    Args:
        dataset: ``"gtav"``, ``"synthia"`` or a labelled built-in dataset (:mod:`proca.data.registry`: ``acdc``,
            ``bdd100k``, ``mapillary``, ...).
        root: dataset root (``datasets/gtav``; for a built-in dataset also the datasets folder).
        list_file: scan only the files of this split list (default: every PNG of the label folder; for a built-in
            dataset, every image of the split, named as in its ``.files``).
        split: the split of a built-in dataset (default: its first labelled split, ``train`` but for Dark Zurich).
        workers: worker processes; 0 = one per CPU core, 1 = in this process.
        skip_bad: leave out (and count) unreadable or invalid label files instead of failing.
        progress: show a rich progress bar.
        class_set: classes to count (default: the dataset's, CITYSCAPES_19 for gtav, SYNTHIA_16 for synthia).

    Returns:
        The label info, ``files`` in list (or sorted) order.
    """
    images: list[str | None]
    if dataset not in _SOURCES:
        names, paths, raw, cset, where = _builtin_files(dataset, root, split, list_file, class_set)
        images = [None] * len(paths)
    else:
        if split is not None:
            raise DataError(f"--split applies to the built-in benchmark datasets, not {dataset} (it has one split)")
        default_set, raw, _, _ = _SOURCES[dataset]
        cset = class_set or default_set
        root = Path(root)
        if not root.is_dir():
            from proca.data.datasets import GTA5_LAYOUT, SYNTHIA_LAYOUT

            layout = GTA5_LAYOUT if dataset == "gtav" else SYNTHIA_LAYOUT
            raise DataError(f"{dataset} root {root} does not exist; give the dataset folder, laid out as {layout}")
        label_dir, names = _source_files(dataset, root, list_file)
        paths = [str(label_dir / n) for n in names]
        where = label_dir
        image_dir = root / _SOURCES[dataset][3]
        # label files alone (no images/) are scanned without the size check
        images = [str(image_dir / n) for n in names] if image_dir.is_dir() else [None] * len(names)
    get_class_set(cset.name)  # workers look the class set up by name
    jobs = [_ScanJob(p, raw, cset.name, im) for p, im in zip(paths, images, strict=True)]
    if workers <= 0:
        workers = os.cpu_count() or 1
    workers = min(workers, max(1, len(jobs)))

    by_path = dict(zip(paths, names, strict=True))
    file_to_classes: dict[str, list[int]] = {}
    pixel_counts: dict[str, list[int]] = {}
    sizes: dict[str, list[int]] = {}
    skipped: list[str] = []
    reasons: dict[str, str] = {}
    with _progress(progress, len(jobs), f"scanning {dataset} labels") as advance:
        for path, classes, pixels, size, error, reason in _iter_scan(jobs, workers):
            name = by_path[path]
            if error is not None:
                if not skip_bad:
                    raise DataError(
                        f"{error} (use --skip-bad to leave out unreadable files and image/label pairs of different "
                        "sizes)"
                    )
                skipped.append(name)
                reasons[name] = reason or "unreadable"
            else:
                assert classes is not None and pixels is not None and size is not None
                file_to_classes[name] = classes
                pixel_counts[name] = pixels
                sizes[name] = size
            advance(len(skipped))
    files = [n for n in names if n in file_to_classes]
    if not files:
        raise DataError(f"no readable label files under {where} ({len(skipped)} skipped)")
    return LabelInfo(
        files=files,
        file_to_classes=file_to_classes,
        pixel_counts=pixel_counts,
        num_classes=cset.num_classes,
        class_set=cset.name,
        dataset=dataset,
        skipped=skipped,
        sizes=sizes if any(im is not None for im in images) else None,
        skip_reasons=reasons,
    )


def regenerate_command(dataset: str, root: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The command that rewrites the label-info file ``path`` of the dataset at ``root``."""
    default = Path(root) / f"{dataset}_label_info.json"
    to_default = Path(path) == default or Path(path).suffix == ".p"
    target = "" if to_default else f" --out {path}"
    force = " --force" if (default if to_default else Path(path)).exists() else ""  # it refuses to overwrite
    return f"proca label-info {dataset} --root {root}{target}{force}"


def check_label_info_current(
    info: LabelInfo,
    path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    dataset: str,
    *,
    run_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse stale label info: a listed image or label that is gone, or (when sizes are recorded) an image or
    label whose size is not the recorded one. The message names the command that regenerates the file (for one
    that ``proca train`` generated in ``run_dir``: delete it, the next run writes it again).

    Reads one directory listing per folder and, with sizes, each file's header (nothing is decoded).
    """
    if dataset not in _SOURCES:
        raise DataError(f"unknown source dataset {dataset!r}; valid: {', '.join(_SOURCES)}")
    path, root = Path(path), Path(root)
    if run_dir is not None and path.parent.resolve() == Path(run_dir).resolve():
        fix = f"delete {path} (proca train writes it again), or restore the dataset"
    else:
        fix = f"regenerate it with `{regenerate_command(dataset, root, path)}`"
    label_dir, image_dir = root / _SOURCES[dataset][2], root / _SOURCES[dataset][3]
    for folder, what in ((image_dir, "image"), (label_dir, "label")):
        present = set(os.listdir(folder)) if folder.is_dir() else set()
        missing = [n for n in info.files if n not in present and not (folder / n).is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DataError(
                f"label info {path} is stale: it lists {missing[0]}{more}, but {what} {folder / missing[0]} "
                f"does not exist; {fix}."
            )
    if info.sizes is None:
        return
    for name in info.files:
        recorded = info.sizes.get(name)
        if recorded is None:
            continue
        for folder in (image_dir, label_dir):
            now = image_size(folder / name)
            if now is not None and now != list(recorded):
                raise DataError(
                    f"label info {path} is stale: {folder / name} is {now[1]}x{now[0]} (WxH), the label info "
                    f"recorded {recorded[1]}x{recorded[0]}; {fix}."
                )


class _progress:
    """A rich progress bar (files/s, ETA, skipped count) or a no-op."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled = enabled
        self.total = total
        self.description = description
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda skipped: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} files/s, {task.fields[skipped]} skipped, ETA"),
            TimeRemainingColumn(),
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total, skipped=0, rate="-")
        start = time.perf_counter()
        done = [0]

        def advance(skipped: int) -> None:
            done[0] += 1
            rate = done[0] / max(time.perf_counter() - start, 1e-9)
            self._bar.update(task, advance=1, skipped=skipped, rate=f"{rate:.0f}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def run_label_info(
    dataset: str,
    root: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    list_file: str | os.PathLike[str] | None = None,
    workers: int = 0,
    skip_bad: bool = False,
    split: str | None = None,
    force: bool = False,
) -> Path:
    """CLI entry of ``proca label-info``: scan, write ``out`` (default ``ROOT/<dataset>_label_info.json``), report.

    An existing ``out`` is refused before the scan unless ``force`` (the overwrite policy of every command).

    Returns:
        The path written.
    """
    from rich.console import Console

    from proca.io import check_new_file, check_writable

    console = Console(stderr=True, highlight=False)
    if out is not None:
        target = Path(out)
    elif dataset in _SOURCES:
        target = Path(root) / f"{dataset}_label_info.json"
    else:
        from proca.data.registry import get_dataset

        suffix = "" if split is None else f"_{split}"
        target = get_dataset(dataset).resolve_root(root, flag="--root") / f"{dataset}{suffix}_label_info.json"
    if Path(root).is_dir():  # a missing root is named by the scan, with the expected layout
        check_writable(target, "--out")
    check_new_file(target, force=force, option="--out")
    start = time.perf_counter()
    info = build_label_info(
        dataset, root, list_file=list_file, workers=workers, skip_bad=skip_bad, progress=True, split=split
    )
    info.save(target)
    elapsed = time.perf_counter() - start
    per_class = info.class_to_files()
    rare = min(range(len(per_class)), key=lambda c: len(per_class[c]))
    names = CITYSCAPES_19.classes if info.class_set == CITYSCAPES_19.name else SYNTHIA_16.classes
    console.print(
        f"wrote {target}: {len(info.files)} files in {elapsed:.1f} s"
        + (f", {len(info.skipped)} skipped ({info.skip_summary()})" if info.skipped else "")
        + f"; rarest class: {names[rare]} in {len(per_class[rare])} files"
    )
    empty = [names[c] for c in range(len(per_class)) if not per_class[c]]
    if empty:
        console.print(f"[yellow]warning:[/] no file contains {', '.join(empty)}; the sampler never draws them")
    return target
