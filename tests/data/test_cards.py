"""Dataset cards: labelled data of your own as an evaluation set, a validation set and a target; their mistakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from proca.cli import app
from proca.data.cards import card_dataset, load_card
from proca.data.classes import CITYSCAPES_19, CITYSCAPES_LABELS, SYNTHIA_16
from proca.errors import DataError

runner = CliRunner()
LABEL_IDS = np.array([r.label_id for r in CITYSCAPES_LABELS if r.train_id != 255] + [0, 4], dtype=np.uint8)
TRAIN_OF_ID = CITYSCAPES_19.lookup_table("cityscapes")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 3 labelled scenes as a Cityscapes folder and as my own files: photos/<place>/<shot>.jpg with
    label ids, train ids and colour labels under other names."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for i, (city, shot) in enumerate((("aachen", "a"), ("bonn", "b"), ("bonn", "c"))):
        image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        ids = rng.choice(LABEL_IDS, size=(32, 64)).astype(np.uint8)
        name = f"{city}_{i:06d}_000019"
        for sub, arr, suffix in (("leftImg8bit", image, "leftImg8bit"), ("gtFine", ids, "gtFine_labelIds")):
            path = root / "cityscapes" / sub / "val" / city / f"{name}_{suffix}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
        own = root / "photos" / city / f"{shot}.png"  # PNG: the same pixels as the Cityscapes image
        own.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(own)
        for folder, arr in (("ids", ids), ("train", TRAIN_OF_ID[ids])):
            out = root / folder / city / f"{shot}_mask.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(out)
        colours = CITYSCAPES_19.colorize(TRAIN_OF_ID[ids])  # ignore -> black
        out = root / "colour" / city / f"{shot}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours).save(out)
    return root


def _card(root: Path, name: str, body: dict[str, Any]) -> Path:
    import yaml

    path = root / name
    path.write_text(json.dumps(body) if name.endswith(".json") else yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.models import build_model, save_model

    torch.manual_seed(0)
    model = build_model("deeplabv2_resnet18", num_classes=19)
    with torch.no_grad():  # spread the head's biases so the predictions cover several classes
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d) and conv.out_channels == 19 and conv.bias is not None:
                conv.bias.copy_(torch.randn(19) * 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_model(model, path, metadata={"eval_input_size": [16, 32]})
    return path


CARDS = {
    "labelid.yaml": {"images": "photos/**/*.png", "labels": "ids/{name}_mask.png", "label_format": "labelid"},
    "trainid.json": {
        "name": "mine",
        "images": "photos/**/*.png",
        "labels": "train/{name}_mask.png",
        "label_format": "trainid",
        "classes": "cityscapes19",
    },
    "palette.yml": {"images": "photos/*/*.png", "labels": "colour/**/*.png", "label_format": "palette"},
}


@pytest.mark.parametrize("card_name", sorted(CARDS))
def test_a_card_scores_exactly_like_the_same_data_as_cityscapes(
    data: Path, ckpt: Path, tmp_path: Path, card_name: str
) -> None:
    card = _card(data, card_name, CARDS[card_name])
    scores = []
    views = (["--data-root", str(data)], ["--dataset", str(data / "cityscapes")], ["--dataset", str(card)])
    for i, extra in enumerate(views):
        out = tmp_path / f"m{i}.json"
        result = runner.invoke(app, ["eval", str(ckpt), *extra, "--json", str(out)])
        assert result.exit_code == 0, result.output
        metrics = json.loads(out.read_text())
        scores.append((metrics["miou"], metrics["num_images"], metrics["per_class"]))
    assert scores[0] == scores[1] == scores[2] and scores[0][1] == 3
    assert metrics["card"] == str(card) and metrics["dataset"] == str(card)


def test_card_labels_map_by_name_to_another_class_set_and_an_explicit_table(data: Path) -> None:
    card = load_card(_card(data, "t.yaml", CARDS["trainid.json"]))
    city = card_dataset(card)
    synthia = card_dataset(card, class_set=SYNTHIA_16)
    a, b = city[0]["label"].numpy(), synthia[0]["label"].numpy()
    for i, name in enumerate(CITYSCAPES_19.classes):
        expected = SYNTHIA_16.classes.index(name) if name in SYNTHIA_16.classes else 255
        assert np.all(b[a == i] == expected), name
    assert np.all(b[a == 255] == 255)
    # an explicit table: file value -> class name (car = 0, road = 1; 255 ignore)
    small = data / "small"
    small.mkdir(exist_ok=True)
    for shot, values in (("x", [0, 1, 255, 1]), ("y", [0, 0, 0, 0])):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(small / f"{shot}.png")
        Image.fromarray(np.array([values] * 4, np.uint8)).save(small / f"{shot}_l.png")
    table = {
        "images": "small/?.png",
        "labels": "small/{stem}_l.png",
        "label_format": "trainid",
        "classes": {0: "car", 1: "road"},
    }
    ds = card_dataset(_card(data, "table.yaml", table))
    assert ds.names == ["x", "y"]
    assert ds[0]["label"].numpy()[0].tolist() == [13, 0, 255, 0]  # car, road, ignore, road in cityscapes19
    # a sparse {value: name} table with palette labels: the default colours follow the values
    colours = np.array([[[128, 64, 128], [0, 0, 142], [0, 0, 0], [0, 0, 0]]] * 4, np.uint8)  # road, car, ignore
    Image.fromarray(colours).save(small / "x_c.png")
    Image.fromarray(colours).save(small / "y_c.png")
    sparse = {**table, "labels": "small/{stem}_c.png", "label_format": "palette", "classes": {2: "road", 9: "car"}}
    ds = card_dataset(_card(data, "sparse.yaml", sparse))
    assert ds[0]["label"].numpy()[0].tolist() == [0, 13, 255, 255]


def _error(data: Path, body: dict[str, Any], *, read: bool = False) -> str:
    path = _card(data, "bad.yaml", body)
    with pytest.raises(DataError) as info:
        ds = card_dataset(path)
        if read:
            for i in range(len(ds)):
                ds[i]
    return str(info.value)


def test_card_mistakes_are_named_by_key_with_the_fix(data: Path) -> None:
    good = CARDS["trainid.json"]
    msg = _error(data, {**good, "lables": "x"})
    assert "lables: unknown key; did you mean 'labels'?" in msg
    msg = _error(data, {**good, "images": "pictures/*.jpg"})
    assert "images: the glob" in msg and "matches no" in msg and "fix the glob" in msg
    msg = _error(data, {k: v for k, v in good.items() if k != "images"})
    assert "images: missing" in msg
    msg = _error(data, {**good, "labels": "train/{name}_label.png"})
    assert "labels: image" in msg and "has no label" in msg and "_label.png, which does not exist" in msg
    msg = _error(data, {**good, "labels": "ids/**/*.png"})  # a glob whose names differ from the images'
    assert "labels: image" in msg and "pattern such as" in msg
    msg = _error(data, {**good, "labels": "ids/{name}_mask.png"}, read=True)  # label ids read as train ids
    assert "label_format: label" in msg and "outside trainid's range" in msg and "(labelid?)" in msg
    msg = _error(data, {**good, "label_format": "trainids"})
    assert "label_format: 'trainids' is not a label format; did you mean 'trainid'?" in msg
    msg = _error(data, {**good, "classes": "cityscapes"})
    assert "classes: 'cityscapes' is not a built-in table" in msg and "did you mean 'cityscapes19'?" in msg
    msg = _error(data, {**good, "classes": ["road", "sidewalks"]})
    assert "classes[1]: 'sidewalks' is not a Cityscapes class; did you mean 'sidewalk'?" in msg
    msg = _error(data, {**CARDS["labelid.yaml"], "classes": ["road"]})
    assert "classes: label_format labelid reads Cityscapes label ids" in msg
    palette = {**CARDS["palette.yml"], "palette": [[128, 64, 128]], "classes": ["road"]}
    msg = _error(data, palette, read=True)
    assert "palette: label" in msg and "neither in palette nor in ignore_colors" in msg
    msg = _error(data, {**good, "palette": [[1, 2, 3]]})
    assert "palette: only used with label_format palette" in msg
    msg = _error(data, {**CARDS["palette.yml"], "palette": [[1, 2]]})
    assert "palette: give a list of [R, G, B] colours" in msg
    msg = _error(data, {**good, "labels": "colour/{name}.png"}, read=True)  # colour labels read as train ids
    assert "label_format: label" in msg and "use label_format palette" in msg
    sparse = {**CARDS["palette.yml"], "classes": {0: "road", 13: "car"}}  # default colours by value
    msg = _error(data, sparse, read=True)
    assert "neither in palette nor in ignore_colors" in msg  # the scenes hold more classes than road and car
    msg = _error(data, {k: v for k, v in good.items() if k != "label_format"})
    assert "label_format: missing" in msg
    (data / "broken.yaml").write_text("images: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        load_card(data / "broken.yaml")


def test_eval_with_a_bad_card_is_one_line_and_exit_2(data: Path, ckpt: Path) -> None:
    path = _card(data, "bad_cli.yaml", {**CARDS["trainid.json"], "imags": "x"})
    result = runner.invoke(app, ["eval", str(ckpt), "--dataset", str(path)])
    assert result.exit_code == 2 and "did you mean 'images'?" in result.output
    assert "Traceback" not in result.output
    unlabelled = _card(data, "nolabels.yaml", {"images": "photos/**/*.png"})
    result = runner.invoke(app, ["eval", str(ckpt), "--dataset", str(unlabelled)])
    assert result.exit_code == 2 and "labels: missing" in result.output


@pytest.mark.filterwarnings("ignore:no --backbone-weights")
def test_cards_as_validation_set_and_as_target(data: Path, tmp_path: Path) -> None:
    """A folder target validates on --tgt-val CARD; a labelled card target validates on its own labels."""
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path / "datasets"
    write_synthetic_datasets(root, seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    card = _card(data, "val.yaml", CARDS["trainid.json"])
    tiny = ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "1", "--batch-size", "2"]
    tiny += ["--set", "num_workers=0", "--device", "cpu", "--stage", "source", "--data-root", str(root)]
    runs = [
        (str(data / "photos"), ["--tgt-val", str(card)]),
        (str(data / "photos"), ["--tgt-val", str(data / "cityscapes")]),  # a Cityscapes folder
        (str(card), []),
    ]
    for i, (tgt, tgt_val) in enumerate(runs):
        run = tmp_path / f"run{i}"
        result = runner.invoke(app, ["train", "--tgt", tgt, *tgt_val, "--out", str(run), *tiny])
        assert result.exit_code == 0, result.output
        assert "validation: skipped" not in result.output
        results = json.loads((run / "results.json").read_text())
        assert results["source"]["miou"] is not None and (run / "source.best.safetensors").is_file()
        config = json.loads((run / "config.json").read_text())
        assert config["tgt"] == tgt and config["tgt_val"] == (tgt_val[1] if tgt_val else None)
    no_images = _card(data, "no_images.yaml", {**CARDS["trainid.json"], "images": "photos/*.webp"})
    result = runner.invoke(app, ["train", "--tgt", str(no_images), "--out", str(tmp_path / "r4"), *tiny])
    assert result.exit_code == 2 and "images: the glob" in result.output and not (tmp_path / "r4").exists()
    result = runner.invoke(app, ["train", "--tgt", str(card), "--tgt-val", str(data / "nowhere"), "--out",
                                 str(tmp_path / "r3"), *tiny])  # fmt: skip
    assert result.exit_code == 2 and "--tgt-val" in result.output and not (tmp_path / "r3").exists()


def test_the_full_example_card_of_docs_data_md_reads(tmp_path: Path) -> None:
    """The card printed in docs/data.md is valid and means what the page says."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text(encoding="utf-8")
    block = text.split("A full card:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    card_path = tmp_path / "card.yaml"
    card_path.write_text(block)
    (tmp_path / "images" / "day").mkdir(parents=True)
    (tmp_path / "masks" / "day").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "images" / "day" / "a.jpg")
    colours = np.array([[[128, 64, 128], [0, 0, 142], [0, 0, 0], [70, 130, 180]]] * 2, np.uint8)
    Image.fromarray(colours).save(tmp_path / "masks" / "day" / "a_mask.png")
    dataset = card_dataset(card_path)
    assert dataset.card.name == "my-street" and dataset.names == ["day/a"]  # type: ignore[attr-defined]
    road, car, sky = (CITYSCAPES_19.classes.index(n) for n in ("road", "car", "sky"))
    assert dataset[0]["label"].numpy()[0].tolist() == [road, car, 255, sky]


@pytest.mark.filterwarnings("ignore:no --backbone-weights")
def test_a_card_as_the_source_counts_like_the_built_in_reader_and_trains(tmp_path: Path) -> None:
    """GTA5's own files described by a card: the same label info as the GTA5 reader's, and every stage runs
    with the card as --src (no gtav/ under --data-root)."""
    from proca.data.cards import card_label_info
    from proca.data.label_info import build_label_info
    from proca.data.synthetic import write_synthetic_datasets

    root = tmp_path / "datasets"
    write_synthetic_datasets(root, seed=0, num_train=3, num_val=1, size=(32, 64), progress=False)
    body = {"images": "images/*.png", "labels": "labels/{name}.png", "label_format": "labelid"}
    card = _card(root / "gtav", "card.yaml", body)
    ours = card_label_info(card, class_set=CITYSCAPES_19)
    theirs = build_label_info("gtav", root / "gtav", workers=1)
    assert ours.files == [Path(f).stem for f in theirs.files]
    assert ours.file_to_classes == {Path(k).stem: v for k, v in theirs.file_to_classes.items()}
    assert ours.pixel_counts == {Path(k).stem: v for k, v in (theirs.pixel_counts or {}).items()}

    moved = tmp_path / "mine"
    (root / "gtav").rename(moved)
    run = tmp_path / "run"
    args = ["train", "--src", str(moved / "card.yaml"), "--data-root", str(root), "--out", str(run)]
    args += ["--arch", "deeplabv2_resnet18", "--input-size", "32x64", "--iters", "1", "--batch-size", "2"]
    args += ["--set", "num_workers=0", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "ssl.safetensors").is_file() and (run / "card_label_info.json").is_file()
    assert json.loads((run / "config.json").read_text())["src"] == str(moved / "card.yaml")
    unlabelled = _card(moved, "nolabels.yaml", {"images": "images/*.png"})
    args[2], args[6] = str(unlabelled), str(tmp_path / "r2")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "labels: missing; --src reads labels" in result.output
    result = runner.invoke(app, ["train", "--src", "gta5", "--print-config"])
    assert result.exit_code == 2 and "dataset card" in result.output
