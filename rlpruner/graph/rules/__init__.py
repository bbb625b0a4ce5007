"""THE table of channel rules, and the extension point for users' own ops and modules.

The built-in rules live in small files by concern: elementwise.py (activations, arithmetic),
movement.py (views, cat/split, slicing, pooling), reductions.py (mean, softmax...), layers.py
(conv, linear, norms, PReLU, and the surgery fix-ups of their modules), attention.py (matmul, SDPA),
mha.py (nn.MultiheadAttention, traced as one operation, with its fix-up and pruned form).

A rule table maps a *target* to a `Rule`:
- a torch function / Tensor method (what a TorchFunctionMode sees, e.g. `torch.einsum`), or
- an nn.Module subclass: modules of that type (and its subclasses) are traced as ONE operation,
  a *leaf*: the rule gets `func=module` and the module's call arguments and output; the ops inside
  its forward are not looked at (use this for custom autograd Functions or external kernels).

Anything not in the table and touching channel labels is *unknown*: the channels it touches are
frozen and reported (or, in strict mode, an UnsupportedOperation is raised).

Users add rules per call (`trace(..., rules={target: rule})`, `prune(..., rules=..., fixups=...)`)
or for the whole process (`register_rule`, `register_fixup`: the RL search sees those too).
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...registry import Registry
from ..context import Handler, MetaShortcut, Rule
from . import attention, elementwise, layers, mha, movement, reductions
from .layers import Fixup, Layer

RuleLike = Rule | Handler

# Process-wide user registrations, keyed by the target's qualified name (one rule per target).
USER_RULES: Registry[tuple[Any, Rule]] = Registry("channel rule")
USER_FIXUPS: Registry[tuple[type, Fixup]] = Registry("module fix-up")

_NAMESPACES = (torch, torch.Tensor, F, torch.special)
_FILES = (elementwise, movement, reductions, layers, attention, mha)
_LAYERS = layers.LAYERS + mha.LAYERS  # first isinstance match wins


@functools.lru_cache(maxsize=1)
def _builtin() -> Mapping[Any, Rule]:
    """func object -> Rule, resolving every name in every namespace where it exists."""
    meta: dict[Any, MetaShortcut] = {f: short for file in _FILES for short, fs in getattr(file, "META", {}).items()
                                     for f in fs}
    table: dict[Any, Rule] = {}
    for handler, names in _in_table_order():
        for name in names:
            for ns in _NAMESPACES:
                func = getattr(ns, name, None)
                if func is not None and func not in table:
                    table[func] = Rule(handler, meta.get(func))
    for file in _FILES:
        for prop, handler in getattr(file, "PROPERTIES", {}).items():
            table[getattr(torch.Tensor, prop).__get__] = Rule(handler)
        for handler, module_types in getattr(file, "MODULES", {}).items():  # traced as leaves
            table.update((cls, Rule(handler)) for cls in module_types)
    missing = [f for f in meta if f not in table]
    if missing:  # pragma: no cover - a shortcut must belong to a rule entry
        raise RuntimeError(f"internal: meta shortcuts without a rule: {missing}")
    return table


def _in_table_order() -> Iterable[tuple[Handler, tuple[str, ...]]]:
    """Where torch exposes one function under names of two kinds, the earlier kind wins."""
    yield from ((h, n) for h, n in elementwise.NAMES.items() if h is not elementwise.setitem)
    yield from movement.NAMES.items()
    yield from reductions.NAMES.items()
    yield from layers.NAMES.items()
    yield from attention.NAMES.items()
    yield elementwise.setitem, elementwise.NAMES[elementwise.setitem]


def rule_table(extra: Mapping[Any, RuleLike] | None = None) -> dict[Any, Rule]:
    """The built-in rules, then the process-wide user rules, then `extra` (later ones win)."""
    table = dict(_builtin())
    table.update(USER_RULES.get(name) for name in USER_RULES)
    for target, rule in (extra or {}).items():
        table[_check_target(target)] = as_rule(rule)
    return table


def leaf_rule(table: Mapping[Any, Rule], module: nn.Module) -> Rule | None:
    """The rule of a module traced as one operation (its type or a base class is in the table)."""
    for cls in type(module).__mro__:
        if cls is nn.Module:
            return None
        rule = table.get(cls)
        if rule is not None:
            return rule
    return None


def as_rule(rule: RuleLike) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if callable(rule):
        return Rule(rule)
    raise ConfigError(f"a channel rule must be a Rule or a callable(ctx, func, args, kwargs, out), got {rule!r}")


def _check_target(target: Any) -> Any:
    if isinstance(target, nn.Module):
        raise ConfigError(f"register the module type {type(target).__name__}, not an instance")
    if not callable(target):
        raise ConfigError(f"a rule target must be a torch function or an nn.Module type, got {target!r}")
    return target


def _name(target: Any) -> str:
    return f"{getattr(target, '__module__', None) or '?'}.{getattr(target, '__qualname__', repr(target))}"


def register_rule(target: Any, rule: RuleLike | None = None) -> Any:
    """Process-wide: trace `target` (a torch function or an nn.Module type) with `rule`.

    Usable as a decorator: `@register_rule(MyModule)` over the rule function. A target gets one rule;
    registering it twice is a ConfigError (`unregister_rule` first).
    """
    if rule is None:
        def decorate(fn: Handler) -> Handler:
            register_rule(target, fn)
            return fn
        return decorate
    USER_RULES.add(_name(_check_target(target)), (target, as_rule(rule)))
    return rule


def unregister_rule(target: Any) -> None:
    USER_RULES.remove(_name(target))


def register_fixup(module_type: type, fixup: Fixup | None = None) -> Any:
    """Process-wide: after surgery slices tensors of a `module_type` module, call `fixup(module)` to
    update its attributes (channel counts...). Runs after the built-in fix-up of a torch base class."""
    if fixup is None:
        def decorate(fn: Fixup) -> Fixup:
            register_fixup(module_type, fn)
            return fn
        return decorate
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ConfigError(f"register_fixup needs an nn.Module type, got {module_type!r}")
    USER_FIXUPS.add(_name(module_type), (module_type, fixup))
    return fixup


def unregister_fixup(module_type: type) -> None:
    USER_FIXUPS.remove(_name(module_type))


def _builtin_layer(module: nn.Module) -> Layer | None:
    return next((layer for cls, layer in _LAYERS if isinstance(module, cls)), None)


def fixups_for(module: nn.Module, extra: Mapping[type, Fixup] | None = None) -> list[Fixup]:
    """The attribute fix-ups to run on `module` after its tensors were sliced, in order."""
    found = [layer.fixup] if (layer := _builtin_layer(module)) is not None else []
    user = [USER_FIXUPS.get(name) for name in USER_FIXUPS]
    found += [fn for cls, fn in user if isinstance(module, cls)]
    found += [fn for cls, fn in (extra or {}).items() if isinstance(module, cls)]
    return found


def input_dims(module: nn.Module) -> frozenset[tuple[str, int]]:
    """(attribute, dim) pairs of `module` that index its input channels (the consumer side)."""
    layer = _builtin_layer(module)
    return layer.input_dims(module) if layer is not None else frozenset()


__all__ = [
    "Rule", "Layer", "rule_table", "leaf_rule", "register_rule", "unregister_rule", "register_fixup",
    "unregister_fixup", "fixups_for", "input_dims", "USER_RULES", "USER_FIXUPS",
]
