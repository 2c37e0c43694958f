"""Export a proca network to ONNX or TorchScript, and check the exported graph against PyTorch.

The exported graph takes normalised images (B, 3, H, W) float32 (ImageNet mean and std, as
:func:`proca.data.transforms.normalize`) and returns, by ``output``:

- ``logits``: (B, C, H/s, W/s) float32 at the network's output stride s (8 for DeepLabV2, 4 for MiT);
- ``argmax``: (B, H, W) uint8 train ids, the logits upsampled to the input size (bilinear,
  ``align_corners=True``, as :func:`proca.engine.predict.predict_probs`) then the argmax over C.

The file is written atomically (temporary file, then rename) and only after the check passed: the
exported graph and PyTorch run on one seeded random image and the maximum relative difference
``max |a - b| / max |b|`` of the logits must be <= :data:`MAX_RELATIVE_DIFFERENCE`. ONNX export needs the ``onnx``
package; ONNX files are checked with onnxruntime when it is installed (``pip install proca-seg[onnx]``
installs both), else the check is skipped; TorchScript files are always checked (``torch.jit.load``).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proca.errors import ConfigError

__all__ = [
    "EXPORT_FORMATS",
    "EXPORT_OUTPUTS",
    "EXPORT_SUFFIXES",
    "MAX_OPSET",
    "MAX_RELATIVE_DIFFERENCE",
    "MIN_OPSET",
    "ExportResult",
    "ExportedNetwork",
    "check_opset",
    "check_output_path",
    "export_format",
    "export_model",
    "require_onnx",
]

#: What ``proca export`` writes: an ONNX graph or a traced TorchScript module.
EXPORT_FORMATS = ("onnx", "torchscript")
#: What the exported graph returns (see the module docstring).
EXPORT_OUTPUTS = ("logits", "argmax")
#: File suffixes per format; the format follows the suffix unless given.
EXPORT_SUFFIXES: dict[str, tuple[str, ...]] = {"onnx": (".onnx",), "torchscript": (".pt", ".ts")}
#: ONNX opsets accepted (the upper bound is what torch's TorchScript-based exporter writes).
MIN_OPSET = 17
MAX_OPSET = int(getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
#: The largest accepted ``max |exported - torch| / max |torch|`` of the logits.
MAX_RELATIVE_DIFFERENCE = 1e-3


class ExportedNetwork(nn.Module):
    """The graph that is exported: a proca network plus, for ``argmax``, the upsampling and the argmax.

    Args:
        model: maps normalised images to logits (a tuple's last element is taken).
        output: ``logits`` or ``argmax``.

    Shape:
        x: (B, 3, H, W) -> logits (B, C, H/s, W/s) float32, or argmax (B, H, W) uint8.
    """

    def __init__(self, model: nn.Module, output: str = "logits") -> None:
        super().__init__()
        if output not in EXPORT_OUTPUTS:
            raise ConfigError(f"--output {output!r} is not an export output; valid: {', '.join(EXPORT_OUTPUTS)}.")
        self.model = model
        self.output = output

    def logits(self, x: Tensor) -> Tensor:
        """The network's logits at its output stride, float32."""
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out.float()

    def upsampled_logits(self, x: Tensor) -> Tensor:
        """The logits upsampled to the input size (bilinear, ``align_corners=True``)."""
        return F.interpolate(self.logits(x), size=x.shape[-2:], mode="bilinear", align_corners=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.output == "logits":
            return self.logits(x)
        return self.upsampled_logits(x).argmax(dim=1).to(torch.uint8)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how it was checked.

    Attributes:
        path: the file written.
        format: ``onnx`` or ``torchscript``.
        output: ``logits`` or ``argmax``.
        input_size: (H, W) of the example input (and of the graph unless ``dynamic``).
        opset: the ONNX opset (None for TorchScript).
        dynamic: batch, height and width are dynamic axes (ONNX).
        checked_with: ``onnxruntime`` or ``torch.jit``; None when the check was skipped.
        max_relative_difference: of the logits (``logits``) or of the upsampled logits at the pixels
            where the ids differ (``argmax``: 0 when all ids agree); None when skipped.
        mismatched_pixels: ``argmax`` only: pixels whose id differs from PyTorch's.
    """

    path: Path
    format: str
    output: str
    input_size: tuple[int, int]
    opset: int | None
    dynamic: bool
    checked_with: str | None
    max_relative_difference: float | None
    mismatched_pixels: int = 0


def export_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The export format of ``path``: ``fmt`` if given (its suffix must fit), else from the suffix.

    Raises:
        ConfigError: an unknown format, or a suffix that is not one of the format's.
    """
    suffix = Path(path).suffix.lower()
    valid = ", ".join(f"{s} ({name})" for name, sfx in EXPORT_SUFFIXES.items() for s in sfx)
    if fmt is None:
        for name, suffixes in EXPORT_SUFFIXES.items():
            if suffix in suffixes:
                return name
        raise ConfigError(f"output {path}: the suffix {suffix or '(none)'!r} is not an export format; valid: {valid}.")
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not an export format; valid: {', '.join(EXPORT_FORMATS)}.")
    if suffix not in EXPORT_SUFFIXES[fmt]:
        raise ConfigError(
            f"output {path}: a {fmt} file needs the suffix {' or '.join(EXPORT_SUFFIXES[fmt])} "
            f"(got {suffix or 'none'!r})."
        )
    return fmt


def check_opset(opset: int) -> int:
    """Return ``opset`` if it is one proca exports (:data:`MIN_OPSET` .. :data:`MAX_OPSET`).

    Raises:
        ConfigError: naming ``--opset`` and the valid range.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opset} is not supported; valid: {MIN_OPSET} to {MAX_OPSET}.")
    return opset


def require_onnx() -> None:
    """Refuse ONNX export where the ``onnx`` package (which torch's exporter needs) is not installed.

    Raises:
        ConfigError: naming the package and how to install it (or to write TorchScript instead).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package: pip install proca-seg[onnx] (or write TorchScript: OUT.pt)"
        ) from None


def check_output_path(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse an output that exists (without ``force``), is a folder, or lies where nothing can be written.

    The policy of every command: :func:`proca.io.check_new_file`.

    Raises:
        OutputError: naming the path and what to do.
    """
    from proca.io import check_new_file

    return check_new_file(path, force=force)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's deprecation and tracer warnings (within this call only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _example(input_size: tuple[int, int], batch: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, *input_size, generator=gen)


def _onnx_bytes(net: ExportedNetwork, example: Tensor, *, opset: int, dynamic: bool) -> bytes:
    out_name = "logits" if net.output == "logits" else "train_ids"
    axes = None
    if dynamic:
        out_axes = {0: "batch", 1: "height", 2: "width"} if net.output == "argmax" else {0: "batch"}
        if net.output == "logits":
            out_axes.update({2: "out_height", 3: "out_width"})
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, out_name: out_axes}
    buffer = io.BytesIO()
    with _quiet_export():
        torch.onnx.export(
            net, (example,), buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            input_names=["images"], output_names=[out_name], opset_version=opset,
            dynamic_axes=axes, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()


def _torchscript_bytes(net: ExportedNetwork, example: Tensor) -> bytes:
    buffer = io.BytesIO()
    with _quiet_export():
        traced = torch.jit.trace(net, (example,), check_trace=False)
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _run_exported(data: bytes, fmt: str, x: Tensor) -> Tensor | None:
    """Run the exported graph on ``x``; None when onnxruntime is not installed."""
    if fmt == "torchscript":
        with _quiet_export(), torch.no_grad():
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            return module(x)
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _compare(net: ExportedNetwork, got: Tensor, x: Tensor) -> tuple[float, int]:
    """Max relative difference (and, for ``argmax``, the differing pixels) of ``got`` against PyTorch."""
    with torch.no_grad():
        if net.output == "logits":
            want = net.logits(x)
            if tuple(got.shape) != tuple(want.shape):
                return float("inf"), 0
            return _relative(got.float(), want), 0
        logits = net.upsampled_logits(x)
    want = logits.argmax(dim=1)
    if tuple(got.shape) != tuple(want.shape):
        return float("inf"), 0
    differ = got.long() != want
    mismatched = int(differ.sum())
    if mismatched == 0:
        return 0.0, 0
    # An id may differ only where the exported graph's class is (numerically) tied with PyTorch's.
    picked = logits.gather(1, got.long().unsqueeze(1)).squeeze(1)
    best = logits.amax(dim=1)
    gap = float((best - picked)[differ].max() / logits.abs().max().clamp_min(1e-12))
    return gap, mismatched


def export_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: tuple[int, int],
    fmt: str | None = None,
    output: str = "logits",
    opset: int = MIN_OPSET,
    dynamic: bool = False,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Export ``model`` to ONNX or TorchScript at ``path`` (atomically, after the check passed).

    Args:
        model: a proca network (any module mapping normalised images to logits); moved to the CPU and exported
            in eval mode (its train/eval mode is restored afterwards).
        path: the output file; ``.onnx`` for ONNX, ``.pt`` or ``.ts`` for TorchScript.
        input_size: (H, W) of the example input traced through the network.
        fmt: ``onnx`` or ``torchscript``; default: from the suffix of ``path``.
        output: ``logits`` or ``argmax`` (see the module docstring).
        opset: ONNX opset, :data:`MIN_OPSET` .. :data:`MAX_OPSET`.
        dynamic: ONNX only: make batch, height and width dynamic axes.
        force: overwrite an existing ``path``.
        check: compare the exported graph with PyTorch before writing.

    Returns:
        What was written and the check's outcome.

    Raises:
        ConfigError: bad format, suffix, output, opset or input size.
        OutputError: ``path`` exists (without ``force``), is a folder or cannot be written.
        CheckpointError: the exported graph differs from PyTorch by more than :data:`MAX_RELATIVE_DIFFERENCE`.
    """
    from proca.errors import CheckpointError

    fmt = export_format(path, fmt)
    if output not in EXPORT_OUTPUTS:
        raise ConfigError(f"--output {output!r} is not an export output; valid: {', '.join(EXPORT_OUTPUTS)}.")
    if fmt == "onnx":
        check_opset(opset)
    if len(input_size) != 2 or min(int(v) for v in input_size) <= 0:
        raise ConfigError(f"--input-size {input_size!r} is not a positive HxW size, for example 512x1024.")
    size = (int(input_size[0]), int(input_size[1]))
    target = check_output_path(path, force=force)
    if fmt == "onnx":
        require_onnx()
    was_training = model.training
    net = ExportedNetwork(model.cpu(), output).eval()
    example = _example(size)
    try:
        data = (
            _onnx_bytes(net, example, opset=opset, dynamic=dynamic)
            if fmt == "onnx"
            else _torchscript_bytes(net, example)
        )
        checked_with: str | None = None
        diff: float | None = None
        mismatched = 0
        if check:
            got = _run_exported(data, fmt, example)
            if got is not None:
                checked_with = "onnxruntime" if fmt == "onnx" else "torch.jit"
                diff, mismatched = _compare(net, got, example)
                if not diff <= MAX_RELATIVE_DIFFERENCE:
                    what = "logits" if output == "logits" else f"ids ({mismatched} pixels differ beyond ties)"
                    raise CheckpointError(
                        f"the exported {fmt} graph differs from PyTorch: max relative difference of the {what} "
                        f"{diff:.2e} > {MAX_RELATIVE_DIFFERENCE:g}; nothing was written to {target} "
                        "(try another --opset or report the architecture)"
                    )
    finally:
        model.train(was_training)
    from proca.io import atomic_write_bytes

    atomic_write_bytes(target, data)
    return ExportResult(
        path=target,
        format=fmt,
        output=output,
        input_size=size,
        opset=opset if fmt == "onnx" else None,
        dynamic=dynamic and fmt == "onnx",
        checked_with=checked_with,
        max_relative_difference=diff,
        mismatched_pixels=mismatched,
    )
