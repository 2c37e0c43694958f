"""``proca train --recipe daformer``: every prototype_contrast value, teacher/student validation, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from proca.cli import app

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")

# pseudo_threshold 0: every target pixel gets weight 1, so the student depends on the teacher from step 1
TINY = [
    "num_workers=0", "log_every=1", "adamw.warmup_iters=1", "eval.max_images=1", "daformer.rcs_min_pixels=10",
    "daformer.pseudo_threshold=0.0", "daformer.pseudo_ignore_top=2", "daformer.pseudo_ignore_bottom=4",
    "daformer.fd_classes=null", "daformer.crop_size=[32,32]", "daformer.eval_every=2", "daformer.mic_block_size=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path_factory.mktemp("daformer") / "synth"
    write_synthetic_datasets(root, seed=3, num_train=4, num_val=1, size=(32, 64), progress=False)
    return root


def _args(synth: Path, run: Path, *sets: str, iters: int = 2) -> list[str]:
    args = ["train", "--recipe", "daformer", "--data-root", str(synth), "--out", str(run), "--arch", "daformer_mit_b0"]
    args += ["--input-size", "32x64", "--iters", str(iters), "--batch-size", "2", "--device", "cpu"]
    for item in [*TINY, *sets]:
        args += ["--set", item]
    return args


def _log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "daformer.log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("contrast", ["none", "prototype", "distribution"])
def test_each_prototype_contrast_completes_logs_its_term_and_the_checkpoint_evaluates(
    synth: Path, tmp_path: Path, contrast: str
) -> None:
    from proca.engine.evaluate import evaluate
    from proca.models import load_model

    run = tmp_path / "run"
    sets = [f"daformer.prototype_contrast={contrast}", "daformer.mic=true"]
    result = CliRunner().invoke(app, _args(synth, run, *sets))
    assert result.exit_code == 0, result.output
    steps = [r for r in _log(run) if "event" not in r]
    assert [r["iteration"] for r in steps] == [1, 2]
    for key in ("src_ce", "feat_dist", "mix_ce", "mic_ce", "total"):
        assert all(key in r for r in steps), key
    assert steps[-1]["feat_dist"] > 0  # the student has moved away from its ImageNet copy
    assert steps[-1]["mic_ce"] > 0
    assert all(("contrast" in r) == (contrast != "none") for r in steps)
    if contrast != "none":
        assert all(r["contrast"] > 0 for r in steps)
    evals = [r for r in _log(run) if r.get("event") == "eval"]
    assert [r["iteration"] for r in evals] == [2] and "teacher_miou" in evals[0]
    loaded = load_model(run / "daformer.safetensors")
    assert loaded.metadata["stage"] == "daformer" and loaded.model.arch == "daformer_mit_b0"
    assert ("feature.prototypes" in loaded.prototypes) == (contrast != "none")
    if contrast == "distribution":
        assert loaded.prototypes["feature.variance"].shape == (19, loaded.model.feature_dim)
    from proca.data.classes import CITYSCAPES_19
    from proca.data.datasets import CityscapesDataset

    val = CityscapesDataset(synth / "cityscapes", split="val", class_set=CITYSCAPES_19)
    scored = evaluate(
        loaded.model, val, class_set=CITYSCAPES_19, input_size=(32, 64), device="cpu", progress=False, num_workers=0
    )
    assert scored.miou == pytest.approx(evals[0]["miou"])
    assert not (run / "state").exists() or not any((run / "state").iterdir())


def test_keep_teacher_saves_the_teacher_and_logs_the_student(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(app, _args(synth, run, "daformer.keep=teacher", "daformer.mix=none"))
    assert result.exit_code == 0, result.output
    evals = [r for r in _log(run) if r.get("event") == "eval"]
    assert "student_miou" in evals[0] and "teacher_miou" not in evals[0]


def test_recipe_errors_are_one_line(synth: Path, tmp_path: Path) -> None:
    stage = CliRunner().invoke(app, [*_args(synth, tmp_path / "a"), "--stage", "source"])
    assert stage.exit_code == 2 and "--recipe daformer has one stage" in stage.output
    args = _args(synth, tmp_path / "b")
    args[args.index("daformer_mit_b0")] = "deeplabv2_resnet18"
    deeplab = CliRunner().invoke(app, args)
    assert deeplab.exit_code == 2 and "needs a Mix Transformer network" in deeplab.output
    assert "Traceback" not in deeplab.output


def test_print_config_has_the_daformer_section_and_synthia_preset() -> None:
    result = CliRunner().invoke(app, ["train", "--recipe", "daformer", "--src", "synthia", "--print-config"])
    assert result.exit_code == 0, result.output
    section = json.loads(result.output)["daformer"]
    assert section["iters"] == 40000 and section["ema_alpha"] == 0.999 and section["pseudo_threshold"] == 0.968
    assert section["source_size"] == [760, 1280] and section["fd_classes"] == [6, 7, 10, 11, 12, 13, 14, 15]
    assert section["mic"] is False and section["mic_block_size"] == 64 and section["mic_ratio"] == 0.7


def _cli(run: Path, synth: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    sets = ["daformer.prototype_contrast=prototype", "daformer.mic=true", "checkpoint_every=2", "daformer.eval_every=0"]
    cmd = [sys.executable, "-m", "proca.cli", *_args(synth, run, *sets, iters=6), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_equals_uninterrupted(synth: Path, tmp_path: Path) -> None:
    from proca.models import load_model

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    victim = _cli(killed, synth)
    state = killed / "state" / "daformer.safetensors"

    def kill() -> None:
        import time

        deadline = time.monotonic() + 300
        while not state.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
        victim.wait()

    killer = threading.Thread(target=kill)
    killer.start()
    reference = _cli(ref, synth)
    assert reference.wait() == 0
    killer.join()
    assert victim.returncode == -signal.SIGKILL, "the run ended before it was killed"
    assert not (killed / "daformer.safetensors").exists() and state.exists()
    resumed = _cli(killed, synth, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode() if resumed.stderr else ""
    a, b = load_model(ref / "daformer.safetensors"), load_model(killed / "daformer.safetensors")
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=1e-6, msg=name)
    for name, x in a.prototypes.items():
        torch.testing.assert_close(b.prototypes[name], x, rtol=0, atol=1e-6, msg=name)
    steps = [r for r in _log(killed) if "event" not in r]
    assert [r["iteration"] for r in steps] == list(range(1, 7))
    assert [r["contrast"] for r in steps] == [r["contrast"] for r in _log(ref) if "event" not in r]


@pytest.mark.slow
@pytest.mark.distributed
def test_nproc_2_keeps_teacher_imagenet_copy_and_prototypes_identical(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = _args(synth, run, "daformer.prototype_contrast=prototype")
    args[args.index("--batch-size") + 1] = "4"
    result = CliRunner().invoke(app, [*args, "--nproc", "2"])
    assert result.exit_code == 0, result.output
    events = _log(run)
    for group in ("teacher", "imagenet", "prototypes"):
        assert {"event": f"{group}_synced", "iteration": 2, "identical": True} in events, group


def test_a_bare_resume_finds_the_recipe_and_the_other_recipe_is_refused(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(app, _args(synth, run, iters=1))
    assert result.exit_code == 0, result.output
    before = (run / "daformer.safetensors").read_bytes()
    # no --recipe, no options: the run's recipe (its files) and its config (RUN/config.json)
    bare = ["train", "--data-root", str(synth), "--out", str(run), "--device", "cpu", "--resume"]
    result = CliRunner().invoke(app, bare)
    assert result.exit_code == 0, result.output
    assert (run / "daformer.safetensors").read_bytes() == before  # finished: nothing retrained
    result = CliRunner().invoke(app, [*bare, "--recipe", "proca"])
    assert result.exit_code == 2
    assert "holds a --recipe daformer run; pass --recipe daformer" in " ".join(result.output.split())
