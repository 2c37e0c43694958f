"""Pseudo labels: histogram thresholds against the release's exact sort, application, files, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from proca.cli import app
from proca.data.classes import CITYSCAPES_19, ClassSet
from proca.engine.pseudo_label import (
    ConfidenceHistogram,
    apply_thresholds,
    confidence_bins,
    exact_thresholds,
    generate_pseudo_labels,
    pseudo_label_path,
)
from proca.errors import ConfigError

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def release_thresholds(prob: np.ndarray, label: np.ndarray, num_classes: int, percent: float, cap: float) -> np.ndarray:
    """The release's PseudoLabel.get_threshold_const, re-typed here for the comparison."""
    thres = []
    for i in range(num_classes):
        x = prob[label == i]
        if len(x) == 0:
            thres.append(0)
            continue
        x = np.sort(x)
        thres.append(x[int(np.round(len(x) * percent))])
    out = np.array(thres, dtype=np.float64)
    out[out > cap] = cap
    return out


@pytest.mark.parametrize("percent", [0.0, 0.25, 0.5, 0.6, 0.95])
@pytest.mark.parametrize("bins", [100, 10_000])
def test_histogram_thresholds_vs_exact_sort(percent: float, bins: int) -> None:
    g = torch.Generator().manual_seed(int(percent * 100) + bins)
    num_classes = 6
    probs = torch.softmax(torch.randn(3, num_classes, 40, 50, generator=g) * 3, dim=1)
    conf, labels = probs.max(dim=1)
    labels[labels == 5] = 4  # class 5 never predicted -> threshold 0
    hist = ConfidenceHistogram(num_classes, bins=bins)
    for i in range(3):
        hist.update(conf[i], labels[i])
    cap = 0.9
    exact = exact_thresholds(conf, labels, num_classes, percent=percent, cap=cap)
    ref = release_thresholds(conf.numpy(), labels.numpy(), num_classes, percent, cap)
    assert np.allclose(exact.numpy(), ref)
    approx = hist.thresholds(percent=percent, cap=cap)
    assert approx[5] == 0 and exact[5] == 0
    # The histogram threshold is the lower edge of the exact value's bin: within one bin width, never above.
    assert torch.all(approx <= exact + 1e-7)
    assert torch.all(exact - approx < 1.0 / bins + 1e-7)
    # Kept pixels: a superset of the exact rule's, the extras only from the threshold's own bin.
    tb = hist.threshold_bins(percent=percent, cap=cap)
    kept = apply_thresholds(conf, labels, tb, bins) != 255
    exact_kept = conf.double() >= exact[labels]
    assert torch.all(kept | ~exact_kept)
    extra = kept & ~exact_kept
    assert torch.all(confidence_bins(conf[extra], bins) == tb[labels[extra]])


def test_cap_and_counts() -> None:
    hist = ConfidenceHistogram(2, bins=10)
    conf = torch.tensor([0.95, 0.97, 0.99, 0.2, 0.3])
    labels = torch.tensor([0, 0, 0, 1, 1])
    hist.update(conf, labels)
    assert hist.pixels.tolist() == [3, 2]
    t = hist.thresholds(percent=0.5, cap=0.9)
    assert t[0] == pytest.approx(0.9)  # capped (0.97 -> bin 9 = 0.9, cap bin 9)
    assert t[1] == pytest.approx(0.3)  # round(0.5 * 2) = 1 -> 0.3 -> bin 3
    out = apply_thresholds(conf, labels, hist.threshold_bins(percent=0.5, cap=0.9), 10)
    assert out.tolist() == [0, 0, 0, 255, 1]
    with pytest.raises(ConfigError):
        ConfidenceHistogram(2, bins=1)


def test_percent_one_does_not_overflow() -> None:
    conf = torch.tensor([0.5, 0.6])
    labels = torch.tensor([0, 0])
    hist = ConfidenceHistogram(1, bins=1000)
    hist.update(conf, labels)
    assert hist.thresholds(percent=1.0, cap=1.0)[0] == pytest.approx(0.6)
    assert exact_thresholds(conf, labels, 1, percent=1.0, cap=1.0)[0] == pytest.approx(0.6)


class Bias(nn.Module):
    """Stride-8 stand-in whose class scores follow the image's channels."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) * 4


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return dict(self.samples[i])


@pytest.mark.parametrize("cache_bytes", [0, 1 << 20])
def test_generate_pseudo_labels_in_memory(tmp_path: Path, cache_bytes: int) -> None:
    torch.manual_seed(0)
    cs = ClassSet("tiny", ("road", "sidewalk", "building"))
    samples = [
        {
            "image": torch.randn(3, 16, 32),
            "label": torch.randint(0, 3, (32, 64)),
            "name": f"c/c_{i:06d}_000019",
            "path": "",
        }
        for i in range(3)
    ]
    stats = generate_pseudo_labels(
        Bias(), ListDataset(samples), tmp_path, class_set=cs, input_size=None, progress=False, cache_bytes=cache_bytes
    )
    # Reference: the exact rule on the same probabilities at the label resolution.
    from proca.engine.predict import predict_probs

    probs = torch.cat([predict_probs(Bias(), s["image"][None], out_size=(32, 64)) for s in samples])
    conf, labels = probs.max(1)
    exact = exact_thresholds(conf, labels, 3, percent=0.6, cap=0.9)
    assert np.allclose(stats.thresholds, exact.numpy(), atol=1e-4)
    assert stats.pixels == torch.bincount(labels.reshape(-1), minlength=3).tolist()
    written = np.stack([np.array(Image.open(pseudo_label_path(tmp_path, s["name"]))) for s in samples])
    assert written.shape == (3, 32, 64)
    assert Image.open(pseudo_label_path(tmp_path, samples[0]["name"])).mode == "P"
    assert set(np.unique(written)) <= {0, 1, 2, 255}
    assert [(written == c).sum() for c in range(3)] == stats.kept
    keep = written != 255
    assert np.array_equal(written[keep], labels.numpy()[keep])
    info = json.loads((tmp_path / "thresholds.json").read_text())
    assert info["percent"] == 0.6 and info["cap"] == 0.9 and info["max_threshold_error"] == 1e-4
    assert set(info["classes"]) == set(cs.classes) and info["quality"]["miou"] >= 0
    assert 0.3 < info["kept_fraction"] < 0.6


@pytest.mark.slow
def test_cli_pseudo_label_round_trip(tmp_path: Path) -> None:
    from proca.models import build_model, save_model

    data = tmp_path / "cityscapes"
    rng = np.random.default_rng(0)
    for k, city in enumerate(("aachen", "bochum")):
        for sub, arr, suffix in (
            ("leftImg8bit", rng.integers(0, 256, (32, 64, 3), dtype=np.uint8), "leftImg8bit"),
            ("gtFine", rng.choice(np.array([0, 7, 8, 11, 21, 23, 26], dtype=np.uint8), (32, 64)), "gtFine_labelIds"),
        ):
            path = data / sub / "train" / city / f"{city}_{k:06d}_{19 + k:06d}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    ckpt = tmp_path / "m.safetensors"
    torch.manual_seed(0)
    save_model(build_model("deeplabv2_resnet18", num_classes=19), ckpt, metadata={"eval_input_size": [16, 32]})
    out = tmp_path / "pl"
    result = runner.invoke(app, ["pseudo-label", str(ckpt), "--data-root", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "threshold" in result.output
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["aachen/aachen_000000_000019.png", "bochum/bochum_000001_000020.png"]
    from proca.data.datasets import PseudoLabelDataset

    ds = PseudoLabelDataset(data, out, split="train", class_set=CITYSCAPES_19)
    assert ds[0]["label"].shape == (32, 64)
    first = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    manifest = json.loads((out / "thresholds.json").read_text())["manifest"]
    assert manifest["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert manifest["percent"] == 0.6 and manifest["input_size"] == [16, 32] and manifest["num_images"] == 2
    stamp = (out / "thresholds.json").stat().st_mtime_ns
    # the same checkpoint and settings into the same folder: up to date, nothing rewritten
    again = runner.invoke(app, ["pseudo-label", str(ckpt), "--data-root", str(data), "--out", str(out)])
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    assert (out / "thresholds.json").stat().st_mtime_ns == stamp
    # other settings, or another checkpoint: refused in one line naming what differs and --force
    other = runner.invoke(app, ["pseudo-label", str(ckpt), "--data-root", str(data), "--out", str(out),
                                "--percent", "0.5"])  # fmt: skip
    assert other.exit_code == 2 and "percent 0.6 -> 0.5" in other.output and "--force" in other.output
    ckpt2 = tmp_path / "m2.safetensors"
    save_model(build_model("deeplabv2_resnet18", num_classes=19), ckpt2, metadata={"eval_input_size": [16, 32]})
    moved = runner.invoke(app, ["pseudo-label", str(ckpt2), "--data-root", str(data), "--out", str(out)])
    assert moved.exit_code == 2 and "another SHA-256" in moved.output and "--force" in moved.output
    assert (out / "thresholds.json").stat().st_mtime_ns == stamp
    # a non-empty folder that is not one of proca's pseudo-label folders: refused as before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["pseudo-label", str(ckpt), "--data-root", str(data), "--out", str(foreign)])
    assert refused.exit_code == 2 and "not empty" in refused.output and "--force" in refused.output
    # --data-root may also name the datasets folder holding cityscapes/ (as proca train does): same labels.
    forced = runner.invoke(app, ["pseudo-label", str(ckpt), "--data-root", str(tmp_path), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert {p.name: p.read_bytes() for p in out.rglob("*.png")} == first


def _samples() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    return [
        {
            "image": torch.randn(3, 16, 32, generator=g),
            "label": torch.randint(0, 3, (32, 64), generator=g),
            "name": f"c/c_{i:06d}_000019",
            "path": "",
        }
        for i in range(5)
    ]


def _distributed_worker(rank: int, port: int, out: str, queue: object) -> None:
    import torch.distributed as dist

    from proca.engine.evaluate import evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    cs = ClassSet("tiny", ("road", "sidewalk", "building"))
    stats = generate_pseudo_labels(
        Bias(), ListDataset(_samples()), out, class_set=cs, input_size=None, progress=False, distributed=True
    )
    result = evaluate(Bias(), ListDataset(_samples()), class_set=cs, input_size=None, progress=False, distributed=True)
    queue.put((rank, stats.thresholds, stats.kept, result.confusion.tolist(), result.num_images))  # type: ignore[attr-defined]
    dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_sharding_equals_one_process(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    from proca.engine.evaluate import evaluate

    cs = ClassSet("tiny", ("road", "sidewalk", "building"))
    single = generate_pseudo_labels(
        Bias(), ListDataset(_samples()), tmp_path / "one", class_set=cs, input_size=None, progress=False
    )
    reference = evaluate(Bias(), ListDataset(_samples()), class_set=cs, input_size=None, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distributed_worker, args=(r, port, str(tmp_path / "two"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r[0], r[1:]) for r in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    for rank in (0, 1):
        thresholds, kept, confusion, num_images = results[rank]
        assert thresholds == single.thresholds and kept == single.kept
        assert confusion == reference.confusion.tolist() and num_images == 5
    one = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*.png"))
    two = sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*.png"))
    assert one == two
    for rel in one:
        assert np.array_equal(
            np.array(Image.open(tmp_path / "one" / rel)), np.array(Image.open(tmp_path / "two" / rel))
        )


def test_cli_pseudo_label_of_a_folder_of_photos(tmp_path: Path) -> None:
    from proca.models import build_model, save_model

    footage = tmp_path / "footage"
    rng = np.random.default_rng(1)
    for rel, size in (("day1/a.jpg", (40, 60)), ("day2/a.jpg", (30, 50)), ("b.png", (36, 64))):
        (footage / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(footage / rel)
    ckpt = tmp_path / "m.safetensors"
    save_model(build_model("deeplabv2_resnet18", num_classes=19), ckpt, metadata={"eval_input_size": [16, 32]})
    out = tmp_path / "pl"
    args = ["pseudo-label", str(ckpt), "--tgt", str(footage), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    # named as the recipe names them: the path under the folder, nested folders kept, each at its image's size
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["b.png", "day1/a.png", "day2/a.png"]
    assert Image.open(out / "day2" / "a.png").size == (50, 30)
    manifest = json.loads((out / "thresholds.json").read_text())["manifest"]
    assert manifest["target"] == str(footage.resolve()) and manifest["num_images"] == 3
    assert runner.invoke(app, args).exit_code == 0  # up to date
    result = runner.invoke(app, [*args, "--split", "val"])
    assert result.exit_code == 2 and "--split applies to a built-in --tgt" in result.output
