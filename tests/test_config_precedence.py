"""Defaults live on the fields; preset < --config < --set < typed options, for every key of every option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proca.cli import app
from proca.config import PRESETS, TRAIN_OPTIONS, TrainConfig, resolve_config

# three distinct valid values per option: for the config file, for --set, and for the option itself
VALUES: dict[str, tuple[Any, Any, Any]] = {
    "arch": ("deeplabv2_resnet50", "deeplabv2_vgg16", "deeplabv2_resnet18"),
    "method": ("memory-bank", "prototype", "memory-bank"),
    "seed": (5, 3, 9),
    "amp": ("bf16", "fp16", "none"),
    "channels_last": (True, False, True),
    "checkpoint_every": (7, 8, 9),
    "tgt_val": ("/data/a.yaml", "/data/b", "cityscapes"),
    "iters": (40, 50, 60),
    "batch_size": (4, 6, 10),
    "input_size": ([64, 128], [32, 64], [96, 192]),
}


def _get(cfg: TrainConfig, key: str) -> Any:
    value: Any = cfg.model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def test_the_gtav_preset_is_the_field_defaults_and_synthia_changes_only_classes_and_size() -> None:
    assert resolve_config("gtav") == TrainConfig()
    assert set(PRESETS["gtav->cityscapes"]) == {"src", "tgt"}
    synthia = resolve_config("synthia").model_dump(mode="json")
    defaults = TrainConfig().model_dump(mode="json")
    changed = {k for k in defaults if defaults[k] != synthia[k]}
    assert changed == {"src", "class_set", "source", "prototypes", "proca", "daformer"}
    assert synthia["source"]["input_size"] == synthia["proca"]["source_size"] == [760, 1280]
    assert {k for k in defaults["proca"] if defaults["proca"][k] != synthia["proca"][k]} == {"source_size"}
    # DAFormer's SYNTHIA config: the source resize, and the thing classes in SYNTHIA16 train ids
    assert {k for k in defaults["daformer"] if defaults["daformer"][k] != synthia["daformer"][k]} == {
        "source_size",
        "fd_classes",
    }


def test_every_option_key_has_values_here() -> None:
    assert set(VALUES) == set(TRAIN_OPTIONS)


@pytest.mark.parametrize("option", sorted(TRAIN_OPTIONS))
def test_precedence_for_every_key_of_every_option(option: str, tmp_path: Path) -> None:
    v_file, v_set, v_opt = VALUES[option]
    for key in TRAIN_OPTIONS[option]:
        config = tmp_path / "c.json"
        data = _nested(key, v_file)
        if key.endswith("iters"):
            data = _nested(key.rsplit(".", 1)[0], {"iters": v_file, "poly_iters": 1000})
        config.write_text(json.dumps(data))
        base = resolve_config().model_dump(mode="json")
        from_file = resolve_config(config_file=config)
        assert _get(from_file, key) == v_file, key
        from_set = resolve_config(config_file=config, overrides=[f"{key}={json.dumps(v_set)}"])
        assert _get(from_set, key) == v_set, key
        typed = resolve_config(config_file=config, overrides=[f"{key}={json.dumps(v_set)}"], **{option: v_opt})
        assert _get(typed, key) == v_opt, key
        not_typed = resolve_config(config_file=config, overrides=[f"{key}={json.dumps(v_set)}"], **{option: None})
        assert _get(not_typed, key) == v_set, key
        assert _get(resolve_config(), key) == _get(TrainConfig(), key) == _nested_get(base, key)


def _nested_get(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def test_iters_keeps_the_schedule_ratio_of_the_layer_below() -> None:
    cfg = resolve_config(iters=100)
    assert (cfg.source.iters, cfg.source.poly_iters) == (100, 157)  # 31,250 / 20,000 of the release
    assert (cfg.proca.iters, cfg.proca.poly_iters) == (100, 100)


def _printed(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["train", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_options_not_typed_never_override_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('seed = 5\namp = "bf16"\nchannels_last = true\n[proca]\ntemperature = 0.2\n')
    printed = _printed("--config", str(config))
    assert (printed["seed"], printed["amp"], printed["channels_last"], printed["proca"]["temperature"]) == (
        5, "bf16", True, 0.2,
    )  # fmt: skip
    assert _printed("--set", "seed=3")["seed"] == 3
    assert _printed("--config", str(config), "--set", "seed=3")["seed"] == 3
    typed = _printed("--config", str(config), "--set", "seed=3", "--seed", "7", "--amp", "none", "--no-channels-last")
    assert (typed["seed"], typed["amp"], typed["channels_last"]) == (7, "none", False)
    synthia = tmp_path / "s.toml"
    synthia.write_text('src = "synthia"\nclass_set = "synthia16"\n')
    assert _printed("--config", str(synthia))["source"]["input_size"] == [760, 1280]  # the file's src picks the preset


def test_the_run_records_the_seed_given_with_set(tmp_path: Path) -> None:
    from proca.data.synthetic import write_synthetic_datasets

    data = tmp_path / "data"
    write_synthetic_datasets(data, seed=0, num_train=2, num_val=1, size=(32, 64), progress=False)
    out = tmp_path / "run"
    args = ["train", "--data-root", str(data), "--out", str(out), "--stage", "source", "--arch", "deeplabv2_resnet18"]
    args += ["--input-size", "32x64", "--iters", "1", "--batch-size", "2", "--device", "cpu", "--set", "seed=3"]
    args += ["--set", "num_workers=0", "--set", "source.class_balanced=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    from proca.models import load_model

    assert load_model(out / "source.safetensors").metadata["config"]["seed"] == 3
