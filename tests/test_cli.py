"""The CLI skeleton: help, version, the nine subcommands, start-up time and error style."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from proca import __version__
from proca.cli import app

runner = CliRunner()

COMMANDS = ["synth", "label-info", "train", "pseudo-label", "eval", "infer", "convert", "export", "demo"]


def test_help_lists_every_subcommand() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from proca.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_size_is_a_usage_error() -> None:
    result = runner.invoke(app, ["synth", "--out", "x", "--size", "big"])
    assert result.exit_code == 2
    assert "HxW" in result.output
