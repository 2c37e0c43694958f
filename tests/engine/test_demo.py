"""``proca demo`` end to end with its settings shrunk to seconds (the real settings are measured in docs/demo.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from proca.cli import app
from proca.engine import demo


def test_demo_config_is_the_preset_plus_the_listed_overrides() -> None:
    from proca.config import resolve_config

    cfg, paper = demo.demo_config(3), resolve_config("gtav")
    assert cfg.seed == 3 and cfg.arch == "deeplabv2_resnet18"
    keys = {k for k, _, _ in demo.DEMO_OVERRIDES}
    assert all(why for _, _, why in demo.DEMO_OVERRIDES)
    # everything not listed keeps the paper's value
    assert cfg.proca.threshold == paper.proca.threshold and "proca.threshold" not in keys
    assert cfg.pseudo_label.percent == paper.pseudo_label.percent == 0.6


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no --backbone-weights")
def test_demo_runs_every_stage_and_writes_its_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = {"source.iters": 2, "source.poly_iters": 2, "proca.iters": 2, "proca.poly_iters": 2, "ssl.iters": 2,
             "ssl.poly_iters": 2}  # fmt: skip
    sizes = ("input_size", "source_size", "target_size", "scale_reference")  # shrink sizes only
    overrides = [(k, small.get(k, [32, 64] if k.endswith(sizes) else v), why) for k, v, why in demo.DEMO_OVERRIDES]
    monkeypatch.setattr(demo, "DEMO_OVERRIDES", overrides)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "num_train", 4)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "num_val", 2)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "data_size", (32, 64))
    monkeypatch.setitem(demo.DEMO_SETTINGS, "examples", 1)
    monkeypatch.setitem(demo.DEMO_SETTINGS, "threads", 1)
    threads = torch.get_num_threads()
    out, report = tmp_path / "demo", tmp_path / "demo.json"
    asked: list[int] = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (asked.append(n), real_set(n))[1])
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--json", str(report), "--seed", "1", "--threads", "2"]
    )
    assert asked[0] == 2  # --threads wins over DEMO_SETTINGS
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    summary = json.loads(report.read_text())
    for key in ("source_only_miou", "adabn_miou", "proca_miou", "final_miou"):
        assert 0 <= summary[key] <= 100
    assert "AdaBN" in result.output  # the statistics-only baseline of the same source model, in the table
    assert summary["seconds"] > 0 and summary["seed"] == 1
    examples = list((out / "examples").glob("*.png"))
    assert len(examples) == 1
    import numpy as np
    from PIL import Image

    strip = np.asarray(Image.open(examples[0]))
    assert strip.shape == (32, 5 * 64, 3) and strip[:, :64].std() > 5  # photo | truth | 3 predictions
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    later = tmp_path / "later.json"  # the JSON of a finished demo, without training again
    reused = CliRunner().invoke(app, ["demo", "--out", str(out), "--json", str(later), "--threads", "1"])
    assert reused.exit_code == 0 and "nothing retrained" in reused.output, reused.output
    assert json.loads(later.read_text()) == summary
