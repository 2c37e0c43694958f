"""Evaluation end to end: the metric equals the official evaluator's formula on our saved label-id PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from proca.cli import app
from proca.data.classes import CITYSCAPES_19, CITYSCAPES_LABELS, SYNTHIA_16
from proca.engine.encode import prediction_path, save_prediction
from proca.engine.evaluate import EvalResult, evaluate
from proca.errors import ConfigError, DataError

runner = CliRunner()

# Cityscapes label ids used in the ground truth: most 19-class ids, a few ignored ones (0, 4, 6), and no
# train (31) so that class is n/a where it is never predicted.
GT_IDS = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 32, 33, 0, 4, 6])


def write_cityscapes(root: Path, *, size: tuple[int, int] = (32, 64), val: int = 3, train: int = 2) -> Path:
    """A tiny Cityscapes layout: leftImg8bit/ and gtFine/ with official names."""
    rng = np.random.default_rng(0)
    for split, n in (("val", val), ("train", train)):
        for k in range(n):
            city = ("aachen", "bochum")[k % 2]
            name = f"{city}_{k:06d}_{19 + k:06d}"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            # Blocky labels so a network can be partly right.
            blocks = GT_IDS[rng.integers(0, len(GT_IDS), (size[0] // 8, size[1] // 8))]
            label = np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
            for sub, arr, suffix in (("leftImg8bit", image, "leftImg8bit"), ("gtFine", label, "gtFine_labelIds")):
                path = root / sub / split / city / f"{name}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
    return root


def save_checkpoint(path: Path, num_classes: int, *, seed: int = 0) -> Path:
    from proca.models import build_model, save_model

    torch.manual_seed(seed)
    model = build_model("deeplabv2_resnet18", num_classes=num_classes)
    with torch.no_grad():  # spread the random head's biases so predictions vary over the classes
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d) and conv.out_channels == num_classes and conv.bias is not None:
                conv.bias.copy_(torch.randn(num_classes) * 0.5)
    save_model(model, path, metadata={"eval_input_size": [16, 32]})
    return path


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """The tiny networks run faster on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def ckpt19(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m19.safetensors", 19)


def official_miou(pred_dir: Path, gt_root: Path, split: str = "val") -> tuple[float, dict[str, float]]:
    """cityscapesscripts' formula (getIouScoreForLabel + getScoreAverage) on label-id PNGs found by pattern."""
    evaluated = [row for row in CITYSCAPES_LABELS if row.train_id != 255]
    conf = np.zeros((256, 256), dtype=np.int64)
    preds = [p for p in pred_dir.rglob("*.png")]
    for gt_path in sorted((gt_root / "gtFine" / split).rglob("*_gtFine_labelIds.png")):
        city, seq, frame = gt_path.name.split("_")[:3]
        matches = [p for p in preds if p.name.startswith(f"{city}_{seq}_{frame}") and p.suffix == ".png"]
        assert len(matches) == 1, f"the official evaluator needs exactly one prediction for {gt_path.name}"
        pred_img = Image.open(matches[0])
        assert pred_img.mode == "L"
        gt, pr = np.array(Image.open(gt_path)), np.array(pred_img)
        np.add.at(conf, (gt.ravel(), pr.ravel()), 1)
    scores: dict[str, float] = {}
    not_ignored = [row.label_id for row in evaluated]
    for row in evaluated:
        c = row.label_id
        tp = conf[c, c]
        fn = conf[c, :].sum() - tp
        fp = conf[[i for i in not_ignored if i != c], c].sum()
        denom = tp + fp + fn
        scores[row.name] = float("nan") if denom == 0 else tp / denom
    valid = [v for v in scores.values() if not math.isnan(v)]
    return 100.0 * sum(valid) / len(valid), scores


class TinyNet(nn.Module):
    """Stride-8 stand-in: predicts class = (mean colour bucket) with 4 classes."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pool = nn.AvgPool2d(8)
        self.head = nn.Conv2d(3, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return dict(self.samples[i])


def test_evaluate_matches_manual_argmax_and_batching() -> None:
    from proca.data.classes import ClassSet

    torch.manual_seed(0)
    cs = ClassSet("tiny", ("road", "sidewalk", "building", "wall"))
    samples = []
    for i in range(4):
        label = torch.randint(0, 4, (32, 48))
        label[:4] = 255
        samples.append({"image": torch.randn(3, 16, 24), "label": label, "name": f"x/{i}", "path": ""})
    model = TinyNet().eval()
    r1 = evaluate(model, ListDataset(samples), class_set=cs, input_size=None, progress=False)
    r2 = evaluate(model, ListDataset(samples), class_set=cs, input_size=None, batch_size=3, progress=False)
    assert torch.equal(r1.confusion, r2.confusion)
    # Same numbers by hand: upsample logits (align_corners=True), argmax, one global matrix.
    conf = torch.zeros(4, 4, dtype=torch.long)
    for s in samples:
        logits = nn.functional.interpolate(model(s["image"][None]), size=(32, 48), mode="bilinear", align_corners=True)
        pred, lab = logits.argmax(1)[0], s["label"]
        keep = lab != 255
        conf += torch.bincount(lab[keep] * 4 + pred[keep], minlength=16).reshape(4, 4)
    assert torch.equal(r1.confusion, conf)
    assert r1.num_images == 4 and r1.miou13 is None
    assert set(r1.per_class) == set(cs.classes)


def test_evaluate_rejects_mismatched_class_set_and_empty_data() -> None:
    with pytest.raises(ConfigError, match="classes"):
        evaluate(TinyNet(5), ListDataset([]), class_set=CITYSCAPES_19, input_size=None, progress=False)
    with pytest.raises(DataError, match="empty"):
        evaluate(TinyNet(19), ListDataset([]), class_set=CITYSCAPES_19, input_size=None, progress=False)


def test_prediction_names_match_the_official_pattern(tmp_path: Path) -> None:
    name = "frankfurt/frankfurt_000000_000294"
    assert prediction_path(tmp_path, name, "labelid") == tmp_path / "frankfurt/frankfurt_000000_000294_labelIds.png"
    assert prediction_path(tmp_path, name, "trainid").name == "frankfurt_000000_000294_trainIds.png"
    assert prediction_path(tmp_path, name, "color").name == "frankfurt_000000_000294_color.png"
    with pytest.raises(ConfigError):
        prediction_path(tmp_path, name, "jpeg")
    ids = np.array([[0, 18], [13, 2]], dtype=np.uint8)
    save_prediction(ids, tmp_path / "l.png", CITYSCAPES_19, "labelid")
    assert Image.open(tmp_path / "l.png").mode == "L"
    assert np.array(Image.open(tmp_path / "l.png")).tolist() == [[7, 33], [26, 11]]
    save_prediction(ids, tmp_path / "t.png", CITYSCAPES_19, "trainid")
    assert (
        Image.open(tmp_path / "t.png").mode == "P" and np.array(Image.open(tmp_path / "t.png")).tolist() == ids.tolist()
    )
    save_prediction(ids, tmp_path / "c.png", CITYSCAPES_19, "color")
    assert tuple(np.array(Image.open(tmp_path / "c.png"))[0, 0]) == (128, 64, 128)
    # SYNTHIA16 ids 9 (sky) -> label id 23.
    save_prediction(np.array([[9]], dtype=np.uint8), tmp_path / "s.png", SYNTHIA_16, "labelid")
    assert np.array(Image.open(tmp_path / "s.png")).tolist() == [[23]]


@pytest.mark.slow
def test_cli_eval_equals_official_formula(tmp_path: Path, data: Path, ckpt19: Path) -> None:
    out_json, preds, report = tmp_path / "m.json", tmp_path / "preds", tmp_path / "report"
    args = ["eval", str(ckpt19), "--data-root", str(data), "--json", str(out_json), "--save-predictions", str(preds)]
    result = runner.invoke(app, [*args, "--report", str(report), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "mIoU (19)" in result.output
    metrics = json.loads(out_json.read_text())
    assert set(metrics["per_class"]) == set(CITYSCAPES_19.classes)
    assert "traffic light" in metrics["per_class"] and "miou13" not in metrics
    assert metrics["per_class"]["train"] is None or metrics["per_class"]["train"] == 0.0
    assert metrics["input_size"] == [16, 32] and metrics["scales"] == [1.0] and metrics["flip"] is False
    names = sorted(p.relative_to(preds).as_posix() for p in preds.rglob("*.png"))
    assert names == [
        "aachen/aachen_000000_000019_labelIds.png",
        "aachen/aachen_000002_000021_labelIds.png",
        "bochum/bochum_000001_000020_labelIds.png",
    ]
    miou, scores = official_miou(preds, data)
    assert metrics["miou"] == pytest.approx(miou, abs=1e-9)
    for name, value in metrics["per_class"].items():
        assert (value is None) == math.isnan(scores[name])
        if value is not None:
            assert value == pytest.approx(100 * scores[name], abs=1e-9)
    for name in ("iou.png", "confusion.png", "examples.png"):
        assert Image.open(report / name).size[0] > 100


@pytest.mark.slow
def test_cli_eval_multiscale_flip_and_synthia16(tmp_path: Path, data: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "m16.safetensors", 16)
    out_json = tmp_path / "m.json"
    args = ["eval", str(ckpt), "--data-root", str(data), "--json", str(out_json), "--scales", "0.5,1", "--flip"]
    result = runner.invoke(
        app, [*args, "--input-size", "24x48", "--save-predictions", str(tmp_path / "p"), "--format", "color"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out_json.read_text())
    assert set(metrics["per_class"]) == set(SYNTHIA_16.classes)
    assert metrics["miou16"] == metrics["miou"] and metrics["miou13"] is not None
    assert metrics["scales"] == [0.5, 1.0] and metrics["flip"] is True and metrics["input_size"] == [24, 48]
    present = [v for k, v in metrics["per_class"].items() if k not in ("wall", "fence", "pole") and v is not None]
    assert metrics["miou13"] == pytest.approx(sum(present) / len(present))
    assert len(list((tmp_path / "p").rglob("*_color.png"))) == 3
    assert "mIoU (13)" in result.output


def test_cli_eval_data_root_both_layouts(tmp_path: Path, data: Path, ckpt19: Path) -> None:
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "cityscapes").symlink_to(data, target_is_directory=True)
    scores = []
    for root in (datasets, data):  # the datasets folder (as proca train takes it), the Cityscapes folder itself
        out_json = tmp_path / f"{root.name}.json"
        result = runner.invoke(app, ["eval", str(ckpt19), "--data-root", str(root), "--json", str(out_json)])
        assert result.exit_code == 0, result.output
        metrics = json.loads(out_json.read_text())
        expected = datasets / "cityscapes" if root == datasets else data
        assert metrics["data_root"] == str(root) and metrics["cityscapes_root"] == str(expected)
        scores.append((metrics["miou"], metrics["num_images"]))
    assert scores[0] == scores[1]


def test_cli_eval_errors(tmp_path: Path, data: Path) -> None:
    bad = save_checkpoint(tmp_path / "m7.safetensors", 7)
    result = runner.invoke(app, ["eval", str(bad), "--data-root", str(data)])
    assert result.exit_code == 2 and "7-class" in result.output
    good = tmp_path / "m19.safetensors"
    save_checkpoint(good, 19)
    result = runner.invoke(app, ["eval", str(good), "--data-root", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "--data-root" in result.output
    result = runner.invoke(app, ["eval", str(good), "--data-root", str(data), "--split", "test"])
    assert result.exit_code == 2


def test_eval_result_json_nan_free() -> None:
    from proca.engine.metrics import metrics_from_confusion

    m = metrics_from_confusion(torch.tensor([[3, 1, 0], [0, 0, 0], [0, 0, 0]]))
    r = EvalResult.from_metrics(m, SYNTHIA_16.__class__("t", ("road", "sidewalk", "building")), 1)
    js = r.to_json()
    assert js["per_class"]["building"] is None and js["per_class"]["sidewalk"] == 0.0
    json.dumps(js, allow_nan=False)


@pytest.mark.slow
def test_cli_eval_reads_released_pth(tmp_path: Path, data: Path, ckpt19: Path) -> None:
    from proca.models import load_model
    from proca.models.legacy import proca_to_release_state_dict

    release = proca_to_release_state_dict(load_model(ckpt19).model.state_dict())
    pth = tmp_path / "release.pth"
    torch.save({k: {f"module.{n}": t for n, t in v.items()} for k, v in release.items()} | {"iteration": 1}, pth)
    scores = []
    for path in (ckpt19, pth):
        out = tmp_path / f"{path.stem}.json"
        result = runner.invoke(
            app, ["eval", str(path), "--data-root", str(data), "--input-size", "16x32", "--json", str(out)]
        )
        assert result.exit_code == 0, result.output
        scores.append(json.loads(out.read_text())["miou"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-9)
