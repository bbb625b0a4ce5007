"""Export a model to ONNX or TorchScript, verified against PyTorch before the file is written.

    report = export(model, "small.onnx", "onnx", torch.randn(1, 3, 32, 32))
    report.max_abs_diff, report.latency_ms, report.torch_latency_ms

A failed export or verification raises `ExportError` and writes nothing.
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


def export(model: nn.Module, path: PathLike, format: str = "onnx", example_inputs: Any = None, *,
           verify: bool = True, opset: int | None = None, tolerance: float = 1e-4,
           exporter: str = "auto", repeat: int = 20) -> ExportReport:
    """Export `model` (eval mode) to ONNX or TorchScript; verify the artefact, then write it.

    Verification runs the exported artefact (onnxruntime / torch.jit.load) on `example_inputs` and
    requires ``max|exported - torch| <= tolerance * max(1, max|torch|)``; on failure nothing is
    written. The artefact has the static input shape of `example_inputs`.
    """
    path = Path(path)
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {EXPORT_FORMATS}, not {format!r}")
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"ONNX exporter must be one of {ONNX_EXPORTERS}, not {exporter!r}")
    if example_inputs is None:
        raise ConfigError("export needs example_inputs (a tensor or a tuple of tensors)")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    if format == "onnx" and verify:
        _require_onnxruntime()
    was_training = model.training
    model.eval()
    try:
        data, used = (_onnx_bytes(model, inputs, opset, exporter, path) if format == "onnx"
                      else _torchscript_bytes(model, inputs, path))
        diff = latency = torch_latency = None
        if verify:
            run = _onnx_runner(data) if format == "onnx" else _torchscript_runner(data)
            diff = _check_outputs(model, run, inputs, tolerance, path)
            timing = {"warmup": 3, "repeats": max(1, repeat)}
            latency = statistics.median(time_calls(lambda: run(inputs), **timing))
            torch_latency = statistics.median(time_calls(lambda: _torch_outputs(model, inputs), **timing))
    finally:
        model.train(was_training)
    atomic_write_bytes(path, data)
    return ExportReport(path, format, len(data), diff, latency, torch_latency, used)


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


def _onnx_bytes(model: nn.Module, inputs: tuple, opset: int | None, exporter: str, path: Path
                ) -> tuple[bytes, str]:
    """The torch.export-based exporter needs onnxscript; the legacy one ships with torch."""
    dynamo = exporter == "dynamo" or (exporter == "auto" and _has_module("onnxscript"))
    names = {"input_names": _io_names("input", len(inputs))}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            warnings.simplefilter("ignore")  # deprecation and tracer warnings, not the user's concern
            if dynamo:
                program = torch.onnx.export(model, inputs, None, dynamo=True, opset_version=opset,
                                            verbose=False, **names)
                return program.model_proto.SerializeToString(), "onnx-dynamo"
            buffer = io.BytesIO()
            torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset, **names)
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
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(inputs: tuple) -> list[torch.Tensor]:
        feed = {name: t.detach().cpu().numpy() for name, t in zip(names, inputs)}
        return [torch.from_numpy(out) for out in session.run(None, feed)]
    return run


def _check_outputs(model: nn.Module, run: Callable[[tuple], list[torch.Tensor]], inputs: tuple,
                   tolerance: float, path: Path) -> float:
    expected, got = _torch_outputs(model, inputs), run(inputs)
    if len(expected) != len(got):
        raise ExportError(f"export {path}: artefact returns {len(got)} outputs, "
                              f"PyTorch returns {len(expected)}")
    diff, scale = 0.0, 1.0
    for want, have in zip(expected, got):
        if tuple(want.shape) != tuple(have.shape):
            raise ExportError(f"export {path}: output shape {list(have.shape)} differs from "
                                  f"PyTorch's {list(want.shape)}")
        want, have = want.double(), have.double()
        diff = max(diff, (want - have).abs().max().item() if want.numel() else 0.0)
        scale = max(scale, want.abs().max().item() if want.numel() else 0.0)
    if not diff <= tolerance * scale:  # `not <=` also catches NaN
        raise ExportError(f"export {path}: exported outputs differ from PyTorch by {diff:.3g} "
                              f"(tolerance {tolerance * scale:.3g}); nothing was written")
    return diff
