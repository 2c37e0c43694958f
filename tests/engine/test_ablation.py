"""The ablation runner on a tiny budget: one source model per seed, rows from it, mean/std tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proca.engine.ablation import ABLATION_ROWS, AblationBudget, AblationRow, format_markdown, run_ablation, summarize
from proca.errors import ConfigError

TINY = AblationBudget(
    num_train=3,
    num_val=1,
    size=(32, 64),
    overrides=("source.iters=2", "source.poly_iters=2", "proca.iters=2", "proca.poly_iters=2",
               "source.batch_size=2", "proca.batch_size=2", "source.class_balanced=false",
               "proca.class_balanced=false"),
    daformer_overrides=("daformer.iters=2", "daformer.crop_size=[32, 32]", "daformer.rcs_min_pixels=10"),
)  # fmt: skip


@pytest.mark.slow
def test_two_rows_one_seed_from_one_source_model(tmp_path: Path) -> None:
    rows = (ABLATION_ROWS[0], ABLATION_ROWS[2])  # source only; ProCA stage with contrast off
    summary = run_ablation(tmp_path, seeds=[0], rows=rows, budget=TINY, progress=False, say=lambda m: None)
    table = {entry["row"]: entry for entry in summary["table"]}
    assert set(table) == {"source only", "ProCA stage, contrast off"}
    for entry in table.values():
        assert 0.0 <= entry["mean"] <= 100.0 and entry["std"] is None and entry["seeds"] == 1
    row_dir = tmp_path / "seed0" / rows[1].slug
    source = tmp_path / "seed0" / "source" / "source.safetensors"
    assert (row_dir / "source.safetensors").samefile(source) or (row_dir / "source.safetensors").read_bytes() == (
        source.read_bytes()
    )  # the row started from the seed's one source model
    config = json.loads((row_dir / "config.json").read_text())
    assert config["proca"]["lambda_feat"] == 0 and config["proca"]["lambda_out"] == 0
    assert config["proca"]["iters"] == 2 and config["seed"] == 0
    on_disk = json.loads((tmp_path / "ablation.json").read_text())
    assert on_disk["table"][1]["overrides"] == ["proca.lambda_feat=0", "proca.lambda_out=0"]
    assert (
        "| ProCA stage, contrast off | `proca.lambda_feat=0` `proca.lambda_out=0` |"
        in (tmp_path / "ablation.md").read_text()
    )
    again = run_ablation(tmp_path, seeds=[0], rows=rows, budget=TINY, progress=False, say=lambda m: None)
    assert again["table"] == summary["table"]  # finished rows are read back, not retrained

    # another target shift from the same source models: shared (same source bytes), evaluated on its own target
    other = tmp_path / "class"
    shared = run_ablation(other, seeds=[0], rows=ABLATION_ROWS[:2], budget=TINY, class_shift=1.0, progress=False,
                          say=lambda m: None, source_from=tmp_path)  # fmt: skip
    assert (other / "seed0" / "source" / "source.safetensors").samefile(source)
    assert json.loads((other / "data" / "seed0" / "synthetic.json").read_text())["class_shift"] == 1.0
    assert shared["settings"]["source_from"] == str(tmp_path) and shared["table"][1]["seeds"] == 1


def test_a_daformer_row_runs_its_stage_with_its_overrides(tmp_path: Path) -> None:
    rows = tuple(row for row in ABLATION_ROWS if row.kind == "daformer")
    assert [row.overrides for row in rows] == [
        ("daformer.source_only=true",), ("daformer.prototype_contrast=none",),
        ("daformer.prototype_contrast=prototype",), ("daformer.prototype_contrast=distribution",),
    ]  # fmt: skip
    row = rows[2]
    summary = run_ablation(tmp_path, seeds=[0], rows=(row,), budget=TINY, progress=False, say=lambda m: None)
    (entry,) = summary["table"]
    assert entry["row"] == "DAFormer, prototype_contrast=prototype" and 0.0 <= entry["mean"] <= 100.0
    row_dir = tmp_path / "seed0" / row.slug
    assert (row_dir / "daformer.safetensors").is_file()
    config = json.loads((row_dir / "config.json").read_text())
    assert config["arch"] == "daformer_mit_b0" and config["seed"] == 0
    assert config["daformer"]["prototype_contrast"] == "prototype" and not config["daformer"]["source_only"]
    assert config["daformer"]["iters"] == 2 and config["daformer"]["crop_size"] == [32, 32]
    assert config["daformer"]["source_size"] == [32, 64] and config["eval"]["input_size"] == [32, 64]
    assert not (tmp_path / "seed0" / "source").exists()  # no ResNet source model is trained for it
    assert (
        "| DAFormer, prototype_contrast=prototype | `daformer.prototype_contrast=prototype` |"
        in (tmp_path / "ablation.md").read_text()
    )


def test_summary_is_mean_and_sample_std() -> None:
    rows = (AblationRow("a", "source"),)
    per_seed = {0: {"a": {"miou": 10.0, "seconds": 1.0}}, 1: {"a": {"miou": 14.0, "seconds": 3.0}}}
    (entry,) = summarize(per_seed, rows)
    assert entry["mean"] == 12.0 and entry["std"] == pytest.approx(2.8284271, rel=1e-6)
    assert entry["seconds_mean"] == 2.0
    assert "| a | - | 10.00 | 14.00 | **12.00 +/- 2.83** | 2 |" in format_markdown([entry], [0, 1])


def test_bad_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one row"):
        run_ablation(tmp_path, seeds=[0], rows=(), budget=TINY, progress=False)
