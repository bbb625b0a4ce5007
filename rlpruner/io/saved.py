"""Saved models: one safetensors file with a JSON header, never pickle.

A saved model is ONE safetensors file. Its tensors are the model's state_dict; its safetensors
metadata holds one key, ``"rlpruner"``, whose value is a JSON document (the *header*)::

    {"format": "rlpruner.model", "version": 1,
     "spec": {"source": "zoo" | "import" | "timm" | "torchvision", "name": "...", "kwargs": {...}},
     "tensors": {"conv1.weight": {"shape": [12, 3, 3, 3], "dtype": "float32"}, ...},
     "meta": {...}, "sizes": {"blocks.0.mix.splits": [20, 28], ...}}

``spec`` says how to build the *original* architecture (`rlpruner.models.model_from_spec`);
``tensors`` lists the shape and dtype of every parameter and buffer (non-persistent buffers too), so a
pruned model is rebuilt by building the original and shrinking the tensors that differ
(`rlpruner.surgery.reshape_to`). Training checkpoints use the same format. Tied tensors are stored
once, their other names say ``"same_as"`` (rlpruner.io.ties). ``sizes`` (present when surgery rewrote
module attributes that hold channel counts: split sizes, head dims) is set after shrinking. Security
rules: docs/saving.md.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, RLPrunerError
from ..models.registry import SPEC_ATTR, model_from_spec, spec_problem
from ..surgery import SIZES_ATTR, sizes_problem
from .atomic import PathLike, atomic_write_bytes, json_default
from .ties import find_ties, named_tensors, retie, ties_problem
from .trust import check_allowed

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


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------

def save(model: nn.Module, path: PathLike, *, meta: Mapping[str, Any] | None = None,
         spec: Mapping[str, Any] | None = None) -> Path:
    """Save `model` (pruned or not) as one safetensors file with a JSON header; returns the path.

    `spec` defaults to the model's `SPEC_ATTR` attribute (set by `rlpruner.create_model`). `meta` is any
    JSON-serialisable mapping (epoch, accuracy, input size...) returned by `load_checkpoint`.
    """
    from safetensors.torch import save as safetensors_bytes

    path = Path(path)
    spec = _spec_for_save(model, spec, path)
    records = _tensor_records(model)
    tensors = _state_tensors(model, records, path)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "spec": spec,
        "tensors": records,
        "meta": dict(meta or {}),
        **({"sizes": dict(sizes)} if (sizes := getattr(model, SIZES_ATTR, None)) else {}),
    }
    try:
        header_text = json.dumps(header, default=json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {path}: meta is not JSON-serialisable ({exc})") from exc
    data = safetensors_bytes(tensors, metadata={METADATA_KEY: header_text})
    atomic_write_bytes(path, data)
    return path


def _spec_for_save(model: nn.Module, spec: Mapping[str, Any] | None, path: Path) -> dict:
    spec = spec if spec is not None else getattr(model, SPEC_ATTR, None)
    if spec is None:
        raise CheckpointError(
            f"cannot save {path}: {type(model).__name__} has no {SPEC_ATTR}; build it with "
            "rlpruner.create_model(...) or pass spec={'source': 'import', 'name': 'pkg.module:factory', "
            "'kwargs': {...}}")
    problem = spec_problem(spec)
    if problem:
        raise CheckpointError(f"cannot save {path}: invalid spec: {problem}")
    return json.loads(json.dumps(dict(spec)))  # a plain, detached copy


def _state_tensors(model: nn.Module, records: dict[str, dict], path: Path) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors, each tied tensor once (under its first name).

    Distinct tensors that share storage (views of one buffer) are cloned: safetensors refuses sharing.
    """
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in model.state_dict().items():
        if "same_as" in records.get(name, {}):
            continue
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


def _tensor_records(model: nn.Module) -> dict[str, dict]:
    records: dict[str, dict] = {}
    ties = find_ties(model)
    for name, t in named_tensors(model):
        records[name] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        if name in ties:
            records[name]["same_as"] = ties[name]
    return records


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
    if set(header) - {"sizes"} != {"format", "version", "spec", "tensors", "meta"}:
        return f"unexpected keys {sorted(header)}"
    if "sizes" in header and (problem := sizes_problem(header["sizes"])):
        return problem
    if not isinstance(header["meta"], dict):
        return "meta is not an object"
    problem = spec_problem(header["spec"])
    if problem:
        return f"spec: {problem}"
    return _records_problem(header["tensors"])


def _records_problem(records: Any) -> str | None:
    if not isinstance(records, dict) or not records:
        return "tensors must be a non-empty object"
    for name, record in records.items():
        if not isinstance(record, dict) or set(record) - {"same_as"} != {"shape", "dtype"}:
            return f"tensor {name!r}: record must have exactly shape and dtype, and optionally same_as"
        shape = record["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return f"tensor {name!r}: shape must be a list of non-negative ints, not {shape!r}"
        if record["dtype"] not in _DTYPES:
            return f"tensor {name!r}: unsupported dtype {record['dtype']!r}"
    return ties_problem(records)


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
        if "same_as" in record:
            raise CheckpointError(f"{path}: tensor {name!r} is stored, but the header records it as "
                                  f"the same tensor as {record['same_as']!r}, which holds its data")
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
    check_allowed(spec, tuple(allow_imports), path)
    model = _build(spec, path)
    _match_architecture(model, header["tensors"], path, header.get("sizes") or {})
    _load_weights(model, tensors, header["tensors"], path)
    setattr(model, SPEC_ATTR, spec)
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


def _build(spec: dict, path: Path) -> nn.Module:
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


def _match_architecture(model: nn.Module, records: dict, path: Path, sizes: dict) -> None:
    """Tie the freshly built model as recorded, shrink it to the recorded shapes and dtypes, or refuse."""
    built = dict(named_tensors(model))
    missing, extra = sorted(set(built) - set(records)), sorted(set(records) - set(built))
    if missing or extra:
        raise CheckpointError(f"{path}: the file does not match {type(model).__name__}: "
                              f"missing {_few(missing)}, unexpected {_few(extra)}")
    retie(model, records, path)  # before shrinking, so that a tied tensor is shrunk once, everywhere
    shapes = _shrunk_shapes(dict(named_tensors(model)), records, path)
    if shapes:
        from ..surgery import reshape_to

        try:
            reshape_to(model, shapes, sizes=sizes)
        except RLPrunerError as exc:
            raise CheckpointError(f"{path}: cannot shrink {type(model).__name__} to the saved "
                                  f"shapes: {exc}") from exc
    _cast_dtypes(model, records, path)
    for name, tensor in named_tensors(model):
        record = records[name]
        if list(tensor.shape) != record["shape"] or _dtype_name(tensor.dtype) != record["dtype"]:
            raise CheckpointError(
                f"{path}: rebuilt tensor {name!r} is {_dtype_name(tensor.dtype)}{list(tensor.shape)}, "
                f"the file records {record['dtype']}{record['shape']}")


def _shrunk_shapes(built: dict[str, torch.Tensor], records: dict, path: Path
                   ) -> dict[str, tuple[int, ...]]:
    """Recorded shapes that differ from the built ones; pruning only ever shrinks dimensions.

    A tensor with several names is listed once, under its first: shrinking replaces it everywhere.
    """
    shapes = {}
    seen: set[int] = set()
    for name, tensor in built.items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
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
    for name, tensor in named_tensors(model):
        want = _DTYPES[records[name]["dtype"]]
        if tensor.dtype == want:
            continue
        if not (tensor.is_floating_point() and want.is_floating_point):
            raise CheckpointError(f"{path}: tensor {name!r} is stored as {records[name]['dtype']} but "
                                  f"the architecture builds {_dtype_name(tensor.dtype)}")
        tensor.data = tensor.data.to(want)


def _load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], records: dict, path: Path) -> None:
    expected = set(model.state_dict())
    # a tied model's state_dict lists every name of a tied tensor; the file stores its data once
    tensors = {**tensors, **{name: tensors[r["same_as"]] for name, r in records.items()
                             if "same_as" in r and name in expected and r["same_as"] in tensors}}
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
