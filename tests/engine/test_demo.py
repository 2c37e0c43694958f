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


def test_quick_is_the_same_pipeline_at_a_smaller_budget() -> None:
    full, quick = demo.demo_config(0), demo.demo_config(0, quick=True)
    assert demo.demo_settings()["num_train"] == demo.DEMO_SETTINGS["num_train"]
    settings = demo.demo_settings(quick=True)
    assert settings["num_train"] == demo.QUICK_SETTINGS["num_train"] < demo.DEMO_SETTINGS["num_train"]
    h, w = settings["data_size"]
    assert h <= 96 and w <= 192 and settings["shift"] == demo.DEMO_SETTINGS["shift"]  # the same scenes, smaller
    assert quick.eval.input_size == quick.source.input_size == (h, w)
    for stage in ("source", "proca", "ssl"):
        section = getattr(quick, stage)
        assert 0 < section.iters < getattr(full, stage).iters and section.poly_iters == section.iters
    changed = {k for k, _, _ in demo.QUICK_OVERRIDES}
    assert all(why for _, _, why in demo.QUICK_OVERRIDES)
    # every key --quick does not list keeps the full demo's value
    sections = {k for k in full.model_dump() if isinstance(full.model_dump()[k], dict)}
    assert quick.model_dump(exclude=sections) == full.model_dump(exclude=sections)
    for section in sections:
        keep = {k for k in getattr(full, section).model_dump() if f"{section}.{k}" not in changed}
        assert getattr(quick, section).model_dump(include=keep) == getattr(full, section).model_dump(include=keep)
    keys = [k for k, _, _ in demo.demo_overrides(quick=True)]
    assert keys == [k for k, _, _ in demo.DEMO_OVERRIDES]  # same keys, same order: only values change


def test_cli_quick_reaches_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(demo, "run_demo", lambda **kw: calls.append(kw))
    assert CliRunner().invoke(app, ["demo", "--quick", "--out", "x"]).exit_code == 0
    assert CliRunner().invoke(app, ["demo", "--out", "x"]).exit_code == 0
    assert [c["quick"] for c in calls] == [True, False]


def test_titled_strip_has_a_title_row_and_a_legend_of_every_class() -> None:
    import numpy as np

    from proca.data.classes import CITYSCAPES_19

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 256, (96, 192, 3), dtype=np.uint8) for _ in demo.STRIP_TITLES]
    strip = np.asarray(demo.titled_strip(tiles, demo.STRIP_TITLES, CITYSCAPES_19))
    assert strip.shape[1] == 5 * 192 and strip.shape[0] > 96
    top = next(y for y in range(strip.shape[0]) if np.array_equal(strip[y : y + 96], np.concatenate(tiles, axis=1)))
    assert top > 0 and strip[:top].std() > 5  # a title band above the tiles, with text in it
    for k in range(5):  # a title over every column
        assert (strip[:top, k * 192 : (k + 1) * 192] < 128).any()
    legend = strip[top + 96 :]
    assert legend.shape[0] > 0
    colours = {tuple(c) for c in legend.reshape(-1, 3)}
    assert all(tuple(int(v) for v in c) in colours for c in CITYSCAPES_19.colors)  # a swatch per class


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
    assert strip.shape[1:] == (5 * 64, 3) and strip.shape[0] > 32 and strip.std() > 5  # titles, 5 tiles, legend
    assert "estimated total" in result.output and "measured" in result.output  # the time estimate
    for k, stage in enumerate(("source", "prototypes", "proca", "pseudo-label", "ssl"), start=1):
        assert f"stage {k}/5 {stage}" in result.output  # the whole-run progress line
    assert "ETA of the whole run" in result.output
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    later = tmp_path / "later.json"  # the JSON of a finished demo, without training again
    reused = CliRunner().invoke(app, ["demo", "--out", str(out), "--json", str(later), "--threads", "1"])
    assert reused.exit_code == 0 and "nothing retrained" in reused.output, reused.output
    assert json.loads(later.read_text()) == summary


def test_json_reuse_matches_the_budget(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text(json.dumps({"final_miou": 20.0, "quick": True}))
    assert demo._finished_summary(tmp_path, quick=True) == {"final_miou": 20.0, "quick": True}
    assert demo._finished_summary(tmp_path, quick=False) is None  # a quick demo is not the full one
    (tmp_path / "demo.json").write_text(json.dumps({"final_miou": 25.0}))  # written before --quick existed
    assert demo._finished_summary(tmp_path, quick=False) == {"final_miou": 25.0}
    assert demo._finished_summary(tmp_path / "none", quick=False) is None


def test_quick_is_refused_with_the_daformer_recipe(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--quick", "--recipe", "daformer", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--quick" in result.output and not (tmp_path / "d").exists()
