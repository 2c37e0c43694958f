"""Report pictures: IoU bar chart, confusion matrix and example grid drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from proca.data.classes import CITYSCAPES_19, SYNTHIA_16
from proca.engine.evaluate import EvalResult
from proca.engine.loop import Batch
from proca.engine.metrics import metrics_from_confusion
from proca.engine.report import ExampleCollector, confusion_image, example_grid, iou_bar_chart, write_report


def test_iou_bar_chart_draws_bars_in_class_colours() -> None:
    per_class = {n: 10.0 * (i % 10) for i, n in enumerate(CITYSCAPES_19.classes)}
    per_class["train"] = None
    img = iou_bar_chart(per_class, CITYSCAPES_19, title="t", means={"mIoU (19)": 42.0})
    assert img.mode == "RGB" and img.size[0] > 400 and img.size[1] > 19 * 20
    colours = {tuple(c) for c in np.array(img).reshape(-1, 3).tolist()}
    assert (244, 35, 232) in colours  # sidewalk's bar (IoU 10)
    assert (119, 11, 32) in colours  # bicycle


def test_confusion_image_size_and_diagonal() -> None:
    mat = torch.diag(torch.arange(1, 17))
    img = confusion_image(mat, SYNTHIA_16, cell=20)
    assert img.size[0] > 16 * 20 and img.size[1] > 16 * 20
    arr = np.array(img)
    # The darkest blue (a 100 % cell) is present; empty cells are white.
    assert ((arr[..., 0] < 20) & (arr[..., 2] > 100)).any()


def test_example_grid_and_write_report(tmp_path: Path) -> None:
    collector = ExampleCollector(CITYSCAPES_19, max_examples=2, width=64)
    batch = Batch(
        images=torch.zeros(3, 3, 16, 32),
        labels=torch.full((3, 32, 64), 255),
        out_size=(32, 64),
        names=["a/a_0_0", "b/b_0_0", "c/c_0_0"],
        paths=["", "", ""],
        indices=[0, 1, 2],
        photos=None,
    )
    collector.add(batch, torch.zeros(3, 32, 64, dtype=torch.uint8))
    assert len(collector.examples) == 2
    assert collector.examples[0].photo.shape == (32, 64, 3) and collector.examples[0].pred.shape == (32, 64)
    grid = example_grid(collector.examples, CITYSCAPES_19)
    assert grid.size[0] == 8 + 3 * (64 + 8)
    m = metrics_from_confusion(torch.diag(torch.arange(16)))
    result = EvalResult.from_metrics(m, SYNTHIA_16, 2)
    files = write_report(tmp_path, result, SYNTHIA_16, collector.examples, title="x")
    assert sorted(p.name for p in files.values()) == ["confusion.png", "examples.png", "iou.png"]
    for path in files.values():
        assert Image.open(path).format == "PNG"


def test_report_does_not_import_evaluate() -> None:
    """report needs only EvalResult's type (proca.engine.results); evaluate must not be imported by it."""
    import ast
    import inspect

    import proca.engine.report as report

    tree = ast.parse(inspect.getsource(report))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "proca.engine.evaluate" not in imported and "proca.engine.results" in imported
