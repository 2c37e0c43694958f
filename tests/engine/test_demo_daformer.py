"""``proca demo --recipe daformer`` with tiny settings: both runs, the summary, the CLI dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import proca.engine.demo_daformer as demo

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")


def test_daformer_demo_runs_source_only_and_adapted_and_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proca.cli import app

    monkeypatch.setitem(demo.DAFORMER_DEMO_SETTINGS, "num_train", 4)
    monkeypatch.setitem(demo.DAFORMER_DEMO_SETTINGS, "num_val", 1)
    monkeypatch.setitem(demo.DAFORMER_DEMO_SETTINGS, "data_size", (32, 64))
    tiny = {"daformer.iters": 2, "daformer.source_size": [32, 64], "daformer.target_size": [32, 64],
            "daformer.crop_size": [32, 32], "eval.input_size": [32, 64], "daformer.rcs_min_pixels": 10}  # fmt: skip
    overrides = [(k, tiny.get(k, v), why) for k, v, why in demo.DAFORMER_DEMO_OVERRIDES]
    monkeypatch.setattr(demo, "DAFORMER_DEMO_OVERRIDES", overrides)
    out, report = tmp_path / "demo", tmp_path / "demo.json"
    result = CliRunner().invoke(app, ["demo", "--recipe", "daformer", "--out", str(out), "--json", str(report)])
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    for key in ("source_only_miou", "daformer_miou", "teacher_miou", "seconds", "cpu_seconds"):
        assert isinstance(summary[key], float), key
    assert summary["settings"]["overrides"]["daformer.iters"] == 2
    source_only = [json.loads(x) for x in (out / "source_only" / "daformer.log.jsonl").read_text().splitlines()]
    adapted = [json.loads(x) for x in (out / "daformer" / "daformer.log.jsonl").read_text().splitlines()]
    assert all("mix_ce" not in r for r in source_only) and any("mix_ce" in r for r in adapted)
    again = CliRunner().invoke(app, ["demo", "--recipe", "daformer", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_daformer_demo_follows_the_demos_overwrite_policy(tmp_path: Path) -> None:
    from proca.engine.demo_daformer import run_daformer_demo
    from proca.errors import OutputError, ProcaError

    existing = tmp_path / "demo.json"
    existing.write_text("{}")
    with pytest.raises(OutputError, match="exists; choose another path, or pass --force"):
        run_daformer_demo(out=tmp_path / "new", json_path=existing)
    assert existing.read_text() == "{}" and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "demo.json").write_text("{}")
    with pytest.raises(ProcaError, match="already holds a demo"):
        run_daformer_demo(out=tmp_path / "old")
