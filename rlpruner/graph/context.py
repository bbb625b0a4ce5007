"""What a channel rule sees of a running trace: `TraceContext`, and the types of rules.

This module imports no rules, so the rule files (graph/rules/) and the tracer (graph/trace.py) both
depend on it and not on each other.

A rule is `rule(ctx, func, args, kwargs, out) -> None`, called after `func(*args, **kwargs)` ran and
returned `out` (for a leaf module, `func` is the module instance). It must give every output tensor
a label with `ctx.set_label`. What `ctx` offers:

- `ctx.label(t)`: the label tensor of `t` (same shape, one slot id per element, NONE = no channel)
- `ctx.set_label(out, label)`, `ctx.has_slots(t)`
- `ctx.channels(t, dim=1)`: one slot per index of `dim` (what channel i of `t` depends on);
  `ctx.set_channels(out, slots, dim=1)`: label `out` with `slots` along `dim`
- `ctx.fresh(n)`: n new slots (a layer that produces n channels)
- `ctx.couple(a, b)`: slots at equal positions of two labels must be removed together
- `ctx.attach(param, dim, slots)`: dim `dim` of model tensor `param` follows `slots` (per-channel
  weights); returns False when `param` is computed rather than a parameter/buffer of the model
- `ctx.freeze(slots, why)`: never remove these (the reason, with the module, shows in the summary);
  `ctx.table.mark(slots, INEXACT)`: removal changes other channels' values
- `ctx.unknown(func, args, kwargs, out, reason)`: give up: freeze everything touched (strict mode
  raises UnsupportedOperation instead)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..batches import tensors_of as tensors  # every tensor in nested args/outputs (rules import it from here)
from ..errors import UnsupportedOperation
from .labels import FROZEN, SlotTable, along, compact, none_like, per_index, unique_slots, varies

Handler = Callable[["TraceContext", Any, tuple, dict, Any], None]
MetaShortcut = Callable[[Any, tuple, dict], "torch.Tensor | None"]


@dataclass(frozen=True)
class Rule:
    """One entry of the rule table.

    handler: sets the output labels (see the module docstring).
    meta: optional; on the meta device, builds the output from the inputs' shapes alone (or returns
    None to run the op), skipping slow reference decompositions. Only for ops whose output is
    determined by shapes.
    """

    handler: Handler
    meta: MetaShortcut | None = None


@dataclass(frozen=True)
class SizeSite:
    """A module attribute a forward call used as a channel count (split sizes, a view's head dim):
    `pieces` holds the slots of the positions each count covers (one piece for an int)."""

    module: str
    attr: str
    pieces: tuple[torch.Tensor, ...]
    as_list: bool


def _holds(value: Any, wanted: int | list[int]) -> bool:
    if isinstance(wanted, list):
        return isinstance(value, (list, tuple)) and [type(v) is int for v in value] == [True] * len(wanted) \
            and list(value) == wanted
    return type(value) is int and value == wanted


@dataclass(frozen=True)
class UnknownOp:
    op: str
    module: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} in {self.module or '<model>'} ({self.reason})"


def arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    """Argument `name`, passed by keyword or at position `index`."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def op_name(func: Any) -> str:
    if isinstance(func, nn.Module):
        return type(func).__name__
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    owner = getattr(func, "__module__", None) or ""
    return f"aten.{name}" if not owner.startswith("torch.nn") else f"F.{name}"


class TraceContext:
    """Everything one trace accumulates; rules talk to the trace only through it."""

    def __init__(self, model: nn.Module, strict: bool, rules: dict[Any, Rule]):
        self.table = SlotTable()
        self.strict = strict
        self.rules = rules
        self.labels: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self.names: dict[int, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.names.setdefault(id(t), name)
            self.shapes[name] = tuple(t.shape)
        self.costs: list[tuple[str, int]] = []
        # conv/linear weights by name -> their output-channel dim; a weight used in other ops first
        # (weight standardisation) gets slots along that dim, which the layer call then takes over
        self.weight_dims: dict[str, int] = {
            f"{m_name}.weight" if m_name else "weight": (1 if getattr(m, "transposed", False) else 0)
            for m_name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
        self.derived: dict[int, str] = {}  # first slot of such a weight's output dim -> its name
        self.producers: list[tuple[str, int]] = []  # (conv/linear weight, its output-channel dim)
        self.unknowns: list[UnknownOp] = []
        self.module_stack: list[str] = []
        self.module_objects: list[nn.Module] = []  # the modules of `module_stack`
        self.sizes: list[SizeSite] = []
        self.leaf_depth = 0  # > 0 inside a module traced as one op: its inner ops are not recorded

    # -- labels ----------------------------------------------------------------------------------
    def label(self, t: torch.Tensor) -> torch.Tensor:
        entry = self.labels.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        name = self.names.get(id(t))
        if name is not None:
            label = self._param_label(t, name)
            self.set_label(t, label)
            return label
        return none_like(t.shape)

    def channels(self, t: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """One slot per index of `dim` of `t`, merging the slots found in each index's slice."""
        return per_index(self.table, self.label(t), dim)

    def set_channels(self, t: torch.Tensor, slots: torch.Tensor, dim: int = 1) -> None:
        """Label `t` with `slots` laid along `dim` (broadcast over every other dim)."""
        self.set_label(t, along(slots, t.shape, dim))

    def param_name(self, t: Any) -> str | None:
        """The state_dict name of a model parameter/buffer, or None for a computed tensor."""
        return self.names.get(id(t)) if isinstance(t, torch.Tensor) else None

    def source_weight(self, weight: torch.Tensor, out_dim: int) -> tuple[str, torch.Tensor] | None:
        """(name, output slots) of the layer weight that a computed `weight` was derived from per output
        channel (e.g. standardised over its fan-in), or None."""
        label = self.label(weight)
        if any(varies(label, d) for d in range(label.dim()) if d != out_dim):
            return None
        slots = per_index(self.table, label, out_dim)
        name = self.derived.get(int(slots[0])) if len(slots) else None
        if name is None or tuple(self.shapes[name]) != tuple(weight.shape):
            return None
        return name, slots

    def attach(self, t: Any, dim: int, slots: torch.Tensor) -> bool:
        """Dim `dim` of model tensor `t` follows `slots`; False if `t` is not a parameter/buffer."""
        name = self.param_name(t)
        if name is None:
            return False
        self.table.attach(name, dim, slots)
        return True

    def set_label(self, t: torch.Tensor, label: torch.Tensor) -> None:
        if tuple(label.shape) != tuple(t.shape):
            raise RuntimeError(f"internal: label shape {tuple(label.shape)} != tensor shape {tuple(t.shape)}")
        c = compact(label)
        self.labels[id(t)] = (t, label, bool(c.numel() and int(c.max()) >= 0))

    def labelled(self, t: torch.Tensor) -> bool:
        """Whether `t` has a label already (a parameter gets one when an op first reads it)."""
        entry = self.labels.get(id(t))
        return entry is not None and entry[0] is t

    def has_slots(self, t: torch.Tensor) -> bool:
        entry = self.labels.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[2]
        return id(t) in self.names

    def _param_label(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """A parameter used directly in an op (layer-scale, bias add): slots along its one real dim."""
        big = [d for d, n in enumerate(t.shape) if n > 1]
        if not big:
            return none_like(t.shape)
        out_dim = self.weight_dims.get(name)
        if len(big) > 1 and out_dim is not None:  # a layer weight computed on (standardised, scaled...)
            slots = self.fresh(t.shape[out_dim])
            self.table.attach(name, out_dim, slots)
            self.derived[int(slots[0])] = name
            return along(slots, t.shape, out_dim)
        if len(big) == 1:
            slots = self.fresh(t.shape[big[0]])
            self.table.attach(name, big[0], slots)
            return along(slots, t.shape, big[0])
        # a full tensor parameter: structure unknown, keep it whole
        slot = self.fresh(1, FROZEN, f"parameter {name} used whole (its channel structure is unknown)")
        return slot.reshape((1,) * t.dim()).expand(t.shape)

    def fresh(self, n: int, flags: int = 0, reason: str = "") -> torch.Tensor:
        return self.table.new(n, flags, reason)

    @property
    def module(self) -> str:
        """The module whose forward is running (for messages); '' at the top level."""
        return self.module_stack[-1] if self.module_stack else ""

    def size_holder(self, value: int | list[int]) -> str | None:
        """The one attribute of the running module that holds `value`; None when none or several do."""
        module = self.module_objects[-1] if self.module_objects else None
        if module is None:
            return None
        wanted = [int(v) for v in value] if isinstance(value, (list, tuple)) else int(value)
        names = [k for k, v in vars(module).items() if not k.startswith("_") and _holds(v, wanted)]
        return names[0] if len(names) == 1 else None

    def size_attribute(self, value: int | list[int], pieces: list[torch.Tensor], attr: str | None = None) -> bool:
        """Record that the running module's attribute holding `value` (or named `attr`, when the rule
        knows it) counts the channels `pieces` (slot per position), so surgery can rewrite it. False if
        no single attribute holds it."""
        name = attr or self.size_holder(value)
        if name is None:
            return False
        self.sizes.append(SizeSite(self.module, name, tuple(p.reshape(-1) for p in pieces),
                                   isinstance(value, (list, tuple))))
        return True

    def freeze(self, slots: torch.Tensor, why: str) -> None:
        """Never remove `slots`: `why` names the op; the module running it is added here."""
        self.table.mark(slots, FROZEN, f"{why} in {self.module or '<model>'}")

    # -- constraints -----------------------------------------------------------------------------
    def couple(self, a: torch.Tensor, b: torch.Tensor, op: str = "an element-wise op") -> None:
        """Element-wise: slots at equal positions go together; a slot facing only constants is frozen."""
        a, b = torch.broadcast_tensors(a, b)
        index = tuple(
            slice(0, 1) if (a.stride(d) == 0 and b.stride(d) == 0 and a.shape[d] > 1) else slice(None)
            for d in range(a.dim())
        )
        pairs = torch.stack([a[index].reshape(-1), b[index].reshape(-1)], dim=1)
        pairs = torch.unique(pairs, dim=0)
        both = (pairs >= 0).all(dim=1)
        self.table.union_pairs(pairs[both])
        partnered = set(pairs[both].reshape(-1).tolist())
        lonely = pairs[~both].reshape(-1)
        lonely = [s for s in lonely.tolist() if s >= 0 and s not in partnered]
        if lonely:
            self.freeze(torch.tensor(lonely), f"combined with constants of a fixed size by {op}")

    def uniform_head(self, label: torch.Tensor, dims: list[int]) -> torch.Tensor | None:
        """Labels with `dims` reduced to size 1 if every reduced slice is one slot (NONE ignored)."""
        c = compact(label)
        if not dims:
            return label
        head = c.amax(dim=dims, keepdim=True)
        if not any(varies(c, d) for d in dims):
            return head.expand([1 if d in dims else n for d, n in enumerate(label.shape)])
        roots = self.table.roots_of(c)
        head_roots = self.table.roots_of(head).expand(c.shape)
        if bool(((roots == head_roots) | (roots < 0)).all()):
            return head.expand([1 if d in dims else n for d, n in enumerate(label.shape)])
        return None

    def add_cost(self, weight_name: str, multiplier: int, out_dim: int = 0) -> None:
        """A conv/linear call: FLOPs = 2 x multiplier x numel(weight); dim `out_dim` holds its outputs."""
        self.costs.append((weight_name, int(multiplier)))
        if (weight_name, out_dim) not in self.producers:
            self.producers.append((weight_name, out_dim))

    def unknown(self, func: Any, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        op = UnknownOp(op_name(func), self.module, reason)
        if self.strict:
            raise UnsupportedOperation(f"{op}: its channel semantics are unknown (strict mode)")
        self.unknowns.append(op)
        for t in tensors(list(args) + list(kwargs.values())):
            self.table.mark(unique_slots(self.label(t)), FROZEN, f"unsupported operation {op}")
        for o in tensors(out):
            slot = self.fresh(1, FROZEN, f"output of unsupported operation {op}")
            self.set_label(o, slot.reshape((1,) * o.dim()).expand(o.shape))

    # -- dispatch --------------------------------------------------------------------------------
    def record(self, func: Any, args: tuple, kwargs: dict, out: Any, rule: Rule | None = None) -> None:
        """Apply the rule of `func` (or `rule`, for a leaf module) to one call that returned `out`."""
        if self.leaf_depth:
            return
        inputs = tensors(list(args) + list(kwargs.values()))
        if not tensors(out) and func is not torch.Tensor.__setitem__:
            return
        if not any(self.has_slots(t) for t in inputs):
            return  # constants: outputs carry no channel provenance (NONE)
        rule = rule or self.rules.get(func)
        if rule is None:
            self.unknown(func, args, kwargs, out, "operation not in the channel-rule table")
        else:
            rule.handler(self, func, args, kwargs, out)
