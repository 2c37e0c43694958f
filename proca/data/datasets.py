"""Dataset readers for GTA5, SYNTHIA RAND-CITYSCAPES, Cityscapes, pseudo labels and plain image folders.

Every dataset is a torch ``Dataset`` with ``.files`` (identifiers in a fixed order) and
``.class_set``; ``dataset[i]`` is a dict ``{"image", "label" (labelled sets only), "name", "path"}``.
Without a transform the image is a ``tv_tensors.Image`` uint8 (3, H, W) and the label a
``tv_tensors.Mask`` int64 (H, W) of train ids (255 = ignore). Labels are decoded losslessly and
remapped with one lookup table derived from :mod:`proca.data.classes`.

Splits come from a list file (the release's ``*_list.txt`` format: one file name per line,
relative to the image folder) when given, else from a sorted listing of the image folder.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from proca.data._decode import LabelDecoder, read_rgb
from proca.data.classes import CITYSCAPES_19, SYNTHIA_16, ClassSet
from proca.errors import DataError

__all__ = [
    "CITYSCAPES_LAYOUT",
    "GTA5_LAYOUT",
    "IMAGE_EXTENSIONS",
    "SYNTHIA_LAYOUT",
    "CityscapesDataset",
    "GTA5Dataset",
    "ImageFolderDataset",
    "PseudoLabelDataset",
    "SegmentationDataset",
    "SynthiaDataset",
    "cityscapes_root",
    "read_list_file",
]

GTA5_LAYOUT = "ROOT/images/<5 digits>.png with ROOT/labels/<same name>.png (palette PNGs of Cityscapes label ids)"
SYNTHIA_LAYOUT = (
    "ROOT/RAND_CITYSCAPES/RGB/<7 digits>.png with ROOT/RAND_CITYSCAPES/GT/LABELS/<same name>.png "
    "(16-bit 3-channel PNGs, class id in channel 0)"
)
CITYSCAPES_LAYOUT = (
    "ROOT/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png with "
    "ROOT/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"
)
PSEUDO_LAYOUT = (
    "LABEL_DIR/<city>/<city>_<seq>_<frame>.png (proca) or LABEL_DIR/<city>_<seq>_<frame>_leftImg8bit.png "
    "(the release), single-channel or palette PNGs of train ids"
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def read_list_file(path: str | os.PathLike[str]) -> list[str]:
    """Read a split list: one file name per line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"list file {p} does not exist; give a text file with one image file name per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read list file {p} ({err}); expected UTF-8 text, one file name per line") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise DataError(f"list file {p} names no files; expected one image file name per line")
    return names


def _require_dir(path: Path, what: str, layout: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} folder {path} does not exist; expected layout: {layout}")


def _list_images(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))


def _check_present(paths: Iterable[Path], what: str, layout: str) -> None:
    """Raise naming the first missing file (one ``listdir`` per folder, not one ``stat`` per file)."""
    listings: dict[Path, set[str]] = {}
    missing: list[Path] = []
    for path in paths:
        parent = path.parent
        if parent not in listings:
            listings[parent] = set(os.listdir(parent)) if parent.is_dir() else set()
        if path.name not in listings[parent]:
            missing.append(path)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{what} file {missing[0]} does not exist{more}; expected layout: {layout}")


class SegmentationDataset(Dataset):
    """A list of (image, label) file pairs read as sample dicts; the base of the readers below.

    Args:
        names: sample names (``sample["name"]``), one per image.
        images: image paths.
        labels: label paths (None: unlabelled).
        decoder: label decoder (raw ids -> train ids), required with labels.
        class_set: the classes of the train ids.
        transform: a callable taking and returning the sample dict (see :mod:`proca.data.transforms`).
        files: identifiers (``.files``), default the names.
    """

    def __init__(
        self,
        names: Sequence[str],
        images: Sequence[Path],
        labels: Sequence[Path] | None,
        *,
        decoder: LabelDecoder | None,
        class_set: ClassSet | None,
        transform: Transform | None = None,
        files: Sequence[str] | None = None,
        layout: str = "",
    ) -> None:
        assert labels is None or (decoder is not None and len(labels) == len(images))
        self.names = list(names)
        self.images = list(images)
        self.labels = list(labels) if labels is not None else None
        self.decoder = decoder
        self.class_set = class_set
        self.transform = transform
        self.files = list(files) if files is not None else list(self.names)
        self.layout = layout

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        image = read_rgb(image_path, self.layout)
        sample: dict[str, Any] = {"image": tv_tensors.Image(image)}
        if self.labels is not None:
            assert self.decoder is not None
            label_path = self.labels[index]
            train_ids = self.decoder(label_path)
            if tuple(train_ids.shape) != tuple(image.shape[-2:]):
                raise DataError(
                    f"label {label_path} is {train_ids.shape[1]}x{train_ids.shape[0]} (WxH) but its image "
                    f"{image_path} is {image.shape[2]}x{image.shape[1]}; every label must have its image's size"
                )
            sample["label"] = tv_tensors.Mask(torch.from_numpy(train_ids.astype(np.int64)))
        sample["name"] = self.names[index]
        sample["path"] = str(image_path)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        name = self.class_set.name if self.class_set is not None else None
        return f"{type(self).__name__}({len(self)} images, class_set={name})"


class GTA5Dataset(SegmentationDataset):
    """GTA5: ``ROOT/images/*.png`` with palette label PNGs ``ROOT/labels/*.png`` of Cityscapes label ids.

    Args:
        root: dataset root (``datasets/gtav``).
        files: file names to use, in this order (for example ``LabelInfo.files``).
        list_file: a split list such as the release's ``gtav_train_list.txt`` (used when ``files`` is None).
        class_set: ``CITYSCAPES_19`` or ``SYNTHIA_16`` (the label ids map to its train ids).
        transform: callable on the sample dict.
        strict: label ids outside 0..33 raise :class:`DataError` (False: mapped to 255, one warning).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        files: Sequence[str] | None = None,
        list_file: str | os.PathLike[str] | None = None,
        class_set: ClassSet = CITYSCAPES_19,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        image_dir, label_dir = root / "images", root / "labels"
        _require_dir(image_dir, "GTA5 image", GTA5_LAYOUT)
        _require_dir(label_dir, "GTA5 label", GTA5_LAYOUT)
        names = _select(files, list_file, image_dir)
        images = [image_dir / n for n in names]
        labels = [label_dir / n for n in names]
        _check_present(images, "GTA5 image", GTA5_LAYOUT)
        _check_present(labels, "GTA5 label", GTA5_LAYOUT)
        decoder = LabelDecoder(
            class_set.lookup_table("gtav"), "gtav", num_classes=class_set.num_classes, strict=strict, layout=GTA5_LAYOUT
        )
        super().__init__(
            names, images, labels, decoder=decoder, class_set=class_set, transform=transform, layout=GTA5_LAYOUT
        )
        self.root = root


class SynthiaDataset(SegmentationDataset):
    """SYNTHIA RAND-CITYSCAPES: RGB images with 16-bit 3-channel label PNGs (class id in channel 0).

    Labels are decoded losslessly (``torchvision.io.decode_png``, not Pillow) and mapped to the 16
    SYNTHIA train ids.

    Args:
        root: dataset root (``datasets/synthia``, holding ``RAND_CITYSCAPES``).
        files: file names to use, in this order.
        list_file: a split list such as the release's ``synthia_train_list.txt``.
        transform: callable on the sample dict.
        strict: label ids outside 0..22 raise :class:`DataError` (False: mapped to 255, one warning).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        files: Sequence[str] | None = None,
        list_file: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        image_dir = root / "RAND_CITYSCAPES" / "RGB"
        label_dir = root / "RAND_CITYSCAPES" / "GT" / "LABELS"
        _require_dir(image_dir, "SYNTHIA image", SYNTHIA_LAYOUT)
        _require_dir(label_dir, "SYNTHIA label", SYNTHIA_LAYOUT)
        names = _select(files, list_file, image_dir)
        images = [image_dir / n for n in names]
        labels = [label_dir / n for n in names]
        _check_present(images, "SYNTHIA image", SYNTHIA_LAYOUT)
        _check_present(labels, "SYNTHIA label", SYNTHIA_LAYOUT)
        decoder = LabelDecoder(
            SYNTHIA_16.lookup_table("synthia"), "synthia", num_classes=16, strict=strict, layout=SYNTHIA_LAYOUT
        )
        super().__init__(
            names, images, labels, decoder=decoder, class_set=SYNTHIA_16, transform=transform, layout=SYNTHIA_LAYOUT
        )
        self.root = root


def _select(files: Sequence[str] | None, list_file: str | os.PathLike[str] | None, image_dir: Path) -> list[str]:
    if files is not None:
        names = [str(f) for f in files]
        if not names:
            raise DataError(f"the file selection for {image_dir} is empty; give at least one file name")
        return names
    if list_file is not None:
        return read_list_file(list_file)
    names = _list_images(image_dir)
    if not names:
        raise DataError(f"image folder {image_dir} holds no .png/.jpg/.webp files")
    return names


def cityscapes_root(data_root: str | os.PathLike[str], *, flag: str = "--data-root") -> Path:
    """The Cityscapes folder of a ``--data-root``: ``DATA_ROOT/cityscapes``, or ``DATA_ROOT`` itself.

    ``--data-root`` names the datasets folder holding ``gtav/``, ``synthia/`` and ``cityscapes/`` (as
    ``proca train`` uses it); the Cityscapes folder itself (one with ``leftImg8bit/`` directly) is accepted
    too, so commands written for that still work.

    Raises:
        DataError: neither ``DATA_ROOT/cityscapes/leftImg8bit/`` nor ``DATA_ROOT/leftImg8bit/`` exists; the
            message names both accepted layouts.
    """
    root = Path(data_root)
    nested = root / "cityscapes"
    if (nested / "leftImg8bit").is_dir():
        return nested
    if (root / "leftImg8bit").is_dir():
        return root
    layouts = (
        f"give the datasets folder holding cityscapes/ ({root}/cityscapes/leftImg8bit/, as proca train uses it) "
        f"or the Cityscapes folder itself ({root}/leftImg8bit/ and gtFine/)"
    )
    if not root.is_dir():
        raise DataError(f"{flag} {root}: no such folder; {layouts}.")
    raise DataError(f"{flag} {root}: neither {nested / 'leftImg8bit'} nor {root / 'leftImg8bit'} exists; {layouts}.")


def _cityscapes_names(root: Path, split: str, list_file: str | os.PathLike[str] | None) -> list[str]:
    """Relative image paths ``<city>/<city>_<seq>_<frame>_leftImg8bit.png`` of a split, in list/sorted order."""
    image_root = root / "leftImg8bit" / split
    _require_dir(image_root, f"Cityscapes {split!r} image", CITYSCAPES_LAYOUT)
    if list_file is not None:
        rels = read_list_file(list_file)
    else:
        rels = sorted(
            f"{city}/{n}"
            for city in os.listdir(image_root)
            if (image_root / city).is_dir()
            for n in os.listdir(image_root / city)
            if n.endswith("_leftImg8bit.png")
        )
        if not rels:
            raise DataError(f"Cityscapes folder {image_root} holds no <city>/*_leftImg8bit.png images")
    for rel in rels:
        if not rel.endswith("_leftImg8bit.png") or rel.count("/") != 1:
            raise DataError(
                f"{rel!r} (in {list_file or image_root}) is not a Cityscapes image name; expected "
                "<city>/<city>_<seq>_<frame>_leftImg8bit.png"
            )
    return rels


class CityscapesDataset(SegmentationDataset):
    """Cityscapes: ``leftImg8bit`` images with ``gtFine_labelIds`` labels mapped to 19 (or 16) train ids.

    ``sample["name"]`` is ``"<city>/<city>_<seq>_<frame>"`` so predictions can be written with the
    official file names; ``.files`` holds the relative image paths (the list-file format).

    Args:
        root: dataset root (``datasets/cityscapes``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        class_set: ``CITYSCAPES_19`` or ``SYNTHIA_16``.
        list_file: a split list such as the release's ``cityscapes_train_list.txt``.
        transform: callable on the sample dict.
        labels: read the ``gtFine`` labels (False: images only, e.g. the unlabelled target).
        strict: label ids outside 0..33 raise :class:`DataError`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "train",
        class_set: ClassSet = CITYSCAPES_19,
        list_file: str | os.PathLike[str] | None = None,
        transform: Transform | None = None,
        labels: bool = True,
        strict: bool = True,
    ) -> None:
        root = Path(root)
        rels = _cityscapes_names(root, split, list_file)
        images = [root / "leftImg8bit" / split / r for r in rels]
        _check_present(images, "Cityscapes image", CITYSCAPES_LAYOUT)
        names = [r[: -len("_leftImg8bit.png")] for r in rels]
        label_paths: list[Path] | None = None
        decoder = None
        if labels:
            _require_dir(root / "gtFine" / split, f"Cityscapes {split!r} label", CITYSCAPES_LAYOUT)
            label_paths = [root / "gtFine" / split / f"{n}_gtFine_labelIds.png" for n in names]
            _check_present(label_paths, "Cityscapes label", CITYSCAPES_LAYOUT)
            decoder = LabelDecoder(
                class_set.lookup_table("cityscapes"),
                "cityscapes",
                num_classes=class_set.num_classes,
                strict=strict,
                layout=CITYSCAPES_LAYOUT,
            )
        super().__init__(
            names,
            images,
            label_paths,
            decoder=decoder,
            class_set=class_set,
            transform=transform,
            files=rels,
            layout=CITYSCAPES_LAYOUT,
        )
        self.root = root
        self.split = split


class PseudoLabelDataset(SegmentationDataset):
    """Cityscapes images with pseudo labels: PNGs of train ids (255 = ignore) in ``label_dir``.

    Two namings are accepted (the first file decides): ``LABEL_DIR/<city>/<city>_<seq>_<frame>.png``
    (``sample["name"] + ".png"``, what proca writes) and the release's flat
    ``LABEL_DIR/<city>_<seq>_<frame>_leftImg8bit.png``.

    Args:
        cityscapes_root: Cityscapes root (images are read from ``leftImg8bit/<split>``).
        label_dir: folder of pseudo-label PNGs.
        split: Cityscapes split the labels were made for.
        class_set: the classes of the train ids.
        transform: callable on the sample dict.
        list_file: restrict to the images of a split list.
    """

    def __init__(
        self,
        cityscapes_root: str | os.PathLike[str],
        label_dir: str | os.PathLike[str],
        *,
        split: str = "train",
        class_set: ClassSet = CITYSCAPES_19,
        transform: Transform | None = None,
        list_file: str | os.PathLike[str] | None = None,
    ) -> None:
        root, label_dir = Path(cityscapes_root), Path(label_dir)
        _require_dir(label_dir, "pseudo-label", PSEUDO_LAYOUT)
        rels = _cityscapes_names(root, split, list_file)
        images = [root / "leftImg8bit" / split / r for r in rels]
        _check_present(images, "Cityscapes image", CITYSCAPES_LAYOUT)
        names = [r[: -len("_leftImg8bit.png")] for r in rels]
        ours = [label_dir / f"{n}.png" for n in names]
        flat = [label_dir / Path(r).name for r in rels]
        label_paths = flat if (not ours[0].is_file() and flat[0].is_file()) else ours
        _check_present(label_paths, "pseudo-label", PSEUDO_LAYOUT)
        lut = np.arange(256, dtype=np.uint8)
        decoder = LabelDecoder(lut, "trainid", num_classes=class_set.num_classes, layout=PSEUDO_LAYOUT)
        super().__init__(
            names,
            images,
            label_paths,
            decoder=decoder,
            class_set=class_set,
            transform=transform,
            files=rels,
            layout=PSEUDO_LAYOUT,
        )
        self.root = root
        self.label_dir = label_dir
        self.split = split


class ImageFolderDataset(SegmentationDataset):
    """Unlabelled images for inference, from files, folders (searched recursively) and glob patterns.

    ``sample["name"]`` is the path without suffix relative to the folder or glob base it came from
    (the file stem for single files), made unique with ``-2``, ``-3``, ... where names collide.
    ``.files`` holds the image paths. ``class_set`` is None: the model decides the classes.

    Args:
        inputs: image files, folders or glob patterns (``"shots/*.jpg"``).
        transform: callable on the sample dict.
        exclude: folders whose images a folder or glob input skips (``proca infer`` passes its ``--out``, so
            predictions written inside an input folder are not read back as photos on the next run).
            A file named directly is always read.
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike[str]],
        *,
        transform: Transform | None = None,
        exclude: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        skipped = [Path(e).resolve() for e in exclude]
        paths: list[Path] = []
        names: list[str] = []
        seen_paths: set[Path] = set()
        seen_names: set[str] = set()
        for item in inputs:
            named = Path(item).is_file()
            for path, name in _expand_input(item):
                resolved = path.resolve()
                if resolved in seen_paths:
                    continue
                if not named and any(resolved.is_relative_to(folder) for folder in skipped):
                    continue
                seen_paths.add(resolved)
                unique, k = name, 1
                while unique in seen_names:
                    k += 1
                    unique = f"{name}-{k}"
                seen_names.add(unique)
                paths.append(path)
                names.append(unique)
        if not paths:
            raise DataError(
                f"no images found in {', '.join(map(str, inputs)) or 'the inputs'}; give .png/.jpg/.jpeg/.webp files"
            )
        super().__init__(
            names, paths, None, decoder=None, class_set=None, transform=transform, files=[str(p) for p in paths]
        )


def _expand_input(item: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    text = str(item)
    path = Path(text)
    if path.is_file():
        if not path.name.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{path} is not a .png/.jpg/.jpeg/.webp image")
        return [(path, path.stem)]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise DataError(f"folder {path} holds no .png/.jpg/.jpeg/.webp images")
        return [(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
    if glob.has_magic(text):
        from proca.data.cards import expand_images  # one naming rule for globs: the path under the glob's base

        named = expand_images(text)
        if not named:
            raise DataError(f"the pattern {text!r} matches no .png/.jpg/.jpeg/.webp images")
        return named
    raise DataError(f"input {text!r} is neither an image file, a folder nor a glob pattern that matches images")
