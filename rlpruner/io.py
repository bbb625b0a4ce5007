"""Files: atomic writes, saved models (safetensors + a JSON header, never pickle) and export.

A saved model is ONE safetensors file. Its tensors are the model's state_dict; its safetensors
metadata holds one key, ``"rlpruner"``, whose value is a JSON document (the *header*)::

    {"format": "rlpruner.model", "version": 1,
     "spec": {"source": "zoo" | "import", "name": "...", "kwargs": {...}},
     "tensors": {"conv1.weight": {"shape": [12, 3, 3, 3], "dtype": "float32"}, ...},
     "meta": {...}}

``spec`` says how to build the *original* architecture (`rlpruner.models.model_from_spec`);
``tensors`` lists the shape and dtype of every parameter and buffer (non-persistent buffers too), so a
pruned model is rebuilt by building the original and shrinking the tensors that differ
(`rlpruner.surgery.reshape_to`). Plain checkpoints use the same format: nothing differs, nothing is
shrunk. See docs/saving.md for the security rules.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import secrets
import statistics
import struct
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, RLPrunerError

FORMAT_NAME = "rlpruner.model"
FORMAT_VERSION = 1
METADATA_KEY = "rlpruner"
# The safetensors header is tiny next to the weights; a larger claim means a corrupt or hostile file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    )
}

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to `path`; on success fsync it and rename it over `path`.

    On any error (or interrupt) inside the block the temporary file is removed and `path` is left
    exactly as it was. Parent directories are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if mode == "w" and encoding is None:
            encoding = "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as JSON (numpy scalars/arrays and paths are converted)."""
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=True)
    atomic_write_text(path, text + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------

def save(model: nn.Module, path: PathLike, *, meta: Mapping[str, Any] | None = None,
         spec: Mapping[str, Any] | None = None) -> Path:
    """Save `model` (pruned or not) as one safetensors file with a JSON header; returns the path.

    `spec` defaults to ``model.rlpruner_spec`` (set by `rlpruner.create_model`). `meta` is any
    JSON-serialisable mapping (epoch, accuracy, input size...) returned by `load_checkpoint`.
    """
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    spec = _spec_for_save(model, spec, path)
    tensors = _state_tensors(model, path)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "spec": spec,
        "tensors": _tensor_records(model),
        "meta": dict(meta or {}),
    }
    try:
        header_text = json.dumps(header, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {path}: meta is not JSON-serialisable ({exc})") from exc
    data = safetensors_bytes(tensors, metadata={METADATA_KEY: header_text})
    atomic_write_bytes(path, data)
    return path


def save_checkpoint(model: nn.Module, path: PathLike, meta: Mapping[str, Any] | None = None) -> Path:
    """A training checkpoint is a saved model with metadata; same format as `save`."""
    return save(model, path, meta=meta)


def _spec_for_save(model: nn.Module, spec: Mapping[str, Any] | None, path: Path) -> dict:
    spec = spec if spec is not None else getattr(model, "rlpruner_spec", None)
    if spec is None:
        raise CheckpointError(
            f"cannot save {path}: {type(model).__name__} has no rlpruner_spec; build it with "
            "rlpruner.create_model(...) or pass spec={'source': 'import', 'name': 'pkg.module:factory', "
            "'kwargs': {...}}")
    from .models.registry import spec_problem

    problem = spec_problem(spec)
    if problem:
        raise CheckpointError(f"cannot save {path}: invalid spec: {problem}")
    return json.loads(json.dumps(dict(spec)))  # a plain, detached copy


def _state_tensors(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors, un-sharing tied ones (safetensors refuses sharing)."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"cannot save {path}: {name!r} is extra state of type "
                                  f"{type(value).__name__}, not a tensor")
        try:
            tensor = value.detach().to("cpu").contiguous()
        except Exception as exc:  # e.g. meta or otherwise unmaterialised tensors
            raise CheckpointError(f"cannot save {path}: tensor {name!r}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def _named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer by qualified name, including non-persistent buffers and tied names."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def _tensor_records(model: nn.Module) -> dict[str, dict]:
    return {name: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
            for name, t in _named_tensors(model)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# Reading and validating a file (no model is built here)
# --------------------------------------------------------------------------------------------------

def read_header(path: PathLike) -> dict:
    """The validated JSON header of a saved model (spec, tensors, meta) without building the model."""
    path = Path(path)
    data = _read_bytes(path)
    return _parse_header(data, path)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc


def _parse_header(data: bytes, path: Path) -> dict:
    """Check the safetensors framing by hand so that a wrong file gets a message, not a Rust panic."""
    hint = "not an rlpruner safetensors file (pickle/.pt files are refused by design)"
    if len(data) < 8:
        raise CheckpointError(f"{path}: {hint}: only {len(data)} bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER_BYTES, len(data) - 8) or data[8:9] != b"{":
        raise CheckpointError(f"{path}: {hint}, or the file is truncated")
    try:
        table = json.loads(data[8:8 + size])
        text = table["__metadata__"][METADATA_KEY]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise CheckpointError(f"{path}: safetensors file without an rlpruner header; "
                              "it was not written by rlpruner.save") from exc
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # deep nesting exhausts the parser's recursion
        raise CheckpointError(f"{path}: rlpruner header is not valid JSON "
                              f"({type(exc).__name__}: {exc})") from exc
    problem = _header_problem(header)
    if problem:
        raise CheckpointError(f"{path}: bad rlpruner header: {problem}")
    return header


def _header_problem(header: Any) -> str | None:
    if not isinstance(header, dict):
        return "not a JSON object"
    if header.get("format") != FORMAT_NAME:
        return f"format is {header.get('format')!r}, expected {FORMAT_NAME!r}"
    if type(header.get("version")) is not int or header["version"] != FORMAT_VERSION:
        return (f"version {header.get('version')!r} is not supported "
                f"(this rlpruner reads version {FORMAT_VERSION})")
    if set(header) != {"format", "version", "spec", "tensors", "meta"}:
        return f"unexpected keys {sorted(header)}"
    if not isinstance(header["meta"], dict):
        return "meta is not an object"
    from .models.registry import spec_problem

    problem = spec_problem(header["spec"])
    if problem:
        return f"spec: {problem}"
    return _records_problem(header["tensors"])


def _records_problem(records: Any) -> str | None:
    if not isinstance(records, dict) or not records:
        return "tensors must be a non-empty object"
    for name, record in records.items():
        if not isinstance(record, dict) or set(record) != {"shape", "dtype"}:
            return f"tensor {name!r}: record must have exactly shape and dtype"
        shape = record["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"tensor {name!r}: shape must be a list of non-negative ints, not {shape!r}"
        if record["dtype"] not in _DTYPES:
            return f"tensor {name!r}: unsupported dtype {record['dtype']!r}"
    return None


def _read_tensors(data: bytes, header: dict, path: Path) -> dict[str, torch.Tensor]:
    """Decode the tensors and check each one against the header's record."""
    from safetensors.torch import load as safetensors_load

    try:
        tensors = safetensors_load(data)
    except Exception as exc:  # safetensors raises its own Rust-side error types
        raise CheckpointError(f"{path}: corrupt or truncated safetensors data ({exc})") from exc
    records = header["tensors"]
    for name, tensor in tensors.items():
        record = records.get(name)
        if record is None:
            raise CheckpointError(f"{path}: tensor {name!r} is not listed in the header")
        if list(tensor.shape) != record["shape"] or _dtype_name(tensor.dtype) != record["dtype"]:
            raise CheckpointError(
                f"{path}: tensor {name!r} is {_dtype_name(tensor.dtype)}{list(tensor.shape)} but the "
                f"header records {record['dtype']}{record['shape']}")
    return tensors


# --------------------------------------------------------------------------------------------------
# Loading: build the original, shrink it to the recorded shapes, load the weights, verify
# --------------------------------------------------------------------------------------------------

def load(path: PathLike, *, allow_imports: Iterable[str] = (), device: str | torch.device = "cpu",
         example_inputs: Any = None) -> nn.Module:
    """Rebuild a model saved by `save` (pruned or not), in eval mode. Never unpickles anything.

    Zoo architectures are always allowed. An import-path architecture (``pkg.module:factory``) is
    built only when `allow_imports` contains that exact path or a module prefix of it (``"pkg"``,
    ``"pkg.module"``): importing a module runs its code, so the caller must trust it explicitly.
    With `example_inputs`, the rebuilt model must also run one forward pass on them; this catches a
    file whose tensors are each valid but do not fit together (loading does not trace the model).
    """
    return load_checkpoint(path, allow_imports=allow_imports, device=device,
                           example_inputs=example_inputs)[0]


def load_checkpoint(path: PathLike, *, allow_imports: Iterable[str] = (),
                    device: str | torch.device = "cpu", example_inputs: Any = None
                    ) -> tuple[nn.Module, dict]:
    """Like `load`, also returning the `meta` mapping given to `save`."""
    path = Path(path)
    if isinstance(allow_imports, str):  # one module, not a sequence of one-letter prefixes
        allow_imports = (allow_imports,)
    data = _read_bytes(path)
    header = _parse_header(data, path)
    tensors = _read_tensors(data, header, path)
    del data
    spec = header["spec"]
    _check_allowed(spec, tuple(allow_imports), path)
    model = _build(spec, path)
    _match_architecture(model, header["tensors"], path)
    _load_weights(model, tensors, path)
    model.rlpruner_spec = spec
    model = model.to(device).eval()
    if example_inputs is not None:
        _check_runs(model, example_inputs, path)
    return model, header["meta"]


def _check_runs(model: nn.Module, example_inputs: Any, path: Path) -> None:
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:  # a shape error from whichever layer the inconsistency reaches first
        raise CheckpointError(f"{path}: the rebuilt model does not run on the example inputs "
                              f"({type(exc).__name__}: {exc})") from exc


def import_allowed(name: str, allow_imports: Iterable[str]) -> bool:
    """True when `allow_imports` has `name` itself or a dotted module prefix of its module part."""
    module = name.split(":", 1)[0]
    for entry in allow_imports:
        if entry == name:
            return True
        if ":" not in entry and (module == entry or module.startswith(entry + ".")):
            return True
    return False


def _check_allowed(spec: dict, allow_imports: tuple[str, ...], path: Path) -> None:
    if spec["source"] == "import" and not import_allowed(spec["name"], allow_imports):
        module = spec["name"].split(":", 1)[0]
        raise CheckpointError(
            f"{path}: the model is built by the import path {spec['name']!r}, which is not allowed; "
            f"importing it would run its code. If you trust it, pass "
            f"allow_imports=[{module!r}] (CLI: --allow-import {module})")


def _build(spec: dict, path: Path) -> nn.Module:
    from .models import model_from_spec

    try:
        model = model_from_spec(spec)
    except RLPrunerError as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    except Exception as exc:  # a user factory may raise anything; report it as this file's problem
        raise CheckpointError(f"{path}: building {spec['name']!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{path}: {spec['name']!r} built a {type(model).__name__}, not an nn.Module")
    return model


def _match_architecture(model: nn.Module, records: dict, path: Path) -> None:
    """Shrink the freshly built model to the recorded shapes and dtypes, or refuse."""
    built = dict(_named_tensors(model))
    missing, extra = sorted(set(built) - set(records)), sorted(set(records) - set(built))
    if missing or extra:
        raise CheckpointError(f"{path}: the file does not match {type(model).__name__}: "
                              f"missing {_few(missing)}, unexpected {_few(extra)}")
    shapes = _shrunk_shapes(built, records, path)
    if shapes:
        from .surgery import reshape_to

        try:
            reshape_to(model, shapes)
        except RLPrunerError as exc:
            raise CheckpointError(f"{path}: cannot shrink {type(model).__name__} to the saved "
                                  f"shapes: {exc}") from exc
    _cast_dtypes(model, records, path)
    for name, tensor in _named_tensors(model):
        record = records[name]
        if list(tensor.shape) != record["shape"] or _dtype_name(tensor.dtype) != record["dtype"]:
            raise CheckpointError(
                f"{path}: rebuilt tensor {name!r} is {_dtype_name(tensor.dtype)}{list(tensor.shape)}, "
                f"the file records {record['dtype']}{record['shape']}")


def _shrunk_shapes(built: dict[str, torch.Tensor], records: dict, path: Path
                   ) -> dict[str, tuple[int, ...]]:
    """Recorded shapes that differ from the built ones; pruning only ever shrinks dimensions."""
    shapes = {}
    for name, tensor in built.items():
        want = tuple(records[name]["shape"])
        if want == tuple(tensor.shape):
            continue
        if len(want) != tensor.dim() or any(w > b for w, b in zip(want, tensor.shape)):
            raise CheckpointError(
                f"{path}: tensor {name!r} has shape {list(want)} but the architecture builds "
                f"{list(tensor.shape)}; a pruned model can only be smaller along existing dimensions")
        shapes[name] = want
    return shapes


def _cast_dtypes(model: nn.Module, records: dict, path: Path) -> None:
    """Floating tensors may have been cast (e.g. model.half()); any other dtype change is refused."""
    for name, tensor in _named_tensors(model):
        want = _DTYPES[records[name]["dtype"]]
        if tensor.dtype == want:
            continue
        if not (tensor.is_floating_point() and want.is_floating_point):
            raise CheckpointError(f"{path}: tensor {name!r} is stored as {records[name]['dtype']} but "
                                  f"the architecture builds {_dtype_name(tensor.dtype)}")
        tensor.data = tensor.data.to(want)


def _load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the architecture: "
                              f"missing {_few(missing)}, unexpected {_few(extra)}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the architecture: {exc}") from exc


def _few(names: list[str], limit: int = 5) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------------
# Export: TorchScript and ONNX, verified against PyTorch before the file is written
# --------------------------------------------------------------------------------------------------

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
            latency = _median_ms(lambda: run(inputs), repeat)
            torch_latency = _median_ms(lambda: _torch_outputs(model, inputs), repeat)
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
                raise CheckpointError(f"cannot export {path} as TorchScript: trace failed "
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
        raise CheckpointError(f"cannot export {path} as ONNX ({'dynamo' if dynamo else 'legacy'} "
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
        raise CheckpointError(f"export {path}: artefact returns {len(got)} outputs, "
                              f"PyTorch returns {len(expected)}")
    diff, scale = 0.0, 1.0
    for want, have in zip(expected, got):
        if tuple(want.shape) != tuple(have.shape):
            raise CheckpointError(f"export {path}: output shape {list(have.shape)} differs from "
                                  f"PyTorch's {list(want.shape)}")
        want, have = want.double(), have.double()
        diff = max(diff, (want - have).abs().max().item() if want.numel() else 0.0)
        scale = max(scale, want.abs().max().item() if want.numel() else 0.0)
    if not diff <= tolerance * scale:  # `not <=` also catches NaN
        raise CheckpointError(f"export {path}: exported outputs differ from PyTorch by {diff:.3g} "
                              f"(tolerance {tolerance * scale:.3g}); nothing was written")
    return diff


def _median_ms(call: Callable[[], Any], repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
