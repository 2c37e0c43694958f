"""Resume checks the data it started on and the one list of options that may change; inputs checked up front."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from proca.errors import DataError
from tests.reliability.conftest import assert_user_error, invoke, output_of

pytestmark = pytest.mark.filterwarnings("ignore:no --backbone-weights")


def _train(data: Path, out: Path, *extra: str) -> Any:
    args = ["train", "--data-root", data, "--out", out, "--arch", "deeplabv2_resnet18", "--stage", "source"]
    args += ["--input-size", "32x64", "--iters", "1", "--batch-size", "2", "--device", "cpu", "--set", "num_workers=0"]
    return invoke([*args, *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny data root and a run whose source stage finished (class-balanced: its label info is in RUN)."""
    from proca.data.synthetic import write_synthetic_datasets

    base = tmp_path_factory.mktemp("resume_inputs")
    data = base / "data"
    write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    run = base / "run"
    result = _train(data, run)
    assert result.exit_code == 0, output_of(result)
    return data, run


def _copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_the_run_records_its_data(finished: tuple[Path, Path]) -> None:
    data, run = finished
    record = json.loads((run / "inputs.json").read_text())
    assert record["data_root"] == str(data.resolve())
    assert record["folders"]["gtav/images"]["files"] == 2 and record["folders"]["cityscapes/val"]["files"] == 1
    assert record["label_info"]["file"] == "RUN/gtav_label_info.json"  # the run folder may be moved
    assert len(record["label_info"]["sha256"]) == 64


def test_resume_with_another_data_root_is_refused(finished: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = finished
    run = _copy_run(run, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(data, other)  # the same files in another place
    before = (run / "config.json").read_bytes()
    result = _train(other, run, "--resume")
    assert_user_error(result, "--resume", f"started on --data-root {data.resolve()}", str(other.resolve()),
                      "another --out")  # fmt: skip
    assert (run / "config.json").read_bytes() == before
    # one more stage on other data is refused the same way
    result = invoke(["train", "--data-root", other, "--out", run, "--stage", "prototypes", "--device", "cpu"])
    assert_user_error(result, "--stage prototypes", "started on --data-root")
    # images added under the same root
    for folder in ("images", "labels"):
        shutil.copy(other / "gtav" / folder / "00001.png", other / "gtav" / folder / "09999.png")
    (run / "inputs.json").write_text(json.dumps({**json.loads((run / "inputs.json").read_text()),
                                                 "data_root": str(other.resolve())}))  # fmt: skip
    result = _train(other, run, "--resume")
    assert_user_error(result, "images of", "changed since this run started", "2 files then, 3 now")


def test_resume_with_a_changed_or_other_label_info_is_refused(finished: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = finished
    run = _copy_run(run, tmp_path)
    info = run / "gtav_label_info.json"
    doc = json.loads(info.read_text())
    doc["files"] = doc["files"][:1]
    info.write_text(json.dumps(doc))
    result = _train(data, run, "--resume")
    assert_user_error(result, f"label info {info} changed since this run started", "another --out")
    # a label-info file placed in the data root would now be used instead of the run's
    data2 = tmp_path / "data"
    shutil.copytree(data, data2)
    run2 = _copy_run(finished[1], tmp_path / "b")
    record = json.loads((run2 / "inputs.json").read_text())
    (run2 / "inputs.json").write_text(json.dumps({**record, "data_root": str(data2.resolve())}))
    shutil.copy(run2 / "gtav_label_info.json", data2 / "gtav" / "gtav_label_info.json")
    result = _train(data2, run2, "--resume")
    assert_user_error(result, "this run used the label info", "now", "would be used")


def test_resume_accepts_only_the_listed_changes_and_rewrites_config(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    data, run = finished
    run = _copy_run(run, tmp_path)
    result = _train(data, run, "--resume", "--set", "proca.temperature=0.1", "--set", "seed=3")
    text = assert_user_error(result, "proca.temperature 50.0 -> 0.1", "seed 0 -> 3", "may change on resume")
    assert "source.lr" in text  # the message lists what may change
    assert json.loads((run / "config.json").read_text())["proca"]["temperature"] == 50.0
    result = _train(data, run, "--resume", "--set", "source.lr=0.0001", "--set", "log_every=7")
    assert result.exit_code == 0, output_of(result)
    assert "source.lr 0.0005 -> 0.0001" in " ".join(output_of(result).split())
    saved = json.loads((run / "config.json").read_text())
    assert saved["source"]["lr"] == 0.0001 and saved["log_every"] == 7


def test_the_resume_list_is_documented() -> None:
    from proca.engine.runfolder import RESUME_FREE

    root = Path(__file__).resolve().parents[2]
    training = (root / "docs/training.md").read_text().split("## Resume", 1)[1].split("\n## ", 1)[0]
    reliability = (root / "docs/reliability.md").read_text()
    for key in RESUME_FREE:
        assert f"`{key}`" in training and f"`{key}`" in reliability, key


def test_missing_validation_labels_are_refused_before_training(data_copy: Path, tmp_path: Path) -> None:
    shutil.rmtree(data_copy / "cityscapes" / "gtFine" / "val")
    out = tmp_path / "run"
    result = _train(data_copy, out)
    assert_user_error(result, "gtFine", "val", "validates on Cityscapes val")
    assert not out.exists()


def test_eval_checks_labels_and_outputs_before_loading_the_model(data_copy: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")  # loading it would fail: the checks below come first
    label = next((data_copy / "cityscapes" / "gtFine" / "val").rglob("*_labelIds.png"))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = invoke(["eval", broken, "--data-root", data_copy, "--json", blocker / "eval.json"])
    assert_user_error(result, "--json", "cannot be created", "is a file")
    result = invoke(["eval", broken, "--data-root", data_copy, "--json", tmp_path])
    assert_user_error(result, "--json", "is a folder")
    result = invoke(["eval", broken, "--data-root", data_copy, "--report", blocker])
    assert_user_error(result, "--report", "is a file")
    label.unlink()
    result = invoke(["eval", broken, "--data-root", data_copy, "--json", tmp_path / "ok.json"])
    assert_user_error(result, "Cityscapes label file", label.name, "does not exist")
    assert not (tmp_path / "ok.json").exists()


def test_unwritable_outputs_are_refused_before_work(data_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    image = next((data_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))
    result = invoke(["infer", broken, image, "--out", blocker / "preds"])
    assert_user_error(result, "--out", "cannot be created", "is a file")
    result = invoke(["pseudo-label", broken, "--data-root", data_root, "--out", blocker / "pl"])
    assert_user_error(result, "--out", "cannot be created")
    result = _train(data_root, blocker / "run")
    assert_user_error(result, "--out", "cannot be created")
    result = _train(data_root, blocker)
    assert_user_error(result, "--out", "is a file")
    result = invoke(["label-info", "gtav", "--root", data_root / "gtav", "--out", blocker / "info.json"])
    assert_user_error(result, "--out", "cannot be created")
    assert blocker.read_text() == "x"


def _label_info_doc(files: list[str]) -> dict[str, Any]:
    rows = [{"file": f, "classes": [0], "pixels": [4]} for f in files]
    return {"schema": "proca.label_info", "schema_version": 1, "num_classes": 19, "files": rows}


@pytest.mark.parametrize("name", ["../outside.png", "/etc/passwd", "a/../../b.png", "C:\\x.png", "..\\x.png"])
def test_label_info_rows_must_stay_inside_the_root(tmp_path: Path, name: str) -> None:
    import pickle

    from proca.data.label_info import read_label_info

    path = tmp_path / "info.json"
    path.write_text(json.dumps(_label_info_doc(["00000.png", name])))
    with pytest.raises(DataError, match="points outside the dataset folder"):
        read_label_info(path)
    release = tmp_path / "info.p"
    release.write_bytes(pickle.dumps(([[name]] + [[] for _ in range(18)], {name: [0]})))
    with pytest.raises(DataError, match="points outside the dataset folder"):
        read_label_info(release)


def _regenerate(text: str) -> list[str]:
    flat = " ".join(text.replace("│", " ").split())
    command = re.search(r"`(proca label-info [^`]+)`", flat)
    assert command is not None, text
    return command.group(1).split()[1:]


def test_stale_label_info_names_the_command_that_regenerates_it(data_copy: Path, tmp_path: Path) -> None:
    gtav = data_copy / "gtav"
    assert invoke(["label-info", "gtav", "--root", gtav, "--workers", "1"]).exit_code == 0
    assert "size" in json.loads((gtav / "gtav_label_info.json").read_text())["files"][0]
    (gtav / "images" / "00002.png").unlink()  # a pair removed after the label info was written
    (gtav / "labels" / "00002.png").unlink()
    out = tmp_path / "run"
    result = _train(data_copy, out)
    text = assert_user_error(result, "gtav_label_info.json is stale", "00002.png", "does not exist")
    assert not out.exists()
    assert invoke([*_regenerate(text), "--workers", "1"]).exit_code == 0
    # both files of a pair replaced at another size
    for folder in ("images", "labels"):
        path = gtav / folder / "00001.png"
        with Image.open(path) as im:
            im.resize((32, 16), Image.Resampling.NEAREST).save(path)
    result = _train(data_copy, out)
    text = assert_user_error(result, "is stale", "00001.png is 32x16 (WxH)", "recorded 64x32")
    assert invoke([*_regenerate(text), "--workers", "1"]).exit_code == 0
    result = _train(data_copy, out)
    assert result.exit_code == 0, output_of(result)


def test_skip_bad_skips_image_label_size_mismatches(data_copy: Path, tmp_path: Path) -> None:
    gtav = data_copy / "gtav"
    label = gtav / "labels" / "00002.png"
    with Image.open(label) as im:
        im.resize((32, 16), Image.Resampling.NEAREST).save(label)  # real GTA5 has a few such pairs
    result = invoke(["label-info", "gtav", "--root", gtav, "--workers", "1"])
    assert_user_error(result, "00002.png is 32x16 (WxH) but its image", "64x32", "--skip-bad")
    out = tmp_path / "info.json"
    result = invoke(["label-info", "gtav", "--root", gtav, "--workers", "1", "--skip-bad", "--out", out])
    assert result.exit_code == 0 and "1 skipped (1 size mismatch)" in output_of(result), output_of(result)
    doc = json.loads(out.read_text())
    assert doc["skipped"] == ["00002.png"] and doc["skipped_reasons"] == {"00002.png": "size mismatch"}
    assert "00002.png" not in [r["file"] for r in doc["files"]] and len(doc["files"]) == 7
    # train: without --skip-bad the label info (class-balanced sampling) refuses the pair before training
    run = tmp_path / "run"
    result = _train(data_copy, run)
    assert_user_error(result, "00002.png is 32x16 (WxH)", "--skip-bad")
    assert not (run / "source.safetensors").exists()
    # with it the pair is left out (also with uniform sampling), counted and reported
    result = _train(data_copy, run, "--skip-bad", "--set", "source.class_balanced=false")
    assert result.exit_code == 0, output_of(result)
    assert "1 of 8 files skipped (--skip-bad: 1 size mismatch)" in " ".join(output_of(result).split())
    # the prototype pass reads every source file: the skipped pair is left out there too
    result = invoke(["train", "--data-root", data_copy, "--out", run, "--stage", "prototypes", "--device", "cpu",
                     "--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--set", "num_workers=0",
                     "--set", "source.class_balanced=false", "--skip-bad"])  # fmt: skip
    assert result.exit_code == 0, output_of(result)
    assert (run / "prototypes.safetensors").is_file() and "7/7" in output_of(result)


def test_a_bare_resume_continues_with_the_runs_own_options(finished: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = finished
    run = _copy_run(run, tmp_path)
    before = json.loads((run / "config.json").read_text())
    # none of the run's options (arch, sizes, iterations, ...) repeated: RUN/config.json is the starting point
    args = ["train", "--data-root", data, "--out", run, "--stage", "source", "--device", "cpu", "--resume"]
    result = invoke(args)
    assert result.exit_code == 0, output_of(result)
    assert json.loads((run / "config.json").read_text()) == before
    result = invoke([*args, "--print-config"])
    assert json.loads(result.stdout)["arch"] == "deeplabv2_resnet18"
    result = invoke([*args, "--src", "synthia"])
    assert_user_error(result, "--resume", "started with --src gtav, not synthia", "leave --src out")
