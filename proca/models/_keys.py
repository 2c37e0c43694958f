"""Short descriptions of state-dict key mismatches, for one-line error messages."""

from __future__ import annotations

__all__ = ["few", "mismatch_summary"]


def few(keys: list[str], limit: int = 5) -> str:
    """The first ``limit`` keys, comma-separated, with a count of the rest."""
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def mismatch_summary(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """``"missing a, b; unexpected c; wrong shapes d"``, leaving out empty parts ("" when all are empty)."""
    parts = [f"{label} {few(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected),
             ("wrong shapes", wrong)) if keys]  # fmt: skip
    return "; ".join(parts)
