"""Config: presets equal ALGORITHM.md, overrides, config files and typo suggestions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proca.config import PRESETS, TrainConfig, apply_overrides, config_keys, preset, resolve_config
from proca.errors import ConfigError


@pytest.mark.parametrize("src", ["gtav", "synthia"])
def test_presets_equal_the_released_recipe(src: str) -> None:
    cfg = resolve_config(src, "cityscapes")
    size = (720, 1280) if src == "gtav" else (760, 1280)
    assert cfg.arch == "deeplabv2_resnet101" and cfg.norm == "batch"
    assert cfg.num_classes == (19 if src == "gtav" else 16)
    # stage 1: 5e-4, poly over 31,250 stopped at 20,000, CE + 0.75 Lovasz, class-balanced source
    s = cfg.source
    assert (s.iters, s.poly_iters, s.lr, s.head_lr_mult) == (20_000, 31_250, 5e-4, 10.0)
    assert (s.momentum, s.weight_decay, s.poly_power, s.batch_size) == (0.9, 5e-4, 0.9, 8)
    assert s.input_size == size and s.lovasz_weight == 0.75 and s.class_balanced and not s.color_jitter
    # stage 2: eval pass over the source from the last source checkpoint
    assert cfg.prototypes.init_from == "last" and cfg.prototypes.input_size == size
    # stage 3: 2.5e-4 over 90,000, threshold 0.9 on raw logits, lambdas 1, tau 50, batch 8 (4 + 4)
    p = cfg.proca
    assert (p.iters, p.schedule_length, p.lr, p.head_lr_mult) == (90_000, 90_000, 2.5e-4, 10.0)
    assert (p.momentum, p.weight_decay, p.batch_size) == (0.9, 5e-4, 8)
    assert p.source_size == size and p.target_size == (512, 1024) and p.color_jitter
    assert (p.threshold, p.threshold_mode, p.lambda_feat, p.lambda_out, p.temperature) == (0.9, "logit", 1.0, 1.0, 50.0)
    assert p.lovasz_weight == 0.75 and p.multi_level and p.prototype_momentum is None and p.init_from == "last"
    # stage 4: percentile 0.6 capped at 0.9 on 1024x512 inputs
    q = cfg.pseudo_label
    assert (q.percent, q.cap, q.input_size) == (0.6, 0.9, (512, 1024))
    # stage 5: 5e-4 over 90,000 from ImageNet, full-size image scaled 0.5-1.5, crop 1024x512, jitter
    t = cfg.ssl
    assert (t.iters, t.schedule_length, t.lr, t.batch_size, t.init) == (90_000, 90_000, 5e-4, 8, "imagenet")
    assert t.input_size == (512, 1024) and t.scale_reference is None and t.scale == (0.5, 1.5) and t.color_jitter
    assert cfg.eval.input_size == (512, 1024) and cfg.eval.scales == (1.0,)


def test_presets_are_data_and_roundtrip() -> None:
    for data in PRESETS.values():
        cfg = TrainConfig.model_validate(data)
        assert TrainConfig.model_validate(json.loads(cfg.model_dump_json())) == cfg


def test_set_override_and_typo_suggestion() -> None:
    cfg = resolve_config(overrides=["proca.temperature=0.1", "eval.input_size=[64, 128]", "ssl.per_device_batch=2"])
    assert cfg.proca.temperature == 0.1 and cfg.eval.input_size == (64, 128) and cfg.ssl.per_device_batch == 2
    with pytest.raises(ConfigError, match=r"proca\.temprature.*proca\.temperature"):
        resolve_config(overrides=["proca.temprature=0.1"])
    with pytest.raises(ConfigError, match=r"'procca'.*'proca'"):
        resolve_config(overrides=["procca.lr=1"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        apply_overrides(preset("gtav"), ["proca.lr"])


def test_config_files_toml_json_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("seed = 3\n[proca]\nlambda_feat = 0.5\n")
    (tmp_path / "b.json").write_text(json.dumps({"source": {"iters": 7, "poly_iters": 9}}))
    (tmp_path / "c.yaml").write_text("ssl:\n  scale: [0.75, 1.25]\n")
    assert resolve_config(config_file=tmp_path / "a.toml").proca.lambda_feat == 0.5
    assert resolve_config(config_file=tmp_path / "b.json").source.schedule_length == 9
    assert resolve_config(config_file=tmp_path / "c.yaml").ssl.scale == (0.75, 1.25)
    (tmp_path / "bad.yaml").write_text("sorce:\n  iters: 3\n")
    with pytest.raises(ConfigError, match=r"'sorce'.*'source'"):
        resolve_config(config_file=tmp_path / "bad.yaml")
    (tmp_path / "bad.ini").write_text("x=1")
    with pytest.raises(ConfigError, match="unknown format"):
        resolve_config(config_file=tmp_path / "bad.ini")


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match="poly_iters"):
        resolve_config(overrides=["source.poly_iters=10", "source.iters=20"])
    with pytest.raises(ConfigError, match="even"):
        resolve_config(overrides=["proca.batch_size=3"])
    with pytest.raises(ConfigError, match="class_set"):
        resolve_config("synthia", overrides=["class_set=cityscapes19"])
    with pytest.raises(ConfigError, match="scale"):
        resolve_config(overrides=["ssl.scale=[1.5, 0.5]"])
    with pytest.raises(ConfigError, match="memory-bank"):
        resolve_config(method="memory_bank")  # the valid names are listed


def test_cli_options_apply_to_every_stage() -> None:
    cfg = resolve_config(iters=100, batch_size=2, input_size=(32, 64), arch="deeplabv2_resnet18")
    assert cfg.source.iters == 100 and cfg.source.poly_iters == 157  # keeps the released 20,000 / 31,250 ratio
    assert cfg.proca.iters == cfg.ssl.iters == 100 and cfg.proca.batch_size == 2
    assert cfg.source.input_size == cfg.proca.target_size == cfg.eval.input_size == (32, 64)
    assert "proca.temperature" in config_keys() and "eval" in config_keys()


def test_set_method_is_kept_when_no_method_option_is_given() -> None:
    from proca.config import resolve_config

    assert resolve_config("gtav", "cityscapes", overrides=["method=memory-bank"], method=None).method == "memory-bank"
    assert resolve_config("gtav", "cityscapes", overrides=["method=memory-bank"], method="prototype").method == (
        "prototype"
    )
