"""Resume: a ProCA stage killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from proca.engine.state import capture_rng, load_training_state, restore_rng, save_training_state

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

CONFIG = """
num_workers = 0
log_every = 1
checkpoint_every = 2
[source]
iters = 2
poly_iters = 2
[proca]
iters = 6
poly_iters = 6
[eval]
max_images = 1
"""


def _args(synth: Path, run: Path, config: Path) -> list[str]:
    return [
        "--data-root", str(synth), "--out", str(run), "--arch", "deeplabv2_resnet18", "--input-size", "32x64",
        "--batch-size", "2", "--device", "cpu", "--config", str(config),
    ]  # fmt: skip


def _proca(run: Path, config: Path, synth: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "proca.cli", "train", "--stage", "proca", *_args(synth, run, config), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _tail(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode(errors="replace")[-2000:]


def _kill_after_first_state(proc: subprocess.Popen[bytes], state: Path) -> None:
    """SIGKILL ``proc`` as soon as its first resumable state file appears (mid-stage)."""
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_state_roundtrip_restores_optimizer_and_rng(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    rng = capture_rng()
    expected = torch.rand(3)
    save_training_state(tmp_path / "s.safetensors", model=model, optimizer=opt, info={"iteration": 7}, rng=rng)
    state = load_training_state(tmp_path / "s.safetensors")
    assert state.info == {"iteration": 7}
    opt2 = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.5, momentum=0.9)
    opt2.load_state_dict(state.optimizer)
    assert opt2.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(
        opt2.state_dict()["state"][0]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"]
    )
    restore_rng(state.rng)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    from proca.data.synthetic import write_synthetic_datasets
    from proca.models import load_model
    from tests.engine._train import train as run_train

    synth = tmp_path / "synth"
    write_synthetic_datasets(synth, seed=1, num_train=4, num_val=1, size=(32, 64), progress=False)
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    base = tmp_path / "base"
    common: dict[str, Any] = {
        "data_root": synth, "out": base, "arch": "deeplabv2_resnet18", "input_size": (32, 64), "batch_size": 2,
        "device": "cpu", "config": config, "progress": False,
    }  # fmt: skip
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1: the same kernels, the same sums
    try:
        run_train(stage="source", **common)
        run_train(stage="prototypes", **common)
        shutil.copytree(base, ref)
        shutil.copytree(base, killed)
        victim = _proca(killed, config, synth)
        killer = threading.Thread(target=_kill_after_first_state, args=(victim, killed / "state" / "proca.safetensors"))
        killer.start()
        run_train(stage="proca", **{**common, "out": ref})  # the uninterrupted reference, meanwhile
        killer.join()
    finally:
        torch.set_num_threads(threads)
    assert victim.returncode == -signal.SIGKILL, "the run ended before it was killed: " + _tail(victim)
    assert not (killed / "proca.safetensors").exists() and (killed / "state" / "proca.safetensors").exists()

    resumed = _proca(killed, config, synth, "--resume")
    assert resumed.wait() == 0, _tail(resumed)
    a, b = load_model(ref / "proca.safetensors"), load_model(killed / "proca.safetensors")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=name)
    for name, x in a.prototypes.items():
        torch.testing.assert_close(b.prototypes[name], x, rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(x) for x in (killed / "proca.log.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in steps if "event" not in r]
    assert iterations == list(range(1, 7))  # records after the last checkpoint were dropped on resume
