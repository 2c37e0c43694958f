"""The ``proca`` command line: a thin Typer layer over the library.

Each command parses and validates its options, then calls one library function. Heavy modules
(torch, the engine) are imported inside the commands so that ``proca --help`` stays fast.
User errors (:class:`proca.errors.ProcaError`) become one red line and exit status 2, and proca's own
warnings one yellow line (:func:`proca.errors.concise_warnings`); ``proca --debug COMMAND`` shows the
traceback and the warnings' source lines instead. Every command's help ends with examples;
``tests/test_cli_examples.py`` runs each of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from proca import __version__


def _hide_flag_metavars(params: list[Any]) -> None:
    """Give flags (``--flip``, ``--help``) an empty metavar: Typer >= 0.2x shows ``<bool>`` for them otherwise."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""


class _ProcaGroup(TyperGroup):
    """The ``proca`` group: help screens show no ``<bool>`` after flags, for every command."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _hide_flag_metavars(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _hide_flag_metavars(command.get_params(ctx))
        return command


app = typer.Typer(
    name="proca",
    cls=_ProcaGroup,
    help="Prototypical Contrast Adaptation for domain-adaptive semantic segmentation (GTA5 / SYNTHIA -> Cityscapes).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"proca {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn user errors into one red line and exit status 2 (130 on Ctrl-C); proca's warnings into one line.

    User errors are :class:`~proca.errors.ProcaError` (also when re-raised from a DataLoader worker) and
    ``OSError`` (a folder that cannot be read, a full disk): neither is a bug to show a traceback for.
    Without ``--debug``, proca's own ``UserWarning`` messages print as one ``warning:`` line without a source
    path (:func:`~proca.errors.concise_warnings`).
    """
    from proca.errors import ProcaError, concise_warnings, print_user_error

    try:
        with contextlib.nullcontext() if _state["debug"] else concise_warnings():
            yield
    except (ProcaError, OSError) as err:
        if _state["debug"]:
            raise
        print_user_error(err)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if _state["debug"]:
            raise
        from rich.console import Console

        Console(stderr=True).print("[yellow]interrupted[/]: nothing half-written was left behind.")
        raise typer.Exit(130) from None


def _existing_checkpoint(path: Path, what: str = "checkpoint") -> Path:
    """Refuse a checkpoint path that does not exist or is a folder, as one red line (Click would print a box)."""
    from proca.errors import CheckpointError

    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; give a .safetensors or .pth file.")
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist; give a .safetensors or .pth file.")
    return path


def _parse_size(value: str | None, option: str = "--input-size") -> tuple[int, int] | None:
    """Parse ``HxW`` (for example ``512x1024``) into ``(H, W)``; sides in ``proca.config.SIZE_RANGE``."""
    if value is None:
        return None
    from proca.config import check_size
    from proca.errors import ConfigError

    parts = value.lower().split("x")
    if len(parts) != 2:
        raise ConfigError(f"{option} {value!r} is not HxW, for example 512x1024")
    return check_size(parts, option)


def _parse_scales(value: str) -> tuple[float, ...]:
    """Parse comma-separated scales such as ``0.5,0.75,1``; each finite, in ``proca.config.SCALE_RANGE``."""
    from proca.config import check_scales
    from proca.errors import ConfigError

    try:
        scales = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--scales {value!r} is not a comma-separated list of numbers, e.g. 0.5,1,1.5") from None
    return check_scales(scales, "--scales")


class SourceName(str, Enum):
    gtav = "gtav"
    synthia = "synthia"


class Stage(str, Enum):
    all = "all"
    source = "source"
    prototypes = "prototypes"
    proca = "proca"
    pseudo_label = "pseudo-label"
    ssl = "ssl"


class Recipe(str, Enum):
    proca = "proca"
    daformer = "daformer"


class Method(str, Enum):
    prototype = "prototype"
    memory_bank = "memory-bank"


class Amp(str, Enum):
    none = "none"
    bf16 = "bf16"
    fp16 = "fp16"


class EvalFormat(str, Enum):
    labelid = "labelid"
    trainid = "trainid"
    color = "color"


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


class ExportOutput(str, Enum):
    logits = "logits"
    argmax = "argmax"


class InferFormat(str, Enum):
    color = "color"
    overlay = "overlay"
    labelid = "labelid"
    trainid = "trainid"


DeviceOpt = Annotated[str, typer.Option("--device", metavar="DEVICE", help="Device: auto, cpu, cuda or cuda:N.")]
SizeOpt = Annotated[
    str | None,
    typer.Option("--input-size", metavar="HxW", help="Network input size HxW (default: the checkpoint's)."),
]
ScalesOpt = Annotated[
    str,
    typer.Option("--scales", metavar="S1,S2,...", help="Comma-separated test scales, e.g. 0.5,0.75,1,1.25,1.5,1.75."),
]
FlipOpt = Annotated[bool, typer.Option("--flip", help="Also average horizontally flipped predictions.")]
DataRootOpt = Annotated[
    Path,
    typer.Option(
        "--data-root",
        metavar="DIR",
        help="Datasets folder holding cityscapes/ (or the --dataset's folder: acdc/, bdd100k/, ...), as for proca "
        "train; the dataset folder itself (e.g. with leftImg8bit/) works too.",
    ),
]
_SKIP_BAD_HELP = "Skip and count unreadable label files and image/label pairs of different sizes."
CkptArg = Annotated[
    Path, typer.Argument(metavar="CKPT", help="A proca .safetensors checkpoint or a released .pth file.")
]


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write gtav/, synthia/ and cityscapes/ into.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed writes the same files.")] = 0,
    train: Annotated[int, typer.Option("--train", min=1, help="Training images per dataset.")] = 160,
    val: Annotated[int, typer.Option("--val", min=1, help="Cityscapes-style validation images.")] = 40,
    size: Annotated[str, typer.Option("--size", metavar="HxW", help="Image size HxW.")] = "256x512",
    shift: Annotated[
        float, typer.Option("--shift", min=0.0, max=3.0, help="Global camera-look shift of the target (0: none).")
    ] = 1.0,
    class_shift: Annotated[
        float,
        typer.Option(
            "--class-shift",
            min=0.0,
            max=1.0,
            help="Class-conditional shift: per-class colour/texture swaps, class mix.",
        ),
    ] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output folder.")] = False,
) -> None:
    """Write synthetic driving scenes in the real GTA5, SYNTHIA and Cityscapes on-disk formats.

    Examples:

    proca synth --out synthetic
    proca synth --out small --train 16 --val 4 --size 128x256 --seed 1
    proca synth --out hard --class-shift 1.0
    """
    with _user_errors():
        hw = _parse_size(size, "--size")
        assert hw is not None
        from proca.data.synthetic import write_synthetic_datasets

        write_synthetic_datasets(
            out, seed=seed, num_train=train, num_val=val, size=hw, force=force, progress=True, shift=shift,
            class_shift=class_shift,
        )  # fmt: skip


@app.command("label-info")
def label_info(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help="Labelled dataset to scan: gtav, synthia, or a built-in one (acdc, bdd100k, mapillary, ...).",
        ),
    ],
    root: Annotated[Path, typer.Option("--root", help="Dataset root, e.g. datasets/gtav.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output JSON (default: ROOT/<dataset>_label_info.json).")
    ] = None,
    list_file: Annotated[
        Path | None, typer.Option("--list", help="Only scan the files named in this list.", dir_okay=False)
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Worker processes (0: one per core).")] = 0,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help=_SKIP_BAD_HELP)] = False,
    split: Annotated[
        str | None,
        typer.Option("--split", metavar="SPLIT", help="Split of a built-in dataset (default: its first labelled one)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output JSON.")] = False,
) -> None:
    """Scan source labels: the classes (and pixel counts) in every file, for class-balanced sampling.

    Examples:

    proca label-info gtav --root datasets/gtav
    proca label-info synthia --root datasets/synthia --workers 8 --skip-bad
    proca label-info bdd100k --root datasets --split train
    """
    with _user_errors():
        from proca.data.label_info import run_label_info

        run_label_info(
            dataset, root, out=out, list_file=list_file, workers=workers, skip_bad=skip_bad, split=split, force=force
        )


_DATA, _MODEL, _SCHEDULE, _HARDWARE, _RUN = "Data", "Model", "Schedule", "Hardware", "Run folder and config"


@app.command()
def train(
    src: Annotated[
        str | None,
        typer.Option(
            "--src",
            metavar="SOURCE",
            help="Labelled source: gtav, synthia or a dataset card with labels (default: the config's src, else gtav).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    tgt: Annotated[
        str | None,
        typer.Option(
            "--tgt",
            metavar="TARGET",
            help="Unlabelled target: a built-in dataset (cityscapes (default), acdc, acdc_fog|night|rain|snow, "
            "dark_zurich, bdd100k, mapillary), a dataset card (.yaml/.yml/.json) or a folder/glob of images of any "
            "size (searched recursively); see docs/data.md.",
            rich_help_panel=_DATA,
        ),
    ] = None,
    tgt_val: Annotated[
        str | None,
        typer.Option(
            "--tgt-val",
            metavar="DIR",
            help="Labelled data to validate on: a Cityscapes folder, a dataset card or a built-in dataset "
            "(default: the target's own labels; none for a folder of images: validation is skipped).",
            rich_help_panel=_DATA,
        ),
    ] = None,
    data_root: Annotated[
        Path,
        typer.Option(
            "--data-root",
            metavar="DIR",
            help="Datasets folder holding gtav/, synthia/ and the target's folder (cityscapes/, acdc/, ...).",
            rich_help_panel=_DATA,
        ),
    ] = Path("datasets"),
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help=_SKIP_BAD_HELP, rich_help_panel=_DATA)] = False,
    arch: Annotated[
        str | None,
        typer.Option(
            "--arch", help="Architecture, e.g. deeplabv2_resnet101 (config key arch).", rich_help_panel=_MODEL
        ),
    ] = None,
    method: Annotated[
        Method | None, typer.Option("--method", help="Adaptation loss (config key method).", rich_help_panel=_MODEL)
    ] = None,
    backbone_weights: Annotated[
        Path | None,
        typer.Option(
            "--backbone-weights",
            metavar="FILE",
            help="ImageNet weights, e.g. resnet101-5d3b4d8f.pth.",
            rich_help_panel=_MODEL,
        ),
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size",
            metavar="HxW",
            help="Every training and evaluation size HxW (small data).",
            rich_help_panel=_SCHEDULE,
        ),
    ] = None,
    iters: Annotated[
        int | None,
        typer.Option(
            "--iters",
            min=1,
            help="Length of every stage: source/proca/ssl.iters (smoke runs).",
            rich_help_panel=_SCHEDULE,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", min=1, help="Global batch size: source/proca/ssl.batch_size.", rich_help_panel=_SCHEDULE
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed (config key seed).", rich_help_panel=_SCHEDULE)
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device", metavar="DEVICE", help="Device: auto, cpu, cuda or cuda:N.", rich_help_panel=_HARDWARE
        ),
    ] = "auto",
    gpus: Annotated[
        int, typer.Option("--gpus", min=0, help="CUDA GPUs per node (launches torchrun).", rich_help_panel=_HARDWARE)
    ] = 0,
    nproc: Annotated[
        int,
        typer.Option("--nproc", min=0, help="CPU processes with gloo (launches torchrun).", rich_help_panel=_HARDWARE),
    ] = 0,
    nnodes: Annotated[
        int, typer.Option("--nnodes", min=1, help="Nodes for multi-node runs.", rich_help_panel=_HARDWARE)
    ] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", min=0, help="This node's rank.", rich_help_panel=_HARDWARE)
    ] = 0,
    rdzv_endpoint: Annotated[
        str | None,
        typer.Option(
            "--rdzv-endpoint",
            metavar="HOST:PORT",
            help="host:port of the rendezvous (multi-node).",
            rich_help_panel=_HARDWARE,
        ),
    ] = None,
    amp: Annotated[
        Amp | None, typer.Option("--amp", help="Mixed precision (config key amp).", rich_help_panel=_HARDWARE)
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help="channels_last memory format (config key channels_last).",
            rich_help_panel=_HARDWARE,
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Run folder for checkpoints, logs and pseudo labels.", rich_help_panel=_RUN)
    ] = Path("runs/proca"),
    recipe: Annotated[
        Recipe | None,
        typer.Option(
            "--recipe",
            help="proca: the five ProCA stages; daformer: DAFormer's online self-training (docs/training.md). "
            "Default: proca, or with --resume the recipe of the run in --out.",
            show_default=False,
            rich_help_panel=_RUN,
        ),
    ] = None,
    stage: Annotated[
        Stage, typer.Option("--stage", help="Which stage to run (all: every stage in order).", rich_help_panel=_RUN)
    ] = Stage.all,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.", rich_help_panel=_RUN)
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Start over in an existing --out.", rich_help_panel=_RUN)
    ] = False,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            min=1,
            help="Save resumable state every N iterations (config key checkpoint_every).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="TOML, JSON or YAML config file.", exists=True, dir_okay=False, rich_help_panel=_RUN
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override a config key, e.g. --set proca.temperature=0.1 (repeatable).",
            rich_help_panel=_RUN,
        ),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config as JSON and exit.", rich_help_panel=_RUN)
    ] = False,
) -> None:
    """Run the ProCA recipe: source-only, prototypes, ProCA, pseudo labels, self-training.

    Precedence of every config key: preset < --config file < --set < the options typed here.

    Examples:

    proca train --src gtav --out runs/gta2city --print-config
    proca train --src gtav --gpus 4 --backbone-weights resnet101-5d3b4d8f.pth
    proca train --out runs/smoke --stage source --arch deeplabv2_resnet18
    proca train --src synthia --set proca.temperature=0.1 --print-config
    proca train --src gtav --tgt my_footage/ --out runs/gta2mine --print-config
    proca train --out runs/gta2city --resume
    proca train --recipe daformer --arch daformer_mit_b5 --set daformer.mic=true --print-config
    """
    with _user_errors():
        from proca.engine.train import RunOptions, run_train, train_config

        options = {
            "arch": arch,
            "method": method.value if method else None,
            "seed": seed,
            "amp": amp.value if amp else None,
            "channels_last": channels_last,
            "checkpoint_every": checkpoint_every,
            "tgt_val": tgt_val,
            "iters": iters,
            "batch_size": batch_size,
            "input_size": _parse_size(input_size),
        }
        cfg = train_config(
            src=src,
            tgt=tgt,
            config_file=config,
            overrides=list(set_ or []),
            options=options,
            resume_dir=out if resume else None,
        )
        if print_config:
            import json

            typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
            return
        run = RunOptions(
            data_root=data_root,
            out=out,
            stage=stage.value,
            recipe=_train_recipe(recipe, out, resume),
            backbone_weights=backbone_weights,
            resume=resume,
            force=force,
            device=device,
            skip_bad=skip_bad,
        )
        run_train(
            cfg, run, gpus=gpus, nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
            debug=_state["debug"],
        )  # fmt: skip


def _train_recipe(recipe: Recipe | None, out: Path, resume: bool) -> str:
    """``--recipe`` as given; not given: the recipe of the run being resumed, else ``proca``."""
    if recipe is not None:
        return recipe.value
    if resume:
        from proca.engine.runfolder import folder_recipe

        return folder_recipe(out) or "proca"
    return "proca"


@app.command("pseudo-label")
def pseudo_label(
    checkpoint: CkptArg,
    out: Annotated[Path, typer.Option("--out", help="Folder for train-id PNGs and thresholds.json.")],
    data_root: DataRootOpt = Path("datasets"),
    tgt: Annotated[
        str,
        typer.Option(
            "--tgt",
            metavar="TARGET",
            help="Images to label, as for proca train: a built-in dataset, a dataset card, or a folder (or glob).",
        ),
    ] = "cityscapes",
    split: Annotated[
        str | None,
        typer.Option("--split", metavar="SPLIT", help="Split of a built-in --tgt (default: its training split)."),
    ] = None,
    percent: Annotated[
        float, typer.Option("--percent", min=0.0, max=1.0, help="Per-class confidence percentile.")
    ] = 0.6,
    cap: Annotated[float, typer.Option("--cap", min=0.0, max=1.0, help="Upper bound of each class threshold.")] = 0.9,
    input_size: SizeOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Label again into an --out that holds other (or the same) pseudo labels.")
    ] = False,
) -> None:
    """Write pseudo labels for the target's images with per-class percentile thresholds.

    An --out holding the same checkpoint's labels with the same settings is up to date (nothing to do).

    An --out holding other pseudo labels is refused unless --force.

    Examples:

    proca pseudo-label runs/x/proca.safetensors --out runs/x/pseudo_last
    proca pseudo-label CKPT --data-root datasets --out pl --percent 0.5
    proca pseudo-label runs/x/proca.safetensors --tgt my_footage/ --out pl_footage
    """
    with _user_errors():
        _existing_checkpoint(checkpoint)
        from proca.engine.commands.pseudo_label import run_pseudo_label

        run_pseudo_label(
            checkpoint,
            data_root=data_root,
            tgt=tgt,
            split=split,
            out=out,
            percent=percent,
            cap=cap,
            input_size=_parse_size(input_size),
            device=device,
            batch_size=batch_size,
            force=force,
        )


@app.command("adapt-bn")
def adapt_bn(
    checkpoint: CkptArg,
    out: Annotated[Path, typer.Option("--out", help="The adapted .safetensors checkpoint to write.")],
    data_root: DataRootOpt = Path("datasets"),
    tgt: Annotated[
        str,
        typer.Option(
            "--tgt",
            metavar="TARGET",
            help="Unlabelled target, as for proca train: a built-in dataset (its train images), a dataset card, "
            "or a folder (or glob) of images.",
        ),
    ] = "cityscapes",
    images: Annotated[
        int | None,
        typer.Option("--images", min=1, metavar="N", help="Use the first N target train images (default: all)."),
    ] = None,
    input_size: Annotated[
        str | None,
        typer.Option(
            "--input-size", metavar="HxW", help="Target image size HxW (default: the checkpoint's proca.target_size)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 8,
    device: DeviceOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
) -> None:
    """AdaBN: re-estimate BatchNorm statistics on unlabelled target images; every weight stays unchanged.

    Running mean and variance of every BatchNorm layer: their cumulative average over the target's
    train images (--tgt, default the Cityscapes train split under --data-root; no labels, no gradient).
    MiT / SegFormer (LayerNorm) are refused.

    Examples:

    proca adapt-bn runs/x/source.safetensors --data-root datasets --out runs/x/adabn.safetensors
    proca adapt-bn CKPT --data-root datasets --out adabn.safetensors --images 500 --batch-size 4
    proca adapt-bn runs/x/source.safetensors --tgt my_footage/ --out runs/x/adabn-footage.safetensors
    """
    with _user_errors():
        _existing_checkpoint(checkpoint)
        from proca.engine.commands.adapt_bn import run_adapt_bn

        run_adapt_bn(
            checkpoint,
            data_root=data_root,
            tgt=tgt,
            out=out,
            images=images,
            input_size=_parse_size(input_size),
            batch_size=batch_size,
            device=device,
            force=force,
        )


@app.command("eval")
def eval_(
    checkpoint: CkptArg,
    data_root: DataRootOpt = Path("datasets"),
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            metavar="DATASET",
            help="What to score on: a built-in dataset (cityscapes, acdc, acdc_fog|night|rain|snow, dark_zurich, "
            "bdd100k, mapillary), a dataset card with labels (.yaml/.yml/.json) or a Cityscapes folder.",
        ),
    ] = "cityscapes",
    split: Annotated[
        str | None,
        typer.Option(
            "--split", metavar="SPLIT", help="Split of a built-in dataset or Cityscapes folder (default: its val)."
        ),
    ] = None,
    scales: ScalesOpt = "1",
    flip: FlipOpt = False,
    input_size: SizeOpt = None,
    save_predictions: Annotated[
        Path | None, typer.Option("--save-predictions", help="Write one prediction PNG per image here.")
    ] = None,
    fmt: Annotated[EvalFormat, typer.Option("--format", help="Format of saved predictions.")] = EvalFormat.labelid,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON.")] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write IoU chart, confusion matrix and examples here.")
    ] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing --json, --save-predictions or --report files.")
    ] = False,
) -> None:
    """Evaluate a checkpoint on Cityscapes, another built-in dataset or a dataset card (mIoU; mIoU13 too for
    SYNTHIA models).

    Examples:

    proca eval runs/x/ssl.safetensors --data-root datasets --json eval.json
    proca eval runs/x/ssl.safetensors --dataset acdc_night --data-root datasets
    proca eval CKPT --data-root datasets --scales 0.5,1,1.5 --flip
    proca eval model_proca_ssl.pth --save-predictions preds --format color
    proca eval CKPT --dataset my_labels.yaml --json eval.json
    """
    with _user_errors():
        _existing_checkpoint(checkpoint)
        from proca.engine.commands.eval import run_eval

        run_eval(
            checkpoint,
            data_root=data_root,
            dataset=dataset,
            split=split,
            scales=_parse_scales(scales),
            flip=flip,
            input_size=_parse_size(input_size),
            save_predictions=save_predictions,
            fmt=fmt.value,
            json_path=json_path,
            report_dir=report,
            device=device,
            batch_size=batch_size,
            force=force,
        )


@app.command()
def infer(
    checkpoint: CkptArg,
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    scales: ScalesOpt = "1",
    flip: FlipOpt = False,
    fmt: Annotated[InferFormat, typer.Option("--format", help="What to write per image.")] = InferFormat.color,
    input_size: SizeOpt = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Overwrite prediction files that exist in --out.")] = False,
) -> None:
    """Segment your own images: coloured masks, overlays, or raw ids.

    Examples:

    proca infer ssl.safetensors photos/ --out preds/ --format overlay
    proca infer CKPT "photos/*.jpg" --out masks --input-size 512x1024
    """
    with _user_errors():
        _existing_checkpoint(checkpoint)
        from proca.engine.commands.infer import run_infer

        run_infer(
            checkpoint,
            inputs,
            out=out,
            scales=_parse_scales(scales),
            flip=flip,
            fmt=fmt.value,
            input_size=_parse_size(input_size),
            device=device,
            batch_size=batch_size,
            force=force,
        )


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="A released ProCA/FADA/SDCA .pth checkpoint.")],
    dst: Annotated[Path, typer.Argument(metavar="DST", help="Output .safetensors file.")],
    class_set: Annotated[
        str | None, typer.Option("--class-set", help="cityscapes19 or synthia16 (default: from the class count).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing DST.")] = False,
) -> None:
    """Convert a released .pth checkpoint into a proca .safetensors checkpoint.

    Examples:

    proca convert model_proca_ssl.pth model_proca_ssl.safetensors
    proca convert syn.pth syn.safetensors --class-set synthia16
    """
    with _user_errors():
        _existing_checkpoint(src, "SRC")
        from proca.engine.commands.convert import run_convert

        run_convert(src, dst, class_set=class_set, force=force)


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A proca .safetensors checkpoint or a released .pth file.")],
    out: Annotated[Path, typer.Argument(help="Output file: .onnx (ONNX) or .pt / .ts (TorchScript).")],
    input_size: Annotated[
        str | None,
        typer.Option("--input-size", help="Input size HxW of the exported graph (default: the checkpoint's)."),
    ] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="ONNX: dynamic batch, height and width axes.")] = False,
    output: Annotated[
        ExportOutput,
        typer.Option("--output", help="logits at the network's stride, or argmax train ids (uint8) at the input size."),
    ] = ExportOutput.logits,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (17 or newer).")] = 17,
    fmt: Annotated[
        ExportFormat | None, typer.Option("--format", help="onnx or torchscript (default: from OUT's suffix).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
) -> None:
    """Export a checkpoint to ONNX (or TorchScript), checked against PyTorch before it is written.

    Examples:

    proca export ssl.safetensors ssl.onnx
    proca export ssl.safetensors ssl-any-size.onnx --dynamic --output argmax
    proca export ssl.safetensors ssl.pt --input-size 512x1024
    """
    with _user_errors():
        _existing_checkpoint(checkpoint)
        from proca.engine.commands.export import run_export

        run_export(
            checkpoint,
            out,
            input_size=_parse_size(input_size),
            fmt=fmt.value if fmt else None,
            output=output.value,
            opset=opset,
            dynamic=dynamic,
            force=force,
        )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the synthetic data and the run.")] = Path("proca-demo"),
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the demo's results as JSON.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in an existing --out.")] = False,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, metavar="N", help="CPU threads for torch (default: all).")
    ] = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="The same five stages at a smaller budget: about 3 minutes on 2 CPU cores."),
    ] = False,
    recipe: Annotated[
        Recipe,
        typer.Option("--recipe", help="proca: the five stages; daformer: source-only vs DAFormer self-training."),
    ] = Recipe.proca,
) -> None:
    """The whole recipe on built-in synthetic scenes, on the CPU, in a few minutes.

    Prints the estimated total time once the first iterations are measured, then at each stage start.

    Examples:

    proca demo
    proca demo --quick
    proca demo --out proca-demo --seed 1 --json demo.json
    proca demo --threads 2
    """
    with _user_errors():
        if recipe == Recipe.daformer:
            if quick:
                from proca.errors import ConfigError

                raise ConfigError("--quick is the proca recipe's smaller budget; leave it out with --recipe daformer.")
            from proca.engine.demo_daformer import run_daformer_demo

            run_daformer_demo(out=out, seed=seed, json_path=json_path, force=force, threads=threads)
            return
        from proca.engine.demo import run_demo

        run_demo(out=out, seed=seed, json_path=json_path, force=force, threads=threads, quick=quick)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
