"""User-facing errors.

Every error a user can cause (a wrong path, a corrupt file, a bad config key) is raised as a
:class:`ProcaError` whose message names the input and what would be valid. The CLI prints the
message on one line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "OutputError",
    "ProcaError",
    "concise_warnings",
    "print_user_error",
    "report_user_errors",
    "user_message",
]


class ProcaError(Exception):
    """An error caused by user input, with a message meant to be read by a person."""


class DataError(ProcaError, ValueError):
    """A dataset folder, image, label or list file is missing, unreadable or malformed."""


class CheckpointError(ProcaError, ValueError):
    """A checkpoint or state file is missing, corrupt, unsafe or does not fit the request."""


class ConfigError(ProcaError, ValueError):
    """A configuration key or value is invalid."""


class OutputError(ProcaError, OSError):
    """A file could not be written (disk full, no permission, the target is a folder); nothing was left half-written."""


_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def user_message(err: BaseException) -> str:
    """The one-line message of a user error, as the CLI prints it.

    A :class:`ProcaError` raised inside a DataLoader worker comes back re-raised with the worker's
    traceback in its message; only the original message (its last line) is kept.
    """
    text = str(err).strip()
    if _WORKER.match(text) and "Traceback" in text:
        last = text.splitlines()[-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
    if isinstance(err, OSError) and not isinstance(err, ProcaError):
        reason = err.strerror or text
        text = f"{err.filename}: {reason}" if err.filename else reason
    return text


def print_user_error(err: BaseException) -> None:
    """Print a user error as one red line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {escape(user_message(err))}", soft_wrap=True)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _from_proca(category: type[Warning], filename: str) -> bool:
    return issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


@contextlib.contextmanager
def concise_warnings() -> Iterator[None]:
    """Show proca's own ``UserWarning`` messages as one yellow ``warning:`` line, without a source path.

    For the duration of the block ``warnings.showwarning`` is replaced: a ``UserWarning`` (or subclass)
    issued from a module of :mod:`proca` prints as ``warning: <message>`` on stderr; every other warning
    (torch's, a third-party library's) goes to the previous handler unchanged. The CLI wraps each command
    in this unless ``--debug`` is given. Warning filters are not touched.
    """
    import warnings

    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if not _from_proca(category, filename):
            previous(message, category, filename, lineno, file, line)
            return
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


@dataclass
class ExitStatus:
    """The exit status :func:`report_user_errors` settles on (0 unless an error was reported)."""

    code: int = 0


@contextlib.contextmanager
def report_user_errors(*, debug: bool = False) -> Iterator[ExitStatus]:
    """Report user errors (:class:`ProcaError`, ``OSError``) as one line and exit status 2 (130 on Ctrl-C).

    With ``debug`` the exception propagates (traceback). Used by processes without the Typer CLI around them
    (torchrun's workers); the CLI does the same for its commands.
    """
    status = ExitStatus()
    try:
        yield status
    except (ProcaError, OSError) as err:
        if debug:
            raise
        print_user_error(err)
        status.code = 2
    except KeyboardInterrupt:
        if debug:
            raise
        status.code = 130
