"""The process torchrun starts for ``proca train --gpus N`` / ``--nproc N``.

``python -m proca.engine.worker RUN_OPTIONS_JSON [debug]`` (positional arguments: torchrun would read
options as its own) reads the resolved configuration that the launching ``proca train`` wrote to
``RUN/config.json`` (no command line is parsed a second time) and runs the pipeline as one process of
the group. User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    from proca.errors import report_user_errors

    parser = argparse.ArgumentParser(prog="python -m proca.engine.worker")
    parser.add_argument("run", help="the run options as JSON")
    parser.add_argument("debug", nargs="?", default="", help="'debug': show tracebacks")
    args = parser.parse_args(argv)
    with report_user_errors(debug=args.debug == "debug") as status:
        from proca.config import TrainConfig
        from proca.engine.train import RunOptions, run_local

        run = RunOptions.from_json(args.run)
        cfg = TrainConfig.model_validate(json.loads((run.out / "config.json").read_text(encoding="utf-8")))
        run_local(cfg, run, checked=True)
    return status.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
