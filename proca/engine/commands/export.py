"""``proca export``: a proca checkpoint -> an ONNX graph or a TorchScript module, checked against PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

from proca.engine.export import (
    MAX_RELATIVE_DIFFERENCE,
    MIN_OPSET,
    ExportResult,
    check_opset,
    check_output_path,
    export_format,
    require_onnx,
)

__all__ = ["run_export"]


def run_export(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    input_size: tuple[int, int] | None = None,
    fmt: str | None = None,
    output: str = "logits",
    opset: int = MIN_OPSET,
    dynamic: bool = False,
    force: bool = False,
) -> ExportResult:
    """Load ``checkpoint`` (the safe loader) and export it with :func:`proca.engine.export.export_model`.

    The entry point of ``proca export``; prints what was written and the check's outcome (or one line
    saying that the check was skipped because onnxruntime is not installed).

    Args:
        checkpoint: a proca ``.safetensors`` checkpoint or a released ``.pth`` file.
        out: ``.onnx`` (ONNX) or ``.pt`` / ``.ts`` (TorchScript) file.
        input_size: (H, W) of the exported input; default: the checkpoint's ``eval_input_size``.
        fmt, output, opset, dynamic, force: as :func:`~proca.engine.export.export_model`.

    Raises:
        CheckpointError: a missing or unreadable checkpoint, or an export that fails the check.
        ConfigError, OutputError: as :func:`~proca.engine.export.export_model`.
    """
    from rich.console import Console

    from proca.engine.export import export_model
    from proca.errors import CheckpointError
    from proca.models import load_model

    if not Path(checkpoint).is_file():
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist (give a proca .safetensors or a released .pth file)"
        )
    fmt = export_format(out, fmt)  # refuse a bad suffix or an existing output before loading anything
    check_output_path(out, force=force)
    if fmt == "onnx":
        check_opset(opset)
        require_onnx()
    loaded = load_model(checkpoint, map_location="cpu")
    from proca.engine.predict import eval_input_size

    size = input_size or eval_input_size(loaded.metadata, checkpoint)
    result = export_model(
        loaded.model, out, input_size=size, fmt=fmt, output=output, opset=opset, dynamic=dynamic, force=force
    )
    console = Console(highlight=False)
    h, w = result.input_size
    shape = "(B, 3, H, W) dynamic" if result.dynamic else f"(1, 3, {h}, {w})"
    opset_text = f", opset {result.opset}" if result.opset is not None else ""
    console.print(
        f"[green]exported[/] {Path(checkpoint).name} -> {result.path}: {result.format}{opset_text}, "
        f"input {shape} float32 normalised, output {result.output}",
        soft_wrap=True,
    )
    if result.checked_with is None:
        console.print(
            "check skipped: onnxruntime is not installed (pip install proca-seg[onnx] to compare with PyTorch)",
            soft_wrap=True,
            markup=False,
        )
    else:
        extra = f", {result.mismatched_pixels} tied pixel(s) differ" if result.mismatched_pixels else ""
        console.print(
            f"[green]checked[/] with {result.checked_with}: max relative difference "
            f"{result.max_relative_difference:.2e} <= {MAX_RELATIVE_DIFFERENCE:g}{extra}",
            soft_wrap=True,
        )
    return result
