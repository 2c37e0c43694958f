"""Dataset cards: labelled (or unlabelled) data of your own, described in a small YAML or JSON file.

A card names its images with a glob and its labels with a glob or a pattern, says how label files
encode classes, and which classes they are. Paths are relative to the card's folder. Example::

    name: my-street
    images: images/**/*.jpg          # glob, relative to the card (** searches sub-folders)
    labels: labels/{name}.png        # pattern ({name}: the image's path under the glob base, no suffix;
                                     # {stem}: its file name without suffix) or a glob paired by {name}
    label_format: trainid            # trainid | labelid | palette
    classes: cityscapes19            # cityscapes19 | synthia16 | a list or {value: name} table
    palette: [[128, 64, 128], ...]   # palette only: colour of each class (default: the Cityscapes colours)
    ignore_colors: [[0, 0, 0]]       # palette only: colours read as ignore (255)

Label formats:

- ``trainid``: single-channel (or palette-index) 8-bit PNGs whose values index the ``classes`` table,
  255 = ignore.
- ``labelid``: Cityscapes label ids (0..33, 255), as in ``gtFine_labelIds.png``; ``classes`` must be
  a built-in table (or left out).
- ``palette``: RGB colour PNGs; each pixel's colour is looked up in ``palette`` (index = entry of the
  ``classes`` table).

Every class name is one of the 19 Cityscapes training classes; a card's labels are mapped by name to
whichever class set a model uses (like Cityscapes for a SYNTHIA model), names outside it are ignored.
Every mistake is a :class:`~proca.errors.DataError` naming the card file and the key, with the fix.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from proca.data.classes import CITYSCAPES_19, CITYSCAPES_LABELS, CLASS_SETS, IGNORE_INDEX, ClassSet
from proca.errors import DataError

if TYPE_CHECKING:
    from proca.data.datasets import SegmentationDataset, Transform
    from proca.data.label_info import LabelInfo

__all__ = [
    "CARD_KEYS",
    "CARD_SUFFIXES",
    "LABEL_FORMATS",
    "DatasetCard",
    "card_dataset",
    "card_label_info",
    "expand_images",
    "glob_base",
    "is_card_path",
    "load_card",
]

CARD_SUFFIXES = (".yaml", ".yml", ".json")
LABEL_FORMATS = ("trainid", "labelid", "palette")
CARD_KEYS = ("name", "images", "labels", "label_format", "classes", "palette", "ignore_colors")
"""Every key a card may hold (others are refused with the closest valid one)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def is_card_path(spec: str | os.PathLike[str]) -> bool:
    """True when ``spec`` names a card file by its suffix (``.yaml``, ``.yml``, ``.json``)."""
    return str(spec).lower().endswith(CARD_SUFFIXES)


@dataclass(frozen=True)
class DatasetCard:
    """A parsed and checked dataset card.

    Attributes:
        path: the card file.
        name: the dataset's name (default: the card's file stem).
        images: the images glob, absolute.
        labels: the labels glob or pattern, absolute (None: unlabelled).
        label_format: ``trainid``, ``labelid`` or ``palette``.
        value_names: label value (train id, or palette entry) -> Cityscapes class name (``labelid``: the
            Cityscapes table's).
        palette: RGB colour of each label value (``palette`` only).
        ignore_colors: colours read as ignore (``palette`` only).
    """

    path: Path
    name: str
    images: str
    labels: str | None
    label_format: str
    value_names: tuple[tuple[int, str], ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_colors: tuple[tuple[int, int, int], ...] = ()

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the card's labels hold, in value order."""
        return tuple(dict.fromkeys(n for _, n in self.value_names))

    def error(self, key: str, message: str) -> DataError:
        """A :class:`DataError` naming this card and ``key``."""
        return DataError(f"dataset card {self.path}: {key}: {message}")

    def lookup_table(self, class_set: ClassSet) -> np.ndarray:
        """(256,) uint8: label value -> train id of ``class_set`` (255 for classes it does not have)."""
        index = {n: i for i, n in enumerate(class_set.classes)}
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for value, name in self.value_names:
            lut[value] = index.get(name, IGNORE_INDEX)
        return lut

    def valid_values(self) -> np.ndarray:
        """(256,) bool: the label values a file may hold (255 = ignore always)."""
        valid = np.zeros(256, dtype=bool)
        if self.label_format == "labelid":
            valid[:34] = True
        else:
            valid[[v for v, _ in self.value_names]] = True
        valid[IGNORE_INDEX] = True
        return valid


def _fail(path: Path, key: str, message: str) -> DataError:
    return DataError(f"dataset card {path}: {key}: {message}")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"dataset card {path} does not exist; give a .yaml/.yml/.json file (see docs/data.md).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"dataset card {path}: cannot read it ({err}).") from None
    try:
        if path.suffix.lower() == ".json":
            data: Any = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise DataError(f"dataset card {path}: not valid {kind} ({first}).") from None
    if not isinstance(data, dict):
        raise DataError(f"dataset card {path}: the top level must be a mapping of keys ({', '.join(CARD_KEYS)}).")
    return data


def _check_name(path: Path, key: str, name: Any) -> str:
    if not isinstance(name, str) or name not in CITYSCAPES_19.classes:
        close = difflib.get_close_matches(str(name), CITYSCAPES_19.classes, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(CITYSCAPES_19.classes)}."
        raise _fail(path, key, f"{name!r} is not a Cityscapes class; {hint}")
    return name


def _value_names(path: Path, classes: Any, label_format: str) -> tuple[tuple[int, str], ...]:
    if label_format == "labelid":
        if classes is not None and not (isinstance(classes, str) and classes in CLASS_SETS):
            raise _fail(
                path, "classes", "label_format labelid reads Cityscapes label ids; give a built-in table "
                f"({', '.join(CLASS_SETS)}) or leave classes out, or use label_format trainid for your own table."
            )  # fmt: skip
        names = set(CLASS_SETS[classes].classes) if classes is not None else set(CITYSCAPES_19.classes)
        return tuple((r.label_id, r.name) for r in CITYSCAPES_LABELS if r.train_id != IGNORE_INDEX and r.name in names)
    if classes is None:
        classes = "cityscapes19"
    if isinstance(classes, str):
        if classes not in CLASS_SETS:
            close = difflib.get_close_matches(classes, list(CLASS_SETS), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "or give a list of class names / a {value: name} table."
            raise _fail(path, "classes", f"{classes!r} is not a built-in table ({', '.join(CLASS_SETS)}); {hint}")
        return tuple(enumerate(CLASS_SETS[classes].classes))
    if isinstance(classes, list):
        pairs = [(i, _check_name(path, f"classes[{i}]", n)) for i, n in enumerate(classes)]
    elif isinstance(classes, dict):
        pairs = []
        for raw, name in classes.items():
            try:
                value = int(raw)
            except (TypeError, ValueError):
                raise _fail(path, "classes", f"key {raw!r} is not a label value (an integer 0..254).") from None
            pairs.append((value, _check_name(path, f"classes[{raw}]", name)))
    else:
        raise _fail(path, "classes", f"give {', '.join(CLASS_SETS)}, a list of class names or a {{value: name}} table.")
    if not pairs:
        raise _fail(path, "classes", "the table is empty; list at least one class.")
    for value, _ in pairs:
        if not 0 <= value <= 254:
            raise _fail(path, "classes", f"label value {value} is outside 0..254 (255 is ignore).")
    listed = [n for _, n in pairs]
    dup = next((n for n in listed if listed.count(n) > 1), None)
    if dup is not None:
        raise _fail(path, "classes", f"class {dup!r} is listed twice; each class once.")
    return tuple(pairs)


def _colors(path: Path, key: str, value: Any) -> tuple[tuple[int, int, int], ...]:
    if not isinstance(value, list) or not all(
        isinstance(c, list) and len(c) == 3 and all(isinstance(x, int) and 0 <= x <= 255 for x in c) for c in value
    ):
        raise _fail(path, key, "give a list of [R, G, B] colours with entries 0..255, e.g. [[128, 64, 128], ...].")
    return tuple((c[0], c[1], c[2]) for c in value)


def load_card(path: str | os.PathLike[str]) -> DatasetCard:
    """Read and check a dataset card (the keys and values; the files are checked by :func:`card_dataset`).

    Raises:
        DataError: unreadable card, unknown key (with the closest valid one), missing or invalid values.
    """
    path = Path(path).absolute()
    data = _read(path)
    for key in data:
        if key not in CARD_KEYS:
            close = difflib.get_close_matches(str(key), CARD_KEYS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(CARD_KEYS)}."
            raise _fail(path, str(key), f"unknown key; {hint}")
    base = path.parent
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise _fail(path, "name", "give a non-empty text.")
    images = data.get("images")
    if not isinstance(images, str) or not images.strip():
        raise _fail(path, "images", "missing; give a glob of the image files relative to the card, e.g. images/*.jpg.")
    labels = data.get("labels")
    if labels is not None and (not isinstance(labels, str) or not labels.strip()):
        raise _fail(path, "labels", "give a glob (labels/*.png) or a pattern (labels/{name}_label.png).")
    label_format = data.get("label_format")
    if labels is not None and label_format is None:
        raise _fail(path, "label_format", f"missing; say how the labels encode classes: {', '.join(LABEL_FORMATS)}.")
    label_format = label_format or "trainid"
    if label_format not in LABEL_FORMATS:
        close = difflib.get_close_matches(str(label_format), LABEL_FORMATS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(LABEL_FORMATS)}."
        raise _fail(path, "label_format", f"{label_format!r} is not a label format; {hint}")
    value_names = _value_names(path, data.get("classes"), label_format)
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore: tuple[tuple[int, int, int], ...] = ()
    if label_format == "palette":
        if "palette" in data:
            palette = _colors(path, "palette", data["palette"])
        else:
            by_name = {r.name: r.color for r in CITYSCAPES_LABELS}
            of_value = dict(value_names)  # entries for values no class uses are never looked up
            palette = tuple(by_name[of_value[v]] if v in of_value else (0, 0, 0) for v in range(max(of_value) + 1))
        top = max(v for v, _ in value_names)
        if len(palette) <= top:
            raise _fail(
                path, "palette", f"{len(palette)} colours for label values up to {top}; give one colour per value."
            )
        ignore = _colors(path, "ignore_colors", data.get("ignore_colors", [[0, 0, 0]]))
        used = [palette[v] for v, _ in value_names]
        twice = next((c for c in used if used.count(c) > 1 or c in ignore), None)
        if twice is not None:
            raise _fail(path, "palette", f"colour {list(twice)} stands for two things; give each class its own colour.")
    else:
        for key in ("palette", "ignore_colors"):
            if key in data:
                raise _fail(
                    path, key, f"only used with label_format palette (this card has {label_format}); remove it."
                )
    return DatasetCard(
        path=path,
        name=name.strip(),
        images=str(base / images.strip()),
        labels=None if labels is None else str(base / labels.strip()),
        label_format=label_format,
        value_names=value_names,
        palette=palette,
        ignore_colors=ignore,
    )


def glob_base(pattern: str) -> Path:
    """The folder before the first wildcard of ``pattern`` (names are taken relative to it)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    base = Path(*fixed) if fixed else Path(".")
    return base if len(fixed) < len(parts) else base.parent


def expand_images(pattern: str) -> list[tuple[Path, str]]:
    """The image files a glob matches (sorted), each with its name: the path under the glob's base
    folder without suffix (``sub/frame_001``). Only .png, .jpg, .jpeg and .webp files count."""
    base = glob_base(pattern)
    found = sorted(
        Path(p) for p in glob.glob(pattern, recursive=True) if p.lower().endswith(IMAGE_SUFFIXES) and Path(p).is_file()
    )
    out = []
    for p in found:
        try:
            name = p.relative_to(base).with_suffix("").as_posix()
        except ValueError:
            name = p.stem
        out.append((p, name))
    return out


class CardLabelDecoder:
    """Decodes a card's label files to train ids of ``class_set``, refusing values outside the card's format."""

    def __init__(self, card: DatasetCard, class_set: ClassSet) -> None:
        self.card = card
        self.lut = card.lookup_table(class_set)
        self.valid = card.valid_values()
        if card.label_format == "palette":
            self.colors = {(r << 16) | (g << 8) | b: v for v, (r, g, b) in enumerate(card.palette)}
            self.colors = {k: v for k, v in self.colors.items() if v in dict(card.value_names)}
            for r, g, b in card.ignore_colors:
                self.colors[(r << 16) | (g << 8) | b] = IGNORE_INDEX

    def values(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The raw label values of one file (palette colours already turned into values). Shape: (H, W)."""
        from proca.data._decode import read_label_ids, read_rgb

        card = self.card
        if card.label_format != "palette":
            try:
                ids = read_label_ids(path, "trainid")
            except DataError as err:
                hint = "; for colour labels use label_format palette" if "channels" in str(err) else ""
                raise card.error("label_format", f"{err} (label_format {card.label_format}){hint}") from None
            bad = np.unique(ids[~self.valid[ids]])
            if bad.size:
                shown = ", ".join(map(str, bad[:8].tolist())) + (", ..." if bad.size > 8 else "")
                allowed = (
                    "Cityscapes label ids 0..33 and 255"
                    if card.label_format == "labelid"
                    else f"the values of classes ({', '.join(str(v) for v, _ in card.value_names[:6])}"
                    f"{', ...' if len(card.value_names) > 6 else ''}) and 255"
                )
                other = "labelid" if card.label_format == "trainid" else "trainid"
                raise card.error(
                    "label_format",
                    f"label {path} holds values {shown} outside {card.label_format}'s range ({allowed}); "
                    f"check label_format ({other}?) and classes.",
                )
            return ids
        rgb = read_rgb(path).numpy().astype(np.int64)
        codes = (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]
        uniq, inverse = np.unique(codes, return_inverse=True)
        mapped = np.empty(len(uniq), dtype=np.uint8)
        for i, code in enumerate(uniq.tolist()):
            value = self.colors.get(int(code))
            if value is None:
                colour = [(code >> 16) & 255, (code >> 8) & 255, code & 255]
                raise card.error(
                    "palette",
                    f"label {path} holds the colour {colour}, which is neither in palette nor in ignore_colors; "
                    "add it to one of them.",
                )
            mapped[i] = value
        return mapped[inverse.reshape(codes.shape)]

    def __call__(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Train ids (uint8, 255 = ignore). Shape: (H, W)."""
        return self.lut[self.values(path)]


def _pair_labels(card: DatasetCard, images: Sequence[tuple[Path, str]]) -> list[Path]:
    assert card.labels is not None
    pattern = card.labels
    if "{name}" in pattern or "{stem}" in pattern:
        labels = []
        for image, name in images:
            try:
                label = Path(pattern.format(name=name, stem=Path(name).name))
            except (KeyError, IndexError, ValueError):
                raise card.error("labels", "a pattern may hold only {name} and {stem}.") from None
            if not label.is_file():
                raise card.error(
                    "labels", f"image {image} has no label: the pattern gives {label}, which does not exist; "
                    "fix the pattern or add the label."
                )  # fmt: skip
            labels.append(label)
        return labels
    found = expand_images(pattern)
    if not found:
        raise card.error("labels", f"the glob {pattern} matches no .png label files; fix the glob.")
    by_name = {name: p for p, name in found}
    labels = []
    for image, name in images:
        match = by_name.get(name)
        if match is None:
            raise card.error(
                "labels", f"image {image} has no label named {name!r} among the {len(found)} files of {pattern}; "
                "labels pair with images by their path under the glob's folder, without suffix; for other names "
                "give a pattern such as labels/{name}_gtFine_labelIds.png."
            )  # fmt: skip
        labels.append(match)
    return labels


def _unique_names(card: DatasetCard, images: list[tuple[Path, str]], labelled: bool) -> list[tuple[Path, str]]:
    seen: dict[str, Path] = {}
    out = []
    for path, name in images:
        unique, k = name, 1
        while unique in seen:
            if labelled:
                raise card.error(
                    "images", f"{seen[name]} and {path} have the same name {name!r} and labels pair with images by "
                    "name; keep one of them or narrow the glob (e.g. *.jpg)."
                )  # fmt: skip
            k += 1
            unique = f"{name}-{k}"
        seen[unique] = path
        out.append((path, unique))
    return out


def card_dataset(
    card: DatasetCard | str | os.PathLike[str],
    *,
    class_set: ClassSet = CITYSCAPES_19,
    labels: bool = True,
    transform: Transform | None = None,
    files: Sequence[str] | None = None,
    needs_labels: str | None = None,
) -> SegmentationDataset:
    """The card's images (and labels, when it has them and ``labels``) as a dataset of ``class_set`` train ids.

    ``sample["name"]`` is the image's path under the images glob's folder without suffix.

    Args:
        files: only these names, in this order (a label info's ``files``).
        needs_labels: the option the card was given to (``--src``, ``--dataset``): a card without labels is
            refused, naming it.

    Raises:
        DataError: the images glob matches nothing, an image without a label, a name of ``files`` the card does
            not have, or (when read) a label value outside the format.
    """
    from proca.data.datasets import SegmentationDataset

    if not isinstance(card, DatasetCard):
        card = load_card(card)
    if needs_labels is not None and not card.labelled:
        raise card.error("labels", f"missing; {needs_labels} reads labels, so the card needs them.")
    images = expand_images(card.images)
    if not images:
        raise card.error("images", f"the glob {card.images} matches no .png/.jpg/.jpeg/.webp files; fix the glob.")
    images = _unique_names(card, images, labels and card.labelled)
    if files is not None:
        by_name = {n: (p, n) for p, n in images}
        missing = next((f for f in files if f not in by_name), None)
        if missing is not None:
            raise card.error(
                "images", f"the label info lists {missing!r}, which the card's images no longer hold; delete the "
                "label info file (RUN/card_label_info.json) to scan the card again."
            )  # fmt: skip
        images = [by_name[f] for f in files]
    label_paths = _pair_labels(card, images) if labels and card.labelled else None
    decoder = CardLabelDecoder(card, class_set) if label_paths is not None else None
    dataset = SegmentationDataset(
        [n for _, n in images],
        [p for p, _ in images],
        label_paths,
        decoder=decoder,  # type: ignore[arg-type]
        class_set=class_set,
        transform=transform,
        files=[str(p) for p, _ in images],
        layout=f"the dataset card {card.path}",
    )
    dataset.card = card  # type: ignore[attr-defined]
    return dataset


def card_label_info(
    card: DatasetCard | str | os.PathLike[str], *, class_set: ClassSet, skip_bad: bool = False, progress: bool = False
) -> LabelInfo:
    """Scan a labelled card's labels into a :class:`~proca.data.label_info.LabelInfo` (for class-balanced
    sampling of a card as the source); ``files`` are the card's image names.

    Args:
        skip_bad: leave out (and count) labels that cannot be read or hold values outside the format.

    Raises:
        DataError: a card without labels; with ``skip_bad`` off, the first unreadable or invalid label.
    """
    from proca.data.label_info import LabelInfo
    from proca.engine.progress import ProgressBar

    dataset = card_dataset(card, class_set=class_set, needs_labels="--src")
    assert dataset.labels is not None and dataset.decoder is not None
    files: list[str] = []
    classes: dict[str, list[int]] = {}
    counts: dict[str, list[int]] = {}
    skipped: list[str] = []
    with ProgressBar(len(dataset), "scanning card labels", enabled=progress) as bar:
        for name, path in zip(dataset.names, dataset.labels, strict=True):
            try:
                ids = dataset.decoder(path)
            except DataError:
                if not skip_bad:
                    raise
                skipped.append(str(path))
                bar.advance(1)
                continue
            hist = np.bincount(ids.ravel(), minlength=256)[: class_set.num_classes]
            present = [int(c) for c in np.flatnonzero(hist)]
            files.append(name)
            classes[name] = present
            counts[name] = [int(hist[c]) for c in present]
            bar.advance(1)
    return LabelInfo(
        files=files,
        file_to_classes=classes,
        pixel_counts=counts,
        num_classes=class_set.num_classes,
        class_set=class_set.name,
        dataset="card",
        skipped=skipped,
    )
