"""Tracing and coupled channel groups: `trace(model, example_inputs) -> DependencyGraph`.

Extension point for ops and modules the tracer does not know: `register_rule` / `rules=` (channel
rules, see graph/rules and docs/custom-ops.md) and `register_fixup` (surgery attribute updates).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .check import ForwardFailure, forward_failure, validate_forward
from .context import Rule, TraceContext, UnknownOp
from .groups import Coverage, DependencyGraph, Group, Member, Removals
from .rules import RuleLike, register_fixup, register_rule, unregister_fixup, unregister_rule
from .trace import run_trace


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    keep: Sequence[str] = (),
    strict: bool = False,
    on_meta: bool = True,
    rules: Mapping[Any, RuleLike] | None = None,
) -> DependencyGraph:
    """Find which output channels of which layers are coupled, by running `model` once.

    example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs.
    keep: module paths (and their children) whose channels must not be pruned.
    strict: raise UnsupportedOperation on an operation with unknown channel semantics instead of
    freezing the channels it touches (the default, with a warning).
    on_meta: trace a shapes-only twin of the model (fast); falls back to real execution by itself.
    rules: {torch function or nn.Module type: rule} for this call, on top of the built-in and
    registered rules (an nn.Module type is traced as one operation; see docs/custom-ops.md).
    """
    from .groups import build_graph

    names = {n for n, _ in model.named_modules()}
    missing = [k for k in keep if k not in names]
    if missing:
        from ..errors import ConfigError

        raise ConfigError(f"keep: no module named {', '.join(map(repr, missing))} in {type(model).__name__}")
    ctx = run_trace(model, example_inputs, strict=strict, on_meta=on_meta, rules=rules)
    return build_graph(ctx, model, keep)


__all__ = [
    "trace", "DependencyGraph", "Group", "Member", "Removals", "UnknownOp", "validate_forward", "forward_failure",
    "ForwardFailure", "Coverage",
    "Rule", "TraceContext", "register_rule", "unregister_rule", "register_fixup", "unregister_fixup",
]
