"""What ``--tgt``, ``--tgt-val`` and ``proca eval --dataset`` name, resolved in one place.

A target (``proca train --tgt SPEC``) is one of:

1. a built-in dataset name (:data:`proca.data.registry.BUILTIN_DATASETS`: ``cityscapes``, ``acdc``, ...), read
   from its folder under ``DATA_ROOT``;
2. a dataset card, a ``.yaml``/``.yml``/``.json`` file (:mod:`proca.data.cards`);
3. a folder of images (searched recursively) or a glob of images (``"footage/**/*.jpg"``): unlabelled.

A labelled set (``--tgt-val SPEC``, ``proca eval --dataset SPEC``) is a built-in name, a card with labels,
or a Cityscapes folder (one holding ``leftImg8bit/`` and ``gtFine/``, or ``cityscapes/`` with them).

Importing this module loads nothing heavy; the readers load when a dataset is built.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from proca.data.cards import CARD_SUFFIXES, is_card_path
from proca.data.classes import CITYSCAPES_19, ClassSet
from proca.errors import DataError

if TYPE_CHECKING:
    from proca.data.cards import DatasetCard
    from proca.data.datasets import SegmentationDataset, Transform

__all__ = [
    "Target",
    "canonical_spec",
    "is_builtin",
    "resolve_eval_dataset",
    "resolve_target",
    "target_train_dataset",
    "target_val_dataset",
]


def is_builtin(spec: str) -> bool:
    """True when ``spec`` is the name of a built-in dataset (:data:`proca.data.registry.BUILTIN_DATASETS`)."""
    from proca.data.registry import BUILTIN_DATASETS

    return spec in BUILTIN_DATASETS


def canonical_spec(spec: str) -> str:
    """The form recorded in ``config.json``: built-in names as they are, paths and globs made absolute
    (so that ``--resume`` from another folder compares equal). Nothing is read from disk."""
    spec = str(spec).strip()
    if not spec or is_builtin(spec):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


@dataclass(frozen=True)
class Target:
    """A resolved target.

    Attributes:
        kind: ``builtin``, ``card`` or ``folder``.
        spec: the canonical spec (see :func:`canonical_spec`).
        card: the parsed card (``card`` only).
    """

    kind: Literal["builtin", "card", "folder"]
    spec: str
    card: DatasetCard | None = None

    @property
    def labelled(self) -> bool:
        """True when the target has labels to validate on (a built-in's val split, a card with labels)."""
        if self.kind == "builtin":
            from proca.data.registry import get_dataset

            entry = get_dataset(self.spec, flag="--tgt")
            return entry.has_labels(entry.val_split)
        return self.card is not None and self.card.labelled

    @property
    def folder(self) -> Path | None:
        """The folder a folder target's images are searched in (a glob's fixed part); None for other kinds."""
        if self.kind != "folder":
            return None
        from proca.data.cards import glob_base

        path = Path(self.spec)
        return path if path.is_dir() else glob_base(self.spec)

    @property
    def title(self) -> str:
        """A short name for messages and tables."""
        if self.kind == "card":
            assert self.card is not None
            return self.card.name
        return self.spec if self.kind == "builtin" else Path(self.spec.split("*")[0]).name or self.spec


def _kinds_hint() -> str:
    from proca.data.registry import BUILTIN_DATASETS

    return (
        f"give a built-in dataset ({', '.join(BUILTIN_DATASETS)}), a dataset card ({'/'.join(CARD_SUFFIXES)}) "
        "or a folder or glob of images"
    )


def resolve_target(spec: str, data_root: str | os.PathLike[str], *, flag: str = "--tgt") -> Target:
    """Resolve a ``--tgt`` spec and check that it names something that exists (a card is parsed and checked).

    Raises:
        DataError: a card with mistakes, a folder without images, a glob that matches none, or a name that is
            none of the three kinds.
    """
    text = str(spec).strip()
    if not text:
        raise DataError(f"{flag} is empty; {_kinds_hint()}.")
    if is_builtin(text):
        return Target("builtin", text)
    canonical = canonical_spec(text)
    if is_card_path(text):
        from proca.data.cards import card_dataset, load_card

        card = load_card(canonical)
        card_dataset(card)  # its images exist, and so does each one's label where the card has labels
        return Target("card", canonical, card)
    path = Path(canonical)
    if path.is_dir() or glob.has_magic(text):
        from proca.data.datasets import ImageFolderDataset

        try:
            ImageFolderDataset([canonical])
        except DataError as err:
            raise DataError(f"{flag} {text}: {err}.") from None
        return Target("folder", canonical)
    if path.is_file():
        raise DataError(f"{flag} {text} is a single file; {_kinds_hint()}.")
    raise DataError(f"{flag} {text}: no such dataset, file or folder; {_kinds_hint()}.")


def target_train_dataset(
    target: Target, data_root: str | os.PathLike[str], *, class_set: ClassSet, transform: Transform | None = None
) -> SegmentationDataset:
    """The target's training images (no labels, even where it has some), each with a unique ``name``.

    Names become the pseudo labels' paths (``pseudo_labels/<name>.png``): for a folder or card, the image's
    path under the folder (or glob base) without suffix, with ``-2``, ``-3``, ... where two files share one.
    """
    if target.kind == "builtin":
        from proca.data.registry import get_dataset

        entry = get_dataset(target.spec, flag="--tgt")
        return entry.open(data_root, split=entry.train_split, labels=False, class_set=class_set, transform=transform)
    if target.kind == "card":
        from proca.data.cards import card_dataset

        assert target.card is not None
        return card_dataset(target.card, class_set=class_set, labels=False, transform=transform)
    from proca.data.datasets import ImageFolderDataset

    dataset = ImageFolderDataset([target.spec], transform=transform)
    dataset.class_set = class_set
    return dataset


def resolve_eval_dataset(
    spec: str,
    data_root: str | os.PathLike[str],
    *,
    split: str | None = None,
    class_set: ClassSet = CITYSCAPES_19,
    transform: Transform | None = None,
    flag: str = "--dataset",
) -> tuple[SegmentationDataset, str]:
    """A labelled dataset to score on, and its title: a built-in name (its ``split`` under ``data_root``),
    a dataset card with labels (``split`` does not apply), or a Cityscapes folder (its ``split``). ``split``
    None: the built-in's validation split (``val`` for a Cityscapes folder).

    Raises:
        DataError: a card without labels or with mistakes, a folder that is not a Cityscapes folder, or a spec
            that is none of these.
    """
    text = str(spec).strip()
    if is_builtin(text):
        from proca.data.registry import get_dataset

        entry = get_dataset(text, flag=flag)
        split = split if split is not None else entry.val_split
        if not entry.has_labels(split):
            raise DataError(
                f"--split {split}: {entry.title} has no public labels for it; labelled splits: "
                f"{', '.join(entry.labelled_splits)}"
            )
        data = entry.open(data_root, split=split, labels=True, class_set=class_set, transform=transform)
        return data, f"{entry.title} {split}"
    canonical = canonical_spec(text)
    if is_card_path(text):
        from proca.data.cards import card_dataset, load_card

        card = load_card(canonical)
        return card_dataset(card, class_set=class_set, transform=transform, needs_labels=flag), card.name
    if Path(canonical).is_dir():
        from proca.data.datasets import CityscapesDataset, cityscapes_root

        root = cityscapes_root(canonical, flag=flag)
        split = split or "val"
        return CityscapesDataset(root, split=split, class_set=class_set, transform=transform), f"Cityscapes {split}"
    from proca.data.registry import BUILTIN_DATASETS

    raise DataError(
        f"{flag} {text}: no such dataset, card or folder; give a built-in dataset ({', '.join(BUILTIN_DATASETS)}), "
        f"a dataset card with labels ({'/'.join(CARD_SUFFIXES)}) or a Cityscapes folder."
    )


def target_val_dataset(
    tgt: str,
    tgt_val: str | None,
    data_root: str | os.PathLike[str],
    *,
    class_set: ClassSet,
    transform: Transform | None = None,
) -> SegmentationDataset | None:
    """The labelled data a run validates on: ``tgt_val`` when given, else the target's own labels (a built-in's
    val split, a labelled card's images), else None (no validation)."""
    if tgt_val is not None:
        return resolve_eval_dataset(tgt_val, data_root, class_set=class_set, transform=transform, flag="--tgt-val")[0]
    target = resolve_target(tgt, data_root)
    if not target.labelled:
        return None
    return resolve_eval_dataset(target.spec, data_root, class_set=class_set, transform=transform, flag="--tgt")[0]
