"""`proca train` checks its inputs before it writes anything."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from proca.cli import app

runner = CliRunner()


def test_missing_data_root_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "--data-root", str(tmp_path / "nowhere"), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 2
    assert "gtav" in result.output and "does not exist" in result.output and "proca synth" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_unknown_arch_lists_valid_names_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--arch", "deeplabv2_resnet34", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2
    assert "deeplabv2_resnet101" in result.output and "deeplabv2_resnet18" in result.output
    assert not out.exists()
