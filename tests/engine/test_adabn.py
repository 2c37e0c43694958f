"""AdaBN (``proca adapt-bn``): only BatchNorm statistics change, as a cumulative average; MiT is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from proca.engine.adabn import adapt_batchnorm, batchnorm_layers
from proca.errors import ConfigError, DataError
from tests.reliability.conftest import assert_user_error, invoke, output_of


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    with torch.no_grad():  # statistics far from the defaults, so that a reset is visible
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(7.0)
    return model


def test_statistics_are_the_cumulative_mean_of_batch_statistics() -> None:
    model = _tiny()
    model.train()  # the mode before the call must come back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(b, 3, 6, 8, generator=gen) * s + s for b, s in ((4, 1.0), (4, 3.0), (2, 0.5))]
    result = adapt_batchnorm(model, iter(batches))
    assert (result.layers, result.batches, result.images) == (1, 3, 10)
    conv = model[0]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs])
    variances = torch.stack([o.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True) for o in outs])
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3
    assert bn.momentum == 0.1 and model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("1.running") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, after[key]), key  # every weight identical, bit for bit


def test_dropout_stays_off_and_no_gradient_is_kept() -> None:
    model = _tiny()
    seen: list[bool] = []
    model[3].register_forward_hook(lambda m, i, o: seen.append(m.training))
    adapt_batchnorm(model, iter([torch.randn(2, 3, 6, 8)]))
    assert seen == [False]
    assert all(p.grad is None for p in model.parameters())


def test_refusals_leave_the_model_untouched() -> None:
    with pytest.raises(ConfigError, match="LayerNorm"):
        adapt_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4)), iter([torch.randn(1, 3, 4, 4)]))
    from proca.models import build_model

    with pytest.raises(ConfigError, match="frozen"):
        adapt_batchnorm(build_model("deeplabv2_resnet18", norm="frozen"), iter([torch.randn(1, 3, 32, 32)]))
    model = _tiny()
    with pytest.raises(DataError, match="no target images"):
        adapt_batchnorm(model, iter([]))
    assert torch.equal(model[1].running_mean, torch.full((4,), 5.0)) and model[1].momentum == 0.1
    with pytest.raises(DataError, match="non-finite"):
        adapt_batchnorm(model, iter([torch.full((2, 3, 6, 8), float("nan"))]))
    assert torch.equal(model[1].running_var, torch.full((4,), 7.0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from proca.data.synthetic import write_synthetic_datasets
    from proca.models import build_model, save_model

    root = tmp_path_factory.mktemp("adabn")
    write_synthetic_datasets(root / "datasets", seed=0, num_train=3, num_val=1, size=(32, 64), progress=False)
    torch.manual_seed(0)
    meta = {"class_set": "cityscapes19", "eval_input_size": [32, 64], "stage": "source", "metrics": {"miou": 1.0}}
    save_model(build_model("deeplabv2_resnet18"), root / "source.safetensors", metadata=meta)
    return root


def test_cli_changes_only_batchnorm_statistics(folder: Path) -> None:
    from proca.engine.predict import load_for_inference
    from proca.models import load_model

    src, out = folder / "source.safetensors", folder / "adabn.safetensors"
    args = ["adapt-bn", src, "--data-root", folder / "datasets", "--out", out, "--device", "cpu", "--batch-size", "2"]
    result = invoke(args)
    assert result.exit_code == 0, output_of(result)
    assert "3 target images at 32x64" in " ".join(output_of(result).split())
    before, after = load_model(src), load_model(out)
    bn_names = {n for n, m in before.model.named_modules() if m in batchnorm_layers(before.model)}
    a, b = before.model.state_dict(), after.model.state_dict()
    assert a.keys() == b.keys()
    changed = set()
    for key in a:
        if torch.equal(a[key], b[key]):
            continue
        owner, _, buffer = key.rpartition(".")
        assert owner in bn_names and buffer in ("running_mean", "running_var", "num_batches_tracked"), key
        changed.add(owner)
    assert changed == bn_names  # every BatchNorm layer re-estimated, nothing else touched
    assert after.metadata["stage"] == "adabn" and after.metadata["metrics"] == {}
    assert after.metadata["adabn"]["images"] == 3 and after.metadata["adabn"]["batches"] == 2
    load_for_inference(out, torch.device("cpu"))  # the adapted checkpoint evaluates

    refused = assert_user_error(invoke(args), "exists", "--force")
    assert "adapted" not in refused
    limited = invoke([*args, "--force", "--images", "1"])
    assert limited.exit_code == 0, output_of(limited)
    assert load_model(out).metadata["adabn"]["images"] == 1


def test_cli_refuses_mit_and_writes_nothing(folder: Path) -> None:
    from proca.models import build_model, save_model

    mit = folder / "mit.safetensors"
    save_model(build_model("daformer_mit_b0"), mit, metadata={"class_set": "cityscapes19"})
    out = folder / "mit-adabn.safetensors"
    result = invoke(["adapt-bn", mit, "--data-root", folder / "datasets", "--out", out, "--device", "cpu"])
    assert_user_error(result, "daformer_mit_b0", "LayerNorm")
    assert not out.exists()


def test_cli_names_a_missing_target(folder: Path, tmp_path: Path) -> None:
    result = invoke(["adapt-bn", folder / "source.safetensors", "--data-root", tmp_path, "--out", tmp_path / "x.st"])
    assert_user_error(result, "cityscapes")
    assert not (tmp_path / "x.st").exists()


def test_adapt_bn_reads_a_folder_of_photos_as_the_target(tmp_path: Path) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from proca.cli import app
    from proca.models import build_model, load_model, save_model

    footage = tmp_path / "footage"
    (footage / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, size in enumerate([(70, 130), (90, 120)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(footage / "a" / f"f{i}.jpg")
    ckpt = tmp_path / "m.safetensors"
    save_model(build_model("deeplabv2_resnet18"), ckpt, metadata={"class_set": "cityscapes19"})
    out = tmp_path / "adabn.safetensors"
    args = ["adapt-bn", str(ckpt), "--tgt", str(footage), "--out", str(out), "--input-size", "32x64"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    adapted = load_model(out)
    assert adapted.metadata["adabn"]["images"] == 2 and adapted.metadata["adabn"]["target"] == str(footage)
    before = load_model(ckpt).model.state_dict()
    changed = [k for k, v in adapted.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
