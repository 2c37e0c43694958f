"""Non-finite losses: a NaN step is skipped and counted; ``max_nonfinite`` in a row stop the run.

The source stage's loss is monkeypatched to return NaN (for the ``ce`` term) at chosen steps. One short run
covers: a single NaN step (skipped, counted, training goes on), then NaN from a later step on (the run stops
after ``max_nonfinite`` in a row with a message naming the term and the iteration), leaving the last
resumable state, whose weights are finite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.reliability.conftest import assert_user_error, invoke


@pytest.mark.slow
def test_nan_steps_are_skipped_counted_then_stop(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proca.engine.stages.source as source_stage
    from proca.engine.runlog import read_log
    from proca.engine.state import load_training_state

    real = source_stage.supervised_loss
    calls = {"n": 0}
    nan_steps = {2, 4, 5, 6}  # 1-based: one isolated NaN, then NaN for good

    def poisoned(logits: torch.Tensor, labels: torch.Tensor, weight: float) -> Any:
        calls["n"] += 1
        terms = real(logits, labels, weight)
        if calls["n"] in nan_steps:
            value, w = terms["ce"]
            terms["ce"] = (value * float("nan"), w)
        return terms

    monkeypatch.setattr(source_stage, "supervised_loss", poisoned)
    out = tmp_path / "run"
    args = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "6", "--checkpoint-every", "1"]
    args += ["--device", "cpu", "--stage", "source", "--set", "source.batch_size=1", "--set", "num_workers=0"]
    args += ["--set", "max_nonfinite=2", "--set", "source.eval_every=0", "--set", "source.class_balanced=false"]
    args += ["--set", "log_every=1"]
    result = invoke(["train", "--data-root", data_root, "--out", out, *args])
    assert_user_error(result, "'ce'", "not finite", "2 steps in a row", "iteration 5", "--resume")

    events = [r for r in read_log(out / "source.log.jsonl") if r.get("event") == "nonfinite"]
    assert [(e["iteration"], e["term"], e["in_a_row"]) for e in events] == [(2, "ce", 1), (4, "ce", 1), (5, "ce", 2)]
    steps = [r["iteration"] for r in read_log(out / "source.log.jsonl") if "total" in r]
    assert steps == [1, 3]  # only finite steps are logged as steps

    assert not (out / "source.safetensors").exists()  # the stage did not finish
    state = load_training_state(out / "state" / "source.safetensors")
    assert state.info["iteration"] == 4 and state.info["nonfinite_total"] == 2
    assert all(torch.isfinite(v).all() for v in state.model.values() if v.is_floating_point())
    config = json.loads((out / "config.json").read_text())
    assert config["max_nonfinite"] == 2

    # the data is fixed (here: the loss no longer poisoned): --resume finishes from the last good state
    monkeypatch.setattr(source_stage, "supervised_loss", real)
    resumed = invoke(["train", "--data-root", data_root, "--out", out, *args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    results = json.loads((out / "results.json").read_text())
    assert results["source"]["nonfinite_steps"] == 2
    assert (out / "source.safetensors").is_file() and not (out / "state" / "source.safetensors").exists()
