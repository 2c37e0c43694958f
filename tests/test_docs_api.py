"""The example in docs/api.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


@pytest.mark.slow
def test_api_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny ops: one thread avoids OpenMP contention on a busy 2-core machine
    try:
        exec(compile(blocks[0], str(DOC), "exec"), {"__name__": "docs_api_example"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "step 0: loss" in out and "step 1: loss" in out
    assert "nan" not in out
