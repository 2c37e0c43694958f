"""User-facing errors.

Every error a user can cause (a wrong path, a corrupt file, a bad config key) is raised as a
:class:`ProcaError` whose message names the input and what would be valid. The CLI prints the
message on one line and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "ProcaError"]


class ProcaError(Exception):
    """An error caused by user input, with a message meant to be read by a person."""


class DataError(ProcaError, ValueError):
    """A dataset folder, image, label or list file is missing, unreadable or malformed."""


class CheckpointError(ProcaError, ValueError):
    """A checkpoint or state file is missing, corrupt, unsafe or does not fit the request."""


class ConfigError(ProcaError, ValueError):
    """A configuration key or value is invalid."""
