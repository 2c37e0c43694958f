"""Shared fixtures: the release's reference data (skipped where absent) and tiny synthetic inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# the same examples on every run: a property test that fails, fails for everyone (no run-to-run luck in CI)
settings.register_profile("proca", derandomize=True, print_blob=True)
settings.load_profile("proca")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PROCA_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (real data from the release); skips the test where it is absent."""
    if not (REFERENCE / "gtav_label_info.p").is_file():
        pytest.skip("../shared/reference is not present (only in the project's own checkouts)")
    return REFERENCE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
