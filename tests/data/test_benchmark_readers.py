"""ACDC, Dark Zurich, BDD100K and Mapillary Vistas: decoding, split/condition selection, errors, label info, eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proca.data.benchmarks import ACDCDataset, BDD100KDataset, DarkZurichDataset, MapillaryVistasDataset
from proca.data.classes import CITYSCAPES_19, SYNTHIA_16, VISTAS_LABELS
from proca.data.label_info import build_label_info, read_label_info
from proca.data.registry import BUILTIN_DATASETS, TARGET_NAMES, get_dataset
from proca.errors import DataError
from tests.data._benchmarks import (
    SIZE,
    write_acdc,
    write_all,
    write_bdd100k,
    write_dark_zurich,
    write_mapillary,
)
from tests.data._pngwriter import write_png

TRAIN = {name: i for i, name in enumerate(CITYSCAPES_19.classes)}


def _raw(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_acdc_maps_label_ids_and_selects_conditions(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "acdc")
    ds = ACDCDataset(root, split="val")
    assert len(ds) == 8 and ds.class_set is CITYSCAPES_19
    assert ds.names[0] == "fog/GOPR0475/GOPR0475_frame_000041"
    assert ds.files[0] == "fog/val/GOPR0475/GOPR0475_frame_000041_rgb_anon.png"
    sample = ds[0]
    assert tuple(sample["image"].shape) == (3, *SIZE)
    raw = _raw(str(ds.labels[0])) if ds.labels else None
    assert raw is not None
    label = sample["label"].numpy()
    assert (label[raw == 7] == TRAIN["road"]).all() and (label[raw == 26] == TRAIN["car"]).all()
    assert (label[raw == 23] == TRAIN["sky"]).all()
    assert (label[(raw == 4) | (raw == 255)] == 255).all()
    night = ACDCDataset(root, split="train", conditions="night", labels=False)
    assert len(night) == 2 and all(n.startswith("night/") for n in night.names) and night.labels is None
    assert "label" not in night[0]
    # the 16 SYNTHIA classes: car keeps a train id, road too, and their ids are those of SYNTHIA16
    syn = ACDCDataset(root, split="val", conditions=("fog",), class_set=SYNTHIA_16)[0]["label"].numpy()
    assert (syn[raw == 26] == SYNTHIA_16.classes.index("car")).all()
    subset = ACDCDataset(root, split="val", files=[ds.files[3], ds.files[0]])
    assert subset.names == [ds.names[3], ds.names[0]]


def test_acdc_errors_name_the_layout(tmp_path: Path) -> None:
    root = write_acdc(tmp_path / "acdc", conditions=("fog",))
    with pytest.raises(DataError, match=r"ACDC night 'train' image folder .*rgb_anon/night/train does not exist"):
        ACDCDataset(root, split="train")
    with pytest.raises(DataError, match="no condition 'haze'; valid: fog, night, rain, snow"):
        ACDCDataset(root, conditions="haze")
    with pytest.raises(DataError, match="'test' split has no public labels; labelled splits: train, val"):
        ACDCDataset(root, split="test", conditions="fog")
    for label in (root / "gt/fog/val").rglob("*_gt_labelIds.png"):
        label.unlink()
        break
    with pytest.raises(DataError, match=r"ACDC label file .*_gt_labelIds.png does not exist; expected layout: ROOT/"):
        ACDCDataset(root, split="val", conditions="fog")
    with pytest.raises(
        DataError, match=r"'x\.png' is not among the ACDC fog train images; file names are paths relative to"
    ):
        ACDCDataset(root, split="train", conditions="fog", files=["x.png"])


def test_dark_zurich_val_labels_and_unlabelled_train(tmp_path: Path) -> None:
    root = write_dark_zurich(tmp_path / "dark_zurich")
    val = DarkZurichDataset(root, split="val")
    assert val.names == ["night/GOPR0356/GOPR0356_000000", "night/GOPR0356/GOPR0356_000001"]
    raw = _raw(str(val.labels[0])) if val.labels else None
    assert raw is not None
    label = val[0]["label"].numpy()
    assert (label[raw == 26] == TRAIN["car"]).all() and (label[raw == 4] == 255).all()
    train = DarkZurichDataset(root, split="train", labels=False)
    assert len(train) == 2 and all(n.startswith("night/GOPR0351/") for n in train.names)  # day images left out
    assert len(DarkZurichDataset(root, split="train", condition="day", labels=False)) == 1
    with pytest.raises(DataError, match="Dark Zurich 'train' split has no public labels; labelled splits: val"):
        DarkZurichDataset(root, split="train")
    with pytest.raises(DataError, match=r"Dark Zurich 'test' night image folder .* does not exist; expected layout"):
        DarkZurichDataset(root, split="test", labels=False)


def test_bdd100k_train_ids_pass_through_and_bad_ids_are_named(tmp_path: Path) -> None:
    root = write_bdd100k(tmp_path / "bdd100k")
    ds = BDD100KDataset(root, split="val")
    assert len(ds) == 2 and ds.files[0].endswith(".jpg") and ds.names[0] == Path(ds.files[0]).stem
    raw = _raw(str(ds.labels[0])) if ds.labels else None
    assert raw is not None
    assert np.array_equal(ds[0]["label"].numpy(), raw)  # train ids 0, 13, 18 and 255 as they are
    syn = BDD100KDataset(root, split="val", class_set=SYNTHIA_16)[0]["label"].numpy()
    assert (syn[raw == 13] == SYNTHIA_16.classes.index("car")).all() and (syn[raw == 18] == 15).all()
    assert len(BDD100KDataset(root, split="test", labels=False)) == 1
    bad = raw.copy()
    bad[0, 0] = 30
    write_png(ds.labels[0] if ds.labels else Path(), bad, mode="gray")
    with pytest.raises(DataError, match=r"outside the cityscapes_trainid label set \(ids 0..18 and 255\): 30"):
        _ = BDD100KDataset(root, split="val")[0]
    (root / "labels/sem_seg/masks/train").rename(root / "masks_moved")
    with pytest.raises(DataError, match=r"BDD100K 'train' label folder .*labels/sem_seg/masks/train does not exist"):
        BDD100KDataset(root, split="train")


def test_mapillary_palette_indices_map_to_cityscapes(tmp_path: Path) -> None:
    root = write_mapillary(tmp_path / "mapillary")
    ds = MapillaryVistasDataset(root, split="val")
    assert len(ds) == 2 and ds.split == "val"
    label_path = ds.labels[0] if ds.labels else None
    assert label_path is not None and Image.open(label_path).mode == "P"
    raw = _raw(str(label_path))  # palette indices (the class ids), not colours
    label = ds[0]["label"].numpy()
    expected = {13: "road", 2: "sidewalk", 20: "rider", 55: "car", 24: "road"}
    for vistas_id, name in expected.items():
        assert (raw == vistas_id).any() and (label[raw == vistas_id] == TRAIN[name]).all(), name
    assert (label[(raw == 10) | (raw == 65)] == 255).all()  # parking and unlabeled are ignored
    # every Cityscapes class is reached by at least one Vistas class; the table has the 66 v1.2 classes
    assert len(VISTAS_LABELS) == 66 and VISTAS_LABELS[65][0] == "void--unlabeled"
    assert set(CITYSCAPES_19.lookup_table("vistas")[:66]) - {255} == set(range(19))
    nested = write_mapillary(tmp_path / "v20", nested_v12=True)
    assert len(MapillaryVistasDataset(nested, split="training")) == 2  # a v2.0 download's v1.2/labels
    v2 = raw.copy()
    v2[0, 0] = 100  # a v2.0 label (124 classes) where v1.2 is expected
    write_png(label_path, v2, mode="gray")
    with pytest.raises(DataError, match=r"outside the vistas label set \(ids 0..65\): 100"):
        _ = ds[0]
    with pytest.raises(DataError, match=r"Mapillary Vistas testing image folder .*testing/images does not exist"):
        MapillaryVistasDataset(root, split="test", labels=False)


def test_registry_resolves_both_root_forms_and_names_the_layout(tmp_path: Path) -> None:
    data = write_all(tmp_path / "datasets")
    assert set(TARGET_NAMES) >= {"cityscapes", "acdc", "acdc_night", "dark_zurich", "bdd100k", "mapillary"}
    entry = get_dataset("acdc_fog")
    assert entry.resolve_root(data) == data / "acdc" and entry.resolve_root(data / "acdc") == data / "acdc"
    ds = entry.open(data, split="train", labels=False, class_set=CITYSCAPES_19)
    assert len(ds) == 2 and all(n.startswith("fog/") for n in ds.names)
    for name, entry in BUILTIN_DATASETS.items():
        if name == "cityscapes":
            continue
        train = entry.open(data, split=entry.train_split, labels=False, class_set=CITYSCAPES_19)
        val = entry.open(data, split=entry.val_split, labels=True, class_set=CITYSCAPES_19)
        assert len(train) > 0 and val.labels is not None and tuple(val[0]["label"].shape) == SIZE, name
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"neither .*empty/bdd100k/images nor .*empty/images exists; .*layout: ROOT"):
        get_dataset("bdd100k").resolve_root(tmp_path / "empty")
    with pytest.raises(DataError, match="'kitti' is not a built-in dataset; valid: cityscapes, acdc"):
        get_dataset("kitti")


def test_label_info_of_benchmarks(tmp_path: Path) -> None:
    data = write_all(tmp_path / "datasets")
    bdd = build_label_info("bdd100k", data, workers=1)
    assert bdd.dataset == "bdd100k" and bdd.files == sorted(bdd.files) and len(bdd) == 2
    assert all(set(cs) == {TRAIN["road"], TRAIN["car"], TRAIN["bicycle"]} for cs in bdd.file_to_classes.values())
    vistas = build_label_info("mapillary", data / "mapillary", workers=1, split="val")
    names = {TRAIN[n] for n in ("road", "sidewalk", "rider", "car")}
    assert all(set(cs) == names for cs in vistas.file_to_classes.values())
    dz = build_label_info("dark_zurich", data, workers=1)  # its only labelled split, val
    assert len(dz) == 2 and dz.files[0].startswith("val/night/")
    with pytest.raises(DataError, match="dark_zurich has no labels for split 'train'; labelled splits: val"):
        build_label_info("dark_zurich", data, workers=1, split="train")
    with pytest.raises(DataError, match="unknown dataset 'kitti'; valid: gtav, synthia, cityscapes, acdc"):
        build_label_info("kitti", data)
    # the sampler's identifiers open the same files again
    acdc = build_label_info("acdc_night", data, workers=1)
    ds = get_dataset("acdc_night").open(data, split="train", labels=True, class_set=CITYSCAPES_19, files=acdc.files)
    assert ds.files == acdc.files and len(ds) == 2


def test_benchmark_as_a_class_balanced_source(tmp_path: Path) -> None:
    from proca.data.sampler import ClassBalancedSampler

    root = write_mapillary(tmp_path / "mapillary", per_split=3)
    info = build_label_info("mapillary", root, workers=1)
    ds = MapillaryVistasDataset(root, split="train", files=info.files)
    sampler = ClassBalancedSampler(info, 12, num_classes=19, seed=0)
    drawn = list(sampler)
    assert len(drawn) == 12 and all(0 <= i < len(ds) for i in drawn)
    assert ds[drawn[0]]["name"] == Path(info.files[drawn[0]]).stem


def test_label_info_cli_writes_json(tmp_path: Path) -> None:
    from tests.reliability.conftest import invoke, output_of

    data = write_all(tmp_path / "datasets")
    result = invoke(["label-info", "acdc", "--root", str(data), "--workers", "1"])
    assert result.exit_code == 0, output_of(result)
    info = read_label_info(data / "acdc" / "acdc_label_info.json")
    assert len(info) == 8 and info.class_set == "cityscapes19" and info.dataset == "acdc"
    doc = json.loads((data / "acdc" / "acdc_label_info.json").read_text())
    assert doc["class_to_files"][TRAIN["car"]]
    result = invoke(["label-info", "dark_zurich", "--root", str(data), "--split", "train"])
    assert result.exit_code == 2 and "has no labels for split 'train'" in output_of(result)


def test_eval_on_a_benchmark_through_the_cli(tmp_path: Path) -> None:
    from tests.engine.test_evaluate import save_checkpoint
    from tests.reliability.conftest import invoke, output_of

    data = write_all(tmp_path / "datasets")
    ckpt = save_checkpoint(tmp_path / "m.safetensors", 19)
    out = tmp_path / "acdc.json"
    args = ["eval", str(ckpt), "--dataset", "acdc_night", "--data-root", str(data), "--device", "cpu"]
    result = invoke([*args, "--json", str(out), "--save-predictions", str(tmp_path / "pred")])
    text = output_of(result)
    assert result.exit_code == 0, text
    assert "ACDC night val: 2 images" in text
    metrics = json.loads(out.read_text())
    assert metrics["num_images"] == 2 and metrics["dataset"] == "acdc_night"
    assert metrics["dataset_root"] == str(data / "acdc")
    assert (tmp_path / "pred/night/GOPR0476/GOPR0476_frame_000041_labelIds.png").is_file()
    # the classes the ground truth holds are scored, the others n/a
    per_class = metrics["per_class"]
    assert per_class["road"] is not None and per_class["train"] is None
    result = invoke(["eval", str(ckpt), "--dataset", "dark_zurich", "--data-root", str(data), "--split", "train"])
    assert result.exit_code == 2 and "Dark Zurich night has no public labels for it" in output_of(result)
    result = invoke(["eval", str(ckpt), "--dataset", "mapillary", "--data-root", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such folder" in output_of(result)


def test_target_config_and_data_root_check(tmp_path: Path) -> None:
    from proca.config import resolve_config
    from proca.engine.runfolder import check_data_root

    cfg = resolve_config("gtav", "acdc_night")
    assert cfg.tgt == "acdc_night" and cfg.class_set == "cityscapes19"
    assert resolve_config("gtav", "cityscapes").model_dump(exclude={"tgt"}) == cfg.model_dump(exclude={"tgt"})
    # a name that is no built-in is a folder/glob of images or a card: refused when it names none, listing both
    from proca.data.targets import resolve_target

    assert resolve_config("gtav", "kitti").tgt == str(Path("kitti").absolute())
    with pytest.raises(DataError, match="--tgt kitti: no such dataset, file or folder; give a built-in dataset "
                       r"\(cityscapes, acdc"):  # fmt: skip
        resolve_target("kitti", tmp_path)
    with pytest.raises(DataError, match=r"dataset folder .*/bdd100k does not exist; --data-root must hold bdd100k/"):
        check_data_root(tmp_path, "gtav", ["pseudo-label"], "bdd100k")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:no --backbone-weights")
def test_whole_recipe_with_a_benchmark_target(tmp_path: Path) -> None:
    import torch

    from proca.data.synthetic import write_synthetic_datasets
    from tests.reliability.conftest import invoke, output_of

    data = tmp_path / "datasets"
    write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=SIZE, force=True, progress=False)
    write_acdc(data / "acdc", conditions=("night",))
    run = tmp_path / "run"
    tiny = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "1", "--batch-size", "2"]
    args = ["train", "--tgt", "acdc_night", "--data-root", str(data), "--out", str(run), *tiny, "--device", "cpu"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke([*args, "--set", "num_workers=0", "--set", "eval.max_images=1"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, output_of(result)
    assert json.loads((run / "config.json").read_text())["tgt"] == "acdc_night"
    # the ACDC night train images were pseudo-labelled under their own names, then trained on
    labels = sorted(p.relative_to(run / "pseudo_labels").as_posix() for p in (run / "pseudo_labels").rglob("*.png"))
    assert labels == ["night/GOPR0475/GOPR0475_frame_000041.png", "night/GOPR0475/GOPR0475_frame_000042.png"]
    assert (run / "ssl.safetensors").is_file()
    steps = [json.loads(x) for x in (run / "proca.log.jsonl").read_text().splitlines()]
    assert steps[-1]["event"] == "eval" and 0 <= steps[-1]["miou"] <= 100  # validated on ACDC night val
    stages = set(json.loads((run / "results.json").read_text()))
    assert stages == {"source", "prototypes", "proca", "pseudo-label", "ssl"}


def test_docs_vistas_table_matches_the_code() -> None:
    text = (Path(__file__).parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:4] for line in text.splitlines() if line.startswith("| ") and "`" in line]
    table = {int(i): (n.strip(" `"), t.strip()) for i, n, t in rows if i.strip().isdigit()}
    assert len(table) == 66
    for vistas_id, (name, _, target) in enumerate(VISTAS_LABELS):
        expected = f"{target} ({CITYSCAPES_19.classes.index(target)})" if target else "ignored (255)"
        assert table[vistas_id] == (name, expected), vistas_id
