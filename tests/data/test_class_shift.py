"""The class-conditional synthetic shift (``class_shift``): per-class changes as documented; default unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from proca.data.classes import CITYSCAPES_LABELS
from proca.data.synthetic import render_scene, render_scene_instances, scene_rng, write_synthetic_datasets
from proca.errors import DataError

ID = {row.name: row.label_id for row in CITYSCAPES_LABELS}

# sha256 of the default scenes (3 domains x 4 images at 48x96, seed 0) as the generator drew them before
# class_shift existed: the default must stay byte-identical (docs/demo.md and the tests depend on it).
DEFAULT_DIGEST = "44a4bab4c6529e34f32dcd2590f54396ed16d3e2afba5d495ff79dd8477c75dd"


def test_default_scenes_are_unchanged() -> None:
    digest = hashlib.sha256()
    for domain in ("gtav", "synthia", "cityscapes"):
        for i in range(4):
            for part in render_scene_instances(scene_rng(0, domain, "train", i), (48, 96), domain, index=i):
                digest.update(part.tobytes())
    assert digest.hexdigest() == DEFAULT_DIGEST
    rng = scene_rng(0, "cityscapes", "train", 1)
    explicit = render_scene(rng, (48, 96), "cityscapes", index=1, class_shift=0.0)
    implicit = render_scene(scene_rng(0, "cityscapes", "train", 1), (48, 96), "cityscapes", index=1)
    assert all(np.array_equal(a, b) for a, b in zip(explicit, implicit, strict=True))


def test_sources_ignore_the_class_shift() -> None:
    for domain in ("gtav", "synthia"):
        a = render_scene(scene_rng(2, domain, "train", 0), (48, 96), domain, class_shift=1.0)
        b = render_scene(scene_rng(2, domain, "train", 0), (48, 96), domain)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _stats(class_shift: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    colours: dict[str, list[np.ndarray]] = {k: [] for k in ("vegetation", "sky", "road", "sidewalk", "car", "person")}
    pixels = dict.fromkeys(colours, 0)
    total = 0
    for i in range(12):
        rgb, lab = render_scene(scene_rng(3, "cityscapes", "train", i), (64, 128), "cityscapes", index=i,
                                class_shift=class_shift)  # fmt: skip
        total += lab.size
        for name in colours:
            mask = lab == ID[name]
            pixels[name] += int(mask.sum())
            colours[name].append(rgb[mask].astype(np.float64))
    means = {k: np.concatenate(v).mean(0) for k, v in colours.items()}
    return means, {k: v / total for k, v in pixels.items()}


@pytest.mark.slow
def test_class_conditional_statistics_differ_as_documented() -> None:
    before, freq_before = _stats(0.0)
    after, freq_after = _stats(1.0)
    r, g, b = 0, 1, 2
    # colour swaps per class: foliage green -> red-brown, sky blue -> pink, road <-> sidewalk brightness
    assert before["vegetation"][g] > before["vegetation"][r] and after["vegetation"][r] > after["vegetation"][g]
    assert before["sky"][b] > before["sky"][r] and after["sky"][r] > after["sky"][b]
    assert before["road"].mean() < before["sidewalk"].mean() and after["road"].mean() > after["sidewalk"].mean()
    assert after["person"][b] > after["person"][r] and before["person"][r] > before["person"][b]
    # another class-frequency mix: persons x2, cars x0.4 (expected counts)
    assert freq_after["person"] > 1.5 * freq_before["person"]
    assert freq_after["car"] < 0.75 * freq_before["car"]


def test_write_records_and_checks_the_class_shift(tmp_path: Path) -> None:
    summary = write_synthetic_datasets(tmp_path / "a", num_train=1, num_val=1, size=(32, 64), progress=False,
                                       class_shift=0.5)  # fmt: skip
    assert summary.class_shift == 0.5
    assert json.loads((tmp_path / "a" / "synthetic.json").read_text())["class_shift"] == 0.5
    with pytest.raises(DataError, match="class_shift"):
        write_synthetic_datasets(tmp_path / "b", num_train=1, num_val=1, size=(32, 64), progress=False,
                                 class_shift=1.5)  # fmt: skip
    with pytest.raises(ValueError, match="class_shift"):
        render_scene(scene_rng(0, "cityscapes", "val", 0), (32, 64), "cityscapes", class_shift=-0.1)
