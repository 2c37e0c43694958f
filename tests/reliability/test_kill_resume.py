"""Fault injection: ``kill -9`` a short ``proca train`` at random points, resume, compare with an uninterrupted run.

A reference run trains uninterrupted. A second run in another folder is SIGKILLed several times (at a
random time after start-up, and at random delays after chosen iterations were logged, which lands in
steps, in checkpoint writes or between them), resumed with ``--resume`` after each kill, and finally
let finish. After every kill, every ``.safetensors`` file in the run folder must load (no truncated file
under a final name), and the final weights must equal the reference's (to 1e-6). The same is done for
the ProCA stage, starting from the reference's source model and prototypes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ITERS = 5
COMMON = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", str(ITERS), "--checkpoint-every", "1"]
COMMON += ["--device", "cpu", "--set", "num_workers=0", "--set", "log_every=1", "--set", "eval.max_images=1"]
COMMON += ["--set", "source.eval_every=0", "--set", "proca.eval_every=0", "--set", "source.batch_size=2"]
COMMON += ["--set", "proca.batch_size=2", "--set", "prototypes.max_images=4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(data_root: Path, out: Path, stage: str, *extra: str) -> list[str]:
    args = ["train", "--data-root", str(data_root), "--out", str(out), "--stage", stage, *COMMON, *extra]
    return [sys.executable, "-m", "proca.cli", *args]


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]


def _logged_iteration(log: Path) -> int:
    if not log.is_file():
        return 0
    last = 0
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            last = max(last, int(json.loads(line).get("iteration", 0)))
        except ValueError:
            continue
    return last


def _kill_at(cmd: list[str], log: Path, *, after_iteration: int | None, delay: float) -> str:
    """Start ``cmd``; SIGKILL it ``delay`` s after ``log`` shows ``after_iteration`` (or after start-up)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while after_iteration is not None and _logged_iteration(log) < after_iteration:
            if proc.poll() is not None:
                break
            assert time.monotonic() < deadline, "the run never reached the kill point"
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            temps = sorted(p.name for p in log.parent.rglob(".*.tmp"))
            return (
                f"killed {delay:.2f} s after iteration {after_iteration} (logged {_logged_iteration(log)}); "
                f"temporary files left by an interrupted write: {temps or 'none'}"
            )
        assert proc.returncode == 0, proc.stderr.read()[-3000:] if proc.stderr else ""
        return "finished before the kill"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


def _assert_loadable(run: Path) -> None:
    """Every file under a final name is complete: it loads (temporary files of the killed write may remain)."""
    from proca.models import load_model
    from proca.models.checkpoint import load_state

    for path in run.rglob("*.safetensors"):
        if path.parent.name == "state":
            load_state(path)
        elif path.name != "prototypes.safetensors":
            load_model(path)
    for path in run.glob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))


def _assert_same_weights(a: Path, b: Path) -> float:
    from proca.models import load_model

    wa, wb = load_model(a).model.state_dict(), load_model(b).model.state_dict()
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa)
    assert worst <= 1e-6, f"{a} and {b} differ by {worst}"
    return worst


def _kill_and_resume(cmd: list[str], run: Path, stage: str, points: list[tuple[int | None, float]]) -> list[str]:
    log = run / f"{stage}.log.jsonl"
    notes = []
    for after, delay in points:
        notes.append(_kill_at([*cmd, "--resume"], log, after_iteration=after, delay=delay))
        _assert_loadable(run)
    _run([*cmd, "--resume"])
    return notes


def test_kill9_resume_equals_uninterrupted(data_root: Path, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("PROCA_KILL_SEED", "0")))
    ref, run = tmp_path / "reference", tmp_path / "killed"

    # source stage: 3 kills (one at a random time after start, two at random delays after iterations)
    _run(_cmd(data_root, ref, "source"))
    source_points: list[tuple[int | None, float]] = [(None, rng.uniform(2.0, 5.0))]
    source_points += [(k, rng.uniform(0.0, 0.4)) for k in sorted(rng.sample(range(1, ITERS), 2))]
    notes = _kill_and_resume(_cmd(data_root, run, "source"), run, "source", source_points)
    worst = _assert_same_weights(ref / "source.safetensors", run / "source.safetensors")
    notes.append(f"source: largest weight difference {worst}")

    # ProCA stage from the reference's source model and prototypes: 2 kills
    _run(_cmd(data_root, ref, "prototypes"))
    _run(_cmd(data_root, ref, "proca"))
    proca_run = tmp_path / "killed_proca"
    proca_run.mkdir()
    for name in ("source.safetensors", "prototypes.safetensors", "config.json", "gtav_label_info.json"):
        shutil.copy(ref / name, proca_run / name)
    proca_points = [(k, rng.uniform(0.0, 0.4)) for k in sorted(rng.sample(range(1, ITERS), 2))]
    notes += _kill_and_resume(_cmd(data_root, proca_run, "proca"), proca_run, "proca", proca_points)
    worst = _assert_same_weights(ref / "proca.safetensors", proca_run / "proca.safetensors")
    notes.append(f"proca: largest weight difference {worst}")
    killed = [n for n in notes if n.startswith("killed")]
    assert len(killed) >= 3, notes
    print("\n".join(notes))
