"""The examples in docs/api.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert found, f"docs/api.md has no python example with {marker}"
    return found[0]


@pytest.mark.slow
def test_api_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    block = _block("PrototypeContrastiveLoss(")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny ops: one thread avoids OpenMP contention on a busy 2-core machine
    try:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_api_example"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "step 0: loss" in out and "step 1: loss" in out
    assert "nan" not in out


def test_predict_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(_block("proca.predict("), str(DOC), "exec"), {"__name__": "docs_api_predict"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "(90, 160) uint8 (90, 160, 3) (90, 160, 3)" in out
