"""Export a model to ONNX or TorchScript, verified against PyTorch before the file is written.

    report = export(model, "small.onnx", "onnx", torch.randn(1, 3, 32, 32))
    report.max_abs_diff, report.latency_ms, report.torch_latency_ms, report.batch_sizes

By default the artefact serves any batch size: dim 0 of every input and output is dynamic (named
"batch" in ONNX), and verification runs it at the example's batch size and at a second one.
`dynamic_batch=False` fixes the batch at the example's. A failed export or verification raises
`ExportError` and writes nothing.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import statistics
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ExportError
from ..metrics import time_calls
from .atomic import PathLike, atomic_write_bytes


EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("auto", "dynamo", "legacy")


@dataclass(frozen=True)
class ExportReport:
    """What `export` wrote and how the artefact compares with the PyTorch model."""

    path: Path
    format: str
    size_bytes: int
    max_abs_diff: float | None      # None when verify=False
    latency_ms: float | None        # median of the exported artefact on the example inputs
    torch_latency_ms: float | None  # median of the PyTorch model on the same inputs
    exporter: str                   # "torch.jit.trace", "torch.jit.script", "onnx-dynamo", "onnx-legacy"
    dynamic_batch: bool             # dim 0 of the inputs and outputs may differ from the example's
    batch_sizes: tuple[int, ...]    # the batch sizes the artefact was verified at; () when verify=False


def export(model: nn.Module, path: PathLike, format: str = "onnx", example_inputs: Any = None, *,
           verify: bool = True, opset: int | None = None, tolerance: float = 1e-4,
           exporter: str = "auto", repeat: int = 20, dynamic_batch: bool = True) -> ExportReport:
    """Export `model` (eval mode) to ONNX or TorchScript; verify the artefact, then write it.

    Verification runs the exported artefact (onnxruntime / torch.jit.load) on `example_inputs` and
    requires ``max|exported - torch| <= tolerance * max(1, max|torch|)``; on failure nothing is
    written. With `dynamic_batch` (default) dim 0 of every input and output is the batch, left
    dynamic in the artefact, which is also verified at a second batch size; a model whose forward
    hard-codes its batch size is refused then. `dynamic_batch=False` gives the static input shape
    of `example_inputs`, verified at that shape only.
    """
    path = Path(path)
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {EXPORT_FORMATS}, not {format!r}")
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"ONNX exporter must be one of {ONNX_EXPORTERS}, not {exporter!r}")
    if example_inputs is None:
        raise ConfigError("export needs example_inputs (a tensor or a tuple of tensors)")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    batch = _batch_size(inputs) if dynamic_batch else None
    if format == "onnx" and verify:
        _require_onnxruntime()
    was_training = model.training
    model.eval()
    try:
        if format == "onnx":
            outputs = len(_torch_outputs(model, inputs))
            data, used = _onnx_bytes(model, inputs, outputs, opset, exporter, path, dynamic_batch)
        else:
            data, used = _torchscript_bytes(model, inputs, path)
        diff = latency = torch_latency = None
        verified: tuple[int, ...] = ()
        if verify:
            run = _onnx_runner(data) if format == "onnx" else _torchscript_runner(data)
            diff, verified = _verify(model, run, inputs, batch, tolerance, path)
            timing = {"warmup": 3, "repeats": max(1, repeat)}
            latency = statistics.median(time_calls(lambda: run(inputs), **timing))
            torch_latency = statistics.median(time_calls(lambda: _torch_outputs(model, inputs), **timing))
    finally:
        model.train(was_training)
    atomic_write_bytes(path, data)
    return ExportReport(path, format, len(data), diff, latency, torch_latency, used, dynamic_batch,
                        verified)


def _batch_size(inputs: tuple) -> int:
    """The shared dim 0 of the tensor inputs: a dynamic batch needs every input batched alike."""
    sizes = {i: tuple(t.shape) for i, t in enumerate(inputs) if isinstance(t, torch.Tensor)}
    if not sizes:
        raise ConfigError("export with dynamic_batch=True needs at least one tensor input")
    for i, shape in sizes.items():
        if not shape or shape[0] < 1:
            raise ConfigError(f"export with dynamic_batch=True: input {i} has shape {list(shape)}, "
                              "which has no batch dim 0; pass dynamic_batch=False (CLI: --static-batch)")
    batches = {shape[0] for shape in sizes.values()}
    if len(batches) > 1:
        raise ConfigError(f"export with dynamic_batch=True: the inputs disagree on the batch size "
                          f"(dim 0 of {[list(s) for s in sizes.values()]}); pass dynamic_batch=False "
                          "(CLI: --static-batch)")
    return batches.pop()


def _first_dim(inputs: tuple) -> int:
    """The batch size reported for the example: dim 0 of the first tensor input (1 if none has one)."""
    return next((t.shape[0] for t in inputs if isinstance(t, torch.Tensor) and t.dim()), 1)


def _second_batch_size(batch: int) -> int:
    """A batch size clearly unlike the example's; half of a large example keeps verification cheap."""
    return batch + 6 if batch <= 6 else batch // 2


def _with_batch_size(inputs: tuple, size: int) -> tuple:
    """`inputs` at batch `size`: slices of the example's tensors, or the example plus new samples."""
    generator = torch.Generator().manual_seed(0)  # the same check on every call, global RNG untouched
    return tuple(_resized(t, size, generator) if isinstance(t, torch.Tensor) else t for t in inputs)


def _resized(t: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """New floating-point samples are drawn uniformly from the example's value range (so each one
    differs and stays in the input's domain); integer and bool samples repeat the example's."""
    if size <= t.shape[0]:
        return t[:size]
    extra = t[torch.arange(size - t.shape[0], device=t.device) % t.shape[0]]
    if t.is_floating_point() and t.numel():
        low, high = t.min().item(), t.max().item()
        noise = torch.rand(extra.shape, generator=generator)
        extra = (low + (high - low) * noise).to(dtype=t.dtype, device=t.device)
    return torch.cat([t, extra])


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError("verifying an ONNX export needs onnxruntime: pip install 'rlpruner[onnx]', "
                          "or skip verification with verify=False (CLI: --no-verify)") from exc


def _torch_outputs(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flatten_outputs(model(*inputs))


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _flatten_outputs(item)]
    if isinstance(out, Mapping):
        return [t for item in out.values() for t in _flatten_outputs(item)]
    raise ConfigError(f"cannot export a model returning {type(out).__name__}; "
                      "return a tensor or a tuple/list/dict of tensors")


def _torchscript_bytes(model: nn.Module, inputs: tuple, path: Path) -> tuple[bytes, str]:
    """Trace first (works for any model without data-dependent control flow), else script."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated but asked for
        try:
            scripted, used = torch.jit.trace(model, inputs, check_trace=False), "torch.jit.trace"
        except Exception as trace_exc:  # tracing fails in many model-specific ways
            try:
                scripted, used = torch.jit.script(model), "torch.jit.script"
            except Exception as script_exc:
                raise ExportError(f"cannot export {path} as TorchScript: trace failed "
                                      f"({trace_exc}); script failed ({script_exc})") from script_exc
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    return buffer.getvalue(), used


def _torchscript_runner(data: bytes) -> Callable[[tuple], list[torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(inputs: tuple) -> list[torch.Tensor]:
        with torch.no_grad():
            return _flatten_outputs(loaded(*inputs))
    return run


def _onnx_bytes(model: nn.Module, inputs: tuple, outputs: int, opset: int | None, exporter: str,
                path: Path, dynamic_batch: bool) -> tuple[bytes, str]:
    """The torch.export-based exporter needs onnxscript; the legacy one ships with torch.

    Each exporter has its own way to say "dim 0 is the batch": the legacy one takes `dynamic_axes`
    for inputs and outputs, the dynamo one `dynamic_shapes` for the inputs (a string names the
    dim) and infers the outputs'.
    """
    dynamo = exporter == "dynamo" or (exporter == "auto" and _has_module("onnxscript"))
    input_names, output_names = _io_names("input", len(inputs)), _io_names("output", outputs)
    names = {"input_names": input_names, "output_names": output_names}
    batched = [isinstance(t, torch.Tensor) for t in inputs]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")  # deprecation and tracer warnings, not the user's concern
            if dynamo:
                shapes = tuple({0: "batch"} if b else None for b in batched) if dynamic_batch else None
                program = torch.onnx.export(model, inputs, None, dynamo=True, opset_version=opset,
                                            verbose=False, dynamic_shapes=shapes, **names)
                return program.model_proto.SerializeToString(), "onnx-dynamo"
            axes = None
            if dynamic_batch:
                axes = {name: {0: "batch"} for name, b in zip(input_names, batched) if b}
                axes.update({name: {0: "batch"} for name in output_names})
            buffer = io.BytesIO()
            torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset,
                              dynamic_axes=axes, **names)
            return buffer.getvalue(), "onnx-legacy"
    except Exception as exc:  # exporters raise many unrelated types
        raise ExportError(f"cannot export {path} as ONNX ({'dynamo' if dynamo else 'legacy'} "
                              f"exporter): {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library logger for the duration (the dynamo exporter logs progress at WARNING)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _io_names(stem: str, count: int) -> list[str]:
    return [stem] if count == 1 else [f"{stem}_{i}" for i in range(count)]


def _onnx_runner(data: bytes) -> Callable[[tuple], list[torch.Tensor]]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions, which the caller reports
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: tuple) -> list[torch.Tensor]:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
        return [torch.from_numpy(out) for out in session.run(None, feed)]
    return run


def _verify(model: nn.Module, run: Callable[[tuple], list[torch.Tensor]], inputs: tuple,
            batch: int | None, tolerance: float, path: Path) -> tuple[float, tuple[int, ...]]:
    """Max difference and the batch sizes compared: the example's, and a second one if `batch` is dynamic."""
    diff = _check_outputs(model, run, inputs, tolerance, path)
    if batch is None:
        return diff, (_first_dim(inputs),)
    other = _second_batch_size(batch)
    return max(diff, _check_other_batch(model, run, inputs, batch, other, tolerance, path)), (batch, other)


def _check_outputs(model: nn.Module, run: Callable[[tuple], list[torch.Tensor]], inputs: tuple,
                   tolerance: float, path: Path) -> float:
    expected, got = _torch_outputs(model, inputs), run(inputs)
    _check_shapes(expected, got, path)
    return _check_values(expected, got, tolerance, path, "")


def _check_other_batch(model: nn.Module, run: Callable[[tuple], list[torch.Tensor]], inputs: tuple,
                       batch: int, size: int, tolerance: float, path: Path) -> float:
    """Run model and artefact at batch `size`; a failure there means a batch fixed in the code."""
    other = _with_batch_size(inputs, size)
    stage = "the PyTorch model"
    try:
        expected = _torch_outputs(model, other)
        stage = "the exported artefact"
        got = run(other)
        _check_shapes(expected, got, path)
    except Exception as exc:  # onnxruntime, TorchScript and PyTorch each raise their own types
        raise ExportError(
            f"export {path}: {stage} fails at batch {size} although it ran at batch {batch} "
            f"({type(exc).__name__}: {_last_line(exc)}); the model's forward probably hard-codes "
            f"the batch size. Export with dynamic_batch=False (CLI: --static-batch) to fix the batch "
            f"at {batch}; nothing was written") from exc
    return _check_values(expected, got, tolerance, path, f" at batch {size}")


def _last_line(exc: Exception, limit: int = 300) -> str:
    """TorchScript errors carry a whole interpreter traceback; its last line says what failed."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_shapes(expected: list[torch.Tensor], got: list[torch.Tensor], path: Path) -> None:
    if len(expected) != len(got):
        raise ExportError(f"export {path}: artefact returns {len(got)} outputs, "
                              f"PyTorch returns {len(expected)}")
    for want, have in zip(expected, got):
        if tuple(want.shape) != tuple(have.shape):
            raise ExportError(f"export {path}: output shape {list(have.shape)} differs from "
                                  f"PyTorch's {list(want.shape)}")


def _check_values(expected: list[torch.Tensor], got: list[torch.Tensor], tolerance: float,
                  path: Path, where: str) -> float:
    diff, scale = 0.0, 1.0
    for want, have in zip(expected, got):
        want, have = want.double(), have.double()
        diff = max(diff, (want - have).abs().max().item() if want.numel() else 0.0)
        scale = max(scale, want.abs().max().item() if want.numel() else 0.0)
    if not diff <= tolerance * scale:  # `not <=` also catches NaN
        raise ExportError(f"export {path}: exported outputs differ from PyTorch{where} by {diff:.3g} "
                              f"(tolerance {tolerance * scale:.3g}); nothing was written")
    return diff
