"""Tracing and coupled channel groups: `trace(model, example_inputs) -> DependencyGraph`."""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from .groups import DependencyGraph, Group, Member, Removals, validate_forward
from .trace import UnknownOp, run_trace


def trace(
    model: nn.Module, example_inputs: Any, *, keep: Sequence[str] = (), strict: bool = False, on_meta: bool = True
) -> DependencyGraph:
    """Find which output channels of which layers are coupled, by running `model` once.

    example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    keep: module paths (and their children) whose channels must not be pruned.
    strict: raise UnsupportedOperation on an operation with unknown channel semantics instead of
    freezing the channels it touches (the default, with a warning).
    on_meta: trace a shapes-only twin of the model (fast); falls back to real execution by itself.
    """
    from .groups import build_graph

    names = {n for n, _ in model.named_modules()}
    missing = [k for k in keep if k not in names]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"keep: no module named {', '.join(map(repr, missing))} in {type(model).__name__}")
    ctx = run_trace(model, example_inputs, strict=strict, on_meta=on_meta)
    return build_graph(ctx, model, keep)


__all__ = ["trace", "DependencyGraph", "Group", "Member", "Removals", "UnknownOp", "validate_forward"]
