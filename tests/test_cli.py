"""The CLI skeleton: help, version, the nine subcommands, start-up time and error style."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from proca import __version__
from proca.cli import app

runner = CliRunner()

COMMANDS = ["synth", "label-info", "train", "pseudo-label", "adapt-bn", "eval", "infer", "convert", "export", "demo"]


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


def _warn_from_proca(message: str) -> None:
    import warnings

    import proca.engine.setup

    warnings.warn_explicit(message, UserWarning, filename=proca.engine.setup.__file__, lineno=1)


def test_proca_warnings_are_one_line_without_source(capsys) -> None:
    import warnings

    from proca.cli import _state, _user_errors

    with warnings.catch_warnings(record=True) as passed_on:
        warnings.simplefilter("always")
        handler = warnings.showwarning
        with _user_errors():
            _warn_from_proca("no --backbone-weights: random init")
            warnings.warn_explicit("someone else's", UserWarning, filename="/elsewhere/lib.py", lineno=3)
        assert warnings.showwarning is handler  # restored after the command
        quiet = capsys.readouterr().err
        assert [str(w.message) for w in passed_on] == ["someone else's"]  # not proca's: the usual handler
        _state["debug"] = True
        try:
            with _user_errors():
                _warn_from_proca("no --backbone-weights: random init")
        finally:
            _state["debug"] = False
        loud = capsys.readouterr().err
    assert quiet.splitlines() == ["warning: no --backbone-weights: random init"], quiet
    assert loud == "" and str(passed_on[-1].message).startswith("no --backbone-weights")  # --debug: as Python does
    assert passed_on[-1].filename.endswith("setup.py")


def test_python_m_proca_help(tmp_path) -> None:
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "proca", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "pseudo-label" in done.stdout, done.stderr
