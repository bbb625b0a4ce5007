"""Run a model once under a TorchFunctionMode and propagate channel labels through every call.

Tracing follows the real execution, so Python control flow, modules called several times,
functional calls and tuple/dict outputs need no special care. Parameters are recognised by
identity (not by module type), which is what makes functional layers and shared modules exact.
Modules whose type has a rule (see graph/rules) are traced as one operation: a *leaf*.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedOperation
from .context import Rule, TraceContext, UnknownOp, tensors
from .labels import FROZEN, NONE, unique_slots
from .rules import RuleLike, leaf_rule, rule_table
from .twin import meta_twin


def shortcut(table: Mapping[Any, Rule], func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """On meta tensors: the output of an op whose rule builds it from shapes, or None to run the op."""
    rule = table.get(func)
    return rule.meta(func, args, kwargs) if rule is not None and rule.meta is not None else None


class _LabelMode(TorchFunctionMode):
    def __init__(self, ctx: TraceContext, on_meta: bool):
        super().__init__()
        self.ctx = ctx
        self.on_meta = on_meta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = shortcut(self.ctx.rules, func, args, kwargs) if self.on_meta else None
        if out is None:
            out = func(*args, **kwargs)
        self.ctx.record(func, args, kwargs, out)
        return out


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    raise TypeError("example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs")


def to_meta(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.to("meta")
    if isinstance(example_inputs, dict):
        return {k: to_meta(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (list, tuple)):
        return type(example_inputs)(to_meta(v) for v in example_inputs)
    return example_inputs


def module_stack_hooks(model: nn.Module, names: list[str], modules: list[nn.Module] | None = None) -> list[Any]:
    """Keep `names` (and `modules`) holding the modules whose forward is running, innermost last.

    After an exception the stack still names the module that raised (its exit hook never ran)."""

    def enter(name: str, module: nn.Module) -> None:
        names.append(name)
        if modules is not None:
            modules.append(module)

    def leave() -> None:  # a forward hook must return None, or it replaces the module's output
        if names:
            names.pop()
            if modules:
                modules.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n, m)))
        handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    return handles


def _install_hooks(model: nn.Module, ctx: TraceContext) -> list[Any]:
    """Keep `ctx.module_stack` (for messages) and trace rule-bearing modules as leaves."""
    handles = []
    for module in model.modules():
        rule = leaf_rule(ctx.rules, module)
        if rule is not None:  # registered before the stack hooks: the stack names the leaf while it records
            handles.append(module.register_forward_pre_hook(lambda m, a, k: _enter_leaf(ctx), with_kwargs=True))
            handles.append(module.register_forward_hook(
                lambda m, a, k, o, r=rule: _leave_leaf(ctx, r, m, a, k, o), with_kwargs=True))
    return handles + module_stack_hooks(model, ctx.module_stack, ctx.module_objects)


def _enter_leaf(ctx: TraceContext) -> None:
    ctx.leaf_depth += 1


def _leave_leaf(ctx: TraceContext, rule: Rule, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
    ctx.leaf_depth -= 1
    ctx.record(module, args, kwargs, out, rule)


def run_trace(
    model: nn.Module,
    example_inputs: Any,
    strict: bool = False,
    on_meta: bool = True,
    rules: Mapping[Any, RuleLike] | None = None,
) -> TraceContext:
    """Execute `model` once recording labels; freeze the channels of its inputs and outputs.

    on_meta: run a twin of the model whose tensors live on the meta device (shapes only, no
    arithmetic: tracing a big model at 224x224 costs milliseconds per layer). Models whose control
    flow reads tensor values cannot run on meta; they are traced for real instead.
    rules: {target: rule} added to the rule table for this trace (see graph/rules).
    """
    table = rule_table(rules)
    if on_meta:
        try:
            twin = meta_twin(model)
            return _run(twin, to_meta(example_inputs), strict, table, on_meta=True)
        except UnsupportedOperation:
            raise
        except Exception:  # noqa: BLE001 - value-dependent code: fall back to real execution
            pass
    return _run(model, example_inputs, strict, table, on_meta=False)


def _run(model: nn.Module, example_inputs: Any, strict: bool, table: dict[Any, Rule], on_meta: bool) -> TraceContext:
    ctx = TraceContext(model, strict, table)
    args, kwargs = split_inputs(example_inputs)
    modes = {m: m.training for m in model.modules()}
    handles = _install_hooks(model, ctx)
    model.eval()
    try:
        for t in tensors(list(args) + list(kwargs.values())):
            slot = ctx.fresh(1, FROZEN, "model input")
            ctx.set_label(t, slot.reshape((1,) * t.dim()).expand(t.shape))
        with torch.no_grad(), _LabelMode(ctx, on_meta):
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    for t in tensors(out):
        ctx.table.mark(unique_slots(ctx.label(t)), FROZEN, "model output")
    if ctx.unknowns:
        listed = "; ".join(sorted({str(u) for u in ctx.unknowns})[:8])
        warnings.warn(
            f"rlpruner: {len(ctx.unknowns)} operation(s) with unknown channel semantics; the channels they "
            f"touch are frozen (not pruned): {listed}. Use strict=True to raise instead, or give the op a "
            "rule (rlpruner.graph.register_rule; see docs/custom-ops.md).",
            stacklevel=4,
        )
    return ctx


__all__ = ["TraceContext", "UnknownOp", "run_trace", "NONE"]
