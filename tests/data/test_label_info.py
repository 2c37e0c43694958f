"""Label info: the parallel scan, the JSON it writes, and safe reading of the release's pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from _pngwriter import make_gtav, make_synthia
from typer.testing import CliRunner

from proca.data.label_info import LabelInfo, build_label_info, read_label_info, run_label_info
from proca.errors import DataError


def _gtav(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = [rng.choice([0, 7, 8, 26], (6, 8)).astype(np.uint8) for _ in range(5)]
    labels[2][:] = 33  # only bicycle
    labels[3][:] = 0  # nothing but unlabeled
    return make_gtav(tmp_path / "gtav", labels), labels


def test_scan_gtav_counts_and_json(tmp_path: Path) -> None:
    root, labels = _gtav(tmp_path)
    info = build_label_info("gtav", root, workers=1)
    assert info.files == [f"{k:05d}.png" for k in range(1, 6)]
    lut = {7: 0, 8: 1, 26: 13, 33: 18}
    for name, lab in zip(info.files, labels, strict=True):
        want = {lut[v]: int((lab == v).sum()) for v in np.unique(lab) if v in lut}
        assert info.file_to_classes[name] == sorted(want)
        assert info.pixel_counts is not None and info.pixel_counts[name] == [want[c] for c in sorted(want)]
    assert info.class_to_files()[18] == ["00003.png"]
    assert info.file_to_classes["00004.png"] == []

    out = tmp_path / "info.json"
    path = run_label_info("gtav", root, out=out, list_file=None, workers=1, skip_bad=False)
    assert path == out
    doc = json.loads(out.read_text())
    assert doc["schema"] == "proca.label_info" and doc["schema_version"] == 1
    assert doc["class_set"] == "cityscapes19" and doc["num_classes"] == 19 and len(doc["class_names"]) == 19
    assert doc["files"][2] == {"file": "00003.png", "classes": [18], "pixels": [48], "size": [6, 8]}
    assert doc["class_to_files"][18] == ["00003.png"]
    back = read_label_info(out)
    assert back.files == info.files and back.file_to_classes == info.file_to_classes
    assert back.pixel_counts == info.pixel_counts and back.num_classes == 19
    # default output next to the data, and a list file restricts the scan
    lst = tmp_path / "list.txt"
    lst.write_text("00005.png\n00001.png\n")
    run_label_info("gtav", root, out=None, list_file=lst, workers=1, skip_bad=False)
    assert read_label_info(root / "gtav_label_info.json").files == ["00005.png", "00001.png"]


def test_scan_synthia_is_16bit_exact(tmp_path: Path) -> None:
    lab = np.full((4, 5), 21, np.uint16)  # wall, raw id 21: Pillow's 8-bit view reads 0 here
    lab[0, :] = 11  # bicycle
    root = make_synthia(tmp_path / "synthia", [lab])
    info = build_label_info("synthia", root, workers=1)
    assert info.file_to_classes == {"0000000.png": [3, 15]}
    assert info.pixel_counts == {"0000000.png": [15, 5]} and info.class_set == "synthia16"


def test_corrupt_label_named_or_skipped(tmp_path: Path) -> None:
    root, _ = _gtav(tmp_path)
    (root / "labels" / "00002.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"00002\.png.*--skip-bad"):
        build_label_info("gtav", root, workers=1)
    info = build_label_info("gtav", root, workers=1, skip_bad=True)
    assert info.skipped == ["00002.png"] and "00002.png" not in info.files and len(info.files) == 4
    with pytest.raises(DataError, match=r"label folder .* does not exist"):
        build_label_info("gtav", tmp_path, workers=1)


@pytest.mark.slow
def test_parallel_scan_matches_serial(tmp_path: Path) -> None:
    root, _ = _gtav(tmp_path)
    (root / "labels" / "00004.png").write_bytes(b"\x89PNG\r\n\x1a\ncorrupt")
    serial = build_label_info("gtav", root, workers=1, skip_bad=True)
    parallel = build_label_info("gtav", root, workers=2, skip_bad=True)
    assert parallel == serial and parallel.skipped == ["00004.png"]


def test_cli_label_info(tmp_path: Path) -> None:
    from proca.cli import app

    root, _ = _gtav(tmp_path)
    result = CliRunner().invoke(app, ["label-info", "gtav", "--root", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (root / "gtav_label_info.json").is_file()
    result = CliRunner().invoke(app, ["label-info", "gtav", "--root", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_reads_release_pickle(reference_dir: Path) -> None:
    info = read_label_info(reference_dir / "gtav_label_info.p")
    assert len(info.files) == 24966 and info.files == sorted(info.files) and info.num_classes == 19
    per_class = [len(f) for f in info.class_to_files()]
    assert per_class[18] == 440  # bicycle, as ALGORITHM.md states
    assert info.class_set == "cityscapes19" and info.pixel_counts is None


def test_reads_small_release_style_pickle(tmp_path: Path) -> None:
    l2f = [["b.png", "a.png"], [], ["a.png"]]
    f2l = {"a.png": [0, 2], "b.png": [0], "c.png": []}
    path = tmp_path / "x_label_info.p"
    path.write_bytes(pickle.dumps((l2f, f2l), protocol=2))
    info = read_label_info(path)
    assert info.files == ["a.png", "b.png", "c.png"] and info.file_to_classes["a.png"] == [0, 2]
    assert info.class_to_files() == [["a.png", "b.png"], [], ["a.png"]]


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_poisoned_pickle_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for payload in ((_Evil(marker), {}), ([["a.png"]], {"a.png": _Evil(marker)})):
        path = tmp_path / "evil.p"
        path.write_bytes(pickle.dumps(payload, protocol=2))
        with pytest.raises(DataError, match="refusing"):
            read_label_info(path)
        assert not marker.exists()
    # a pickle of a numpy array is refused too (it needs numpy's reconstructors)
    path.write_bytes(pickle.dumps(([np.arange(3)], {}), protocol=4))
    with pytest.raises(DataError, match="refusing"):
        read_label_info(path)


def test_bad_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_label_info(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "proca.label_info", "schema_version": 99, "files": []}))
    with pytest.raises(DataError, match="version 99"):
        read_label_info(bad)
    bad.write_text("{ truncated")
    with pytest.raises(DataError, match="cannot read"):
        read_label_info(bad)
    assert len(LabelInfo(files=["a"], file_to_classes={"a": [1]})) == 1
