"""Atomic file output shared by every part of proca.

Everything proca writes (checkpoints, training state, label info, JSON reports, prediction
PNGs) goes through :func:`atomic_write`: the bytes land in a temporary file next to the target,
are flushed to disk, and only then renamed over the target. A process killed at any point leaves
either the old file or the complete new one, never a truncated file that loads as valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from proca.errors import OutputError, ProcaError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_new_file",
    "check_new_files",
    "check_writable",
    "save_image_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: Literal["wb", "w"] = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` when the ``with`` block ends without error.

    The parent folder is created when missing. On an exception the temporary file is removed and
    ``path`` is left untouched.

    Raises:
        OutputError: the file cannot be written (a folder, no permission, disk full); an ``OSError`` too.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {target}: it is a folder; give a file path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise _output_error(target, err) from err
    tmp = Path(tmp_name)
    try:
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and not isinstance(err, ProcaError):
            raise _output_error(target, err) from err
        raise


def _output_error(target: Path, err: OSError) -> OutputError:
    reason = err.strerror or str(err) or type(err).__name__
    return OutputError(f"cannot write {target} ({reason}); check the path, the free disk space and the permissions")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def save_image_atomic(image: Any, path: str | os.PathLike[str], **save_kwargs: Any) -> None:
    """Save a ``PIL.Image.Image`` atomically; the format follows the suffix of ``path``."""
    fmt = Path(path).suffix.lstrip(".").upper() or "PNG"
    fmt = {"JPG": "JPEG"}.get(fmt, fmt)
    with atomic_write(path, "wb") as handle:
        image.save(handle, format=fmt, **save_kwargs)


def check_new_file(path: str | os.PathLike[str], *, force: bool = False, option: str = "") -> Path:
    """The overwrite policy of every proca command: refuse an existing output file unless ``force``.

    Also refuses a folder where a file is wanted and a path under no writable folder; called before any work.

    Args:
        path: the file the command will write.
        force: replace an existing file (the command's ``--force``).
        option: the option that named the path (``--json``), quoted in messages.

    Raises:
        OutputError: naming the path and what to do.
    """
    target = Path(path)
    named = f"{option} {target}" if option else str(target)
    if target.is_dir():
        raise OutputError(f"cannot write {named}: it is a folder; give a file path")
    if target.exists() and not force:
        raise OutputError(f"{named} exists; pass --force to overwrite it (or choose another path)")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write {named}: {parent} is not a writable folder")
    return target


def check_new_files(paths: list[Path], *, force: bool = False, option: str = "") -> None:
    """:func:`check_new_file`'s policy for the files a command writes into a folder: refuse when any exists.

    Raises:
        OutputError: naming the first existing file, how many exist, and ``--force``.
    """
    if force:
        return
    existing = [p for p in paths if p.exists()]
    if existing:
        more = f" (and {len(existing) - 1} more of the files it would write)" if len(existing) > 1 else ""
        where = f"{option} " if option else ""
        raise OutputError(
            f"{where}{existing[0]} exists{more}; pass --force to overwrite, or choose another output folder"
        )


def check_writable(path: str | os.PathLike[str], flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written: a file given for a folder (or a folder
    for a file), or a path whose nearest existing parent is a file or not writable. Nothing is created.

    Args:
        path: the output file (``folder=False``) or folder.
        flag: the option that gave it, for the message (``--json``, ``--out``).
        folder: ``path`` is a folder to create or fill.

    Raises:
        OutputError: naming the option, the path and what to give instead.
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        raise OutputError(f"{flag} {target} is a file; give a folder (new or existing).")
    if not folder and target.is_dir():
        raise OutputError(f"{flag} {target} is a folder; give a file path such as {target / 'results.json'}.")
    parent = target if folder and target.is_dir() else target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {target} cannot be created: {parent} is a file, not a folder; give another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {target} cannot be written: no write permission in {parent}; give another path.")
