"""A user's own weights: a state dict in ``.safetensors`` or ``.pth``/``.pt``, never unpickled.

    report = load_weights(model, "resnet18.safetensors")          # every tensor must fit
    report = load_weights(model, "ckpt.pth", strict=False)        # load what fits, report the rest

``.pth`` files are read with ``torch.load(weights_only=True)``: tensors and plain containers only. A
file that pickles Python objects (``torch.save(model)``, optimiser objects, custom classes) is
refused before any of its code can run. Training checkpoints that wrap the state dict
(``{"state_dict": ...}``, ``{"model": ...}``) and the prefixes added by DataParallel (``module.``)
and ``torch.compile`` (``_orig_mod.``) are understood.
"""
from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.registry import SPEC_ATTR
from .atomic import PathLike

SAFETENSORS_SUFFIXES = (".safetensors",)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class WeightsReport:
    """What `load_weights` did: the names it loaded and those that did not fit."""

    path: Path
    loaded: tuple[str, ...]
    missing: tuple[str, ...]                                  # in the model, not in the file
    unexpected: tuple[str, ...]                               # in the file, not in the model
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, file shape, model shape)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """One line: how much was loaded and what did not fit (the first few names of each)."""
        parts = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.missing:
            parts.append(f"missing from the file {_few(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model {_few(self.unexpected)}")
        if self.mismatched:
            shown = [f"{n} (file {list(f)}, model {list(m)})" for n, f, m in self.mismatched]
            parts.append(f"different shape {_few(shown)}")
        return "; ".join(parts)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping stored in a weights file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file" if not path.exists() else f"{path}: not a file")
    loaded = _read_safetensors(path) if path.suffix in SAFETENSORS_SUFFIXES else _read_torch(path)
    return _unwrap(loaded, path)


def load_weights(model: nn.Module, path: PathLike, *, strict: bool = True) -> WeightsReport:
    """Copy the weights stored at `path` into `model` (in place); returns what was loaded.

    With `strict`, every tensor of the model must be in the file with the same shape and the file
    must hold nothing else; otherwise a CheckpointError lists the differences and nothing is
    changed. Without it, the tensors that fit are loaded and the report lists the rest (at least
    one tensor must fit).
    """
    path = Path(path)
    tensors = read_state_dict(path)
    expected = model.state_dict()
    report = _compare(path, tensors, expected)
    if not report.loaded or (strict and not report.complete):
        hint = ("; give the model the weights' number of classes / input channels, or load what fits "
                "with strict=False (CLI: --partial-weights)" if strict and report.loaded else "")
        raise CheckpointError(f"{path} does not fit {_model_name(model)}: {report.describe()}{hint}")
    fitting = {name: tensors[name] for name in report.loaded}
    try:
        model.load_state_dict(fitting, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise CheckpointError(f"{path}: cannot copy the weights into {_model_name(model)}: {exc}") from exc
    return report


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own (Rust-side) error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds pickled Python objects, not only tensors (for example a whole model saved with "
            "torch.save(model)); rlpruner never unpickles objects because that can run any code. Save "
            "the weights with torch.save(model.state_dict(), path) or as .safetensors. "
            f"(torch: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch weights file, or truncated "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside what was read: itself, or the entry of a known wrapper key."""
    candidates: list[object] = [loaded]
    if isinstance(loaded, Mapping):
        candidates += [loaded[k] for k in WRAPPER_KEYS if k in loaded]
    for candidate in candidates:
        if _is_state_dict(candidate):
            return _strip_prefixes(dict(candidate))
    kind = type(loaded).__name__
    keys = f" with keys {_few([str(k) for k in loaded])}" if isinstance(loaded, Mapping) else ""
    raise CheckpointError(f"{path}: no state dict found in a {kind}{keys}; expected a mapping of parameter "
                          f"names to tensors, or one under {', '.join(repr(k) for k in WRAPPER_KEYS)}")


def _is_state_dict(value: object) -> bool:
    return (isinstance(value, Mapping) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if all(name.startswith(prefix) for name in tensors):
            tensors = {name[len(prefix):]: t for name, t in tensors.items()}
    return tensors


def _compare(path: Path, tensors: Mapping[str, torch.Tensor],
             expected: Mapping[str, torch.Tensor]) -> WeightsReport:
    loaded, mismatched = [], []
    for name, want in expected.items():
        have = tensors.get(name)
        if have is None:
            continue
        if tuple(have.shape) == tuple(want.shape):
            loaded.append(name)
        else:
            mismatched.append((name, tuple(have.shape), tuple(want.shape)))
    return WeightsReport(path=path, loaded=tuple(loaded),
                         missing=tuple(n for n in expected if n not in tensors),
                         unexpected=tuple(n for n in tensors if n not in expected),
                         mismatched=tuple(mismatched))


def _model_name(model: nn.Module) -> str:
    spec = getattr(model, SPEC_ATTR, None)
    return spec["name"] if isinstance(spec, Mapping) and "name" in spec else type(model).__name__


def _few(names, limit: int = 4) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"
