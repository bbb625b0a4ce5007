"""Run a model once under a TorchFunctionMode and propagate channel labels through every call.

Tracing follows the real execution, so Python control flow, modules called several times,
functional calls and tuple/dict outputs need no special care. Parameters are recognised by
identity (not by module type), which is what makes functional layers and shared modules exact.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedOperation
from .labels import FROZEN, NONE, SlotTable, along, compact, none_like, unique_slots, varies
from .ops import Handler, _tensors, build_table
from .twin import meta_twin


@dataclass(frozen=True)
class UnknownOp:
    op: str
    module: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} in {self.module or '<model>'} ({self.reason})"


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__":
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    owner = getattr(func, "__module__", None) or ""
    return f"aten.{name}" if not owner.startswith("torch.nn") else f"F.{name}"


class TraceContext:
    """Everything one trace accumulates; handlers in `ops.py` talk to the trace only through it."""

    def __init__(self, model: nn.Module, strict: bool, handlers: dict[Any, Handler]):
        self.table = SlotTable()
        self.strict = strict
        self.handlers = handlers
        self.labels: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        self.names: dict[int, str] = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.names.setdefault(id(t), name)
        self.costs: list[tuple[str, int]] = []
        self.unknowns: list[UnknownOp] = []
        self.module_stack: list[str] = []

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

    def param_name(self, t: Any) -> str | None:
        """The state_dict name of a model parameter/buffer, or None for a computed tensor."""
        return self.names.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set_label(self, t: torch.Tensor, label: torch.Tensor) -> None:
        if tuple(label.shape) != tuple(t.shape):
            raise RuntimeError(f"internal: label shape {tuple(label.shape)} != tensor shape {tuple(t.shape)}")
        c = compact(label)
        self.labels[id(t)] = (t, label, bool(c.numel() and int(c.max()) >= 0))

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
        if len(big) == 1:
            slots = self.fresh(t.shape[big[0]])
            self.table.attach(name, big[0], slots)
            return along(slots, t.shape, big[0])
        slot = self.fresh(1, FROZEN)  # a full tensor parameter: structure unknown, keep it whole
        return slot.reshape((1,) * t.dim()).expand(t.shape)

    def fresh(self, n: int, flags: int = 0) -> torch.Tensor:
        return self.table.new(n, flags)

    # -- constraints -----------------------------------------------------------------------------
    def couple(self, a: torch.Tensor, b: torch.Tensor) -> None:
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
            self.table.mark(torch.tensor(lonely), FROZEN)

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

    def add_cost(self, weight_name: str, multiplier: int) -> None:
        self.costs.append((weight_name, int(multiplier)))

    def unknown(self, func: Any, args: tuple, kwargs: dict, out: Any, reason: str) -> None:
        op = UnknownOp(_op_name(func), ".".join(p for p in self.module_stack[-1:] if p), reason)
        if self.strict:
            raise UnsupportedOperation(f"{op}: its channel semantics are unknown (strict mode)")
        self.unknowns.append(op)
        for t in _tensors(list(args) + list(kwargs.values())):
            self.table.mark(unique_slots(self.label(t)), FROZEN)
        for o in _tensors(out):
            slot = self.fresh(1, FROZEN)
            self.set_label(o, slot.reshape((1,) * o.dim()).expand(o.shape))

    # -- dispatch --------------------------------------------------------------------------------
    def record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        inputs = _tensors(list(args) + list(kwargs.values()))
        if not _tensors(out) and func is not torch.Tensor.__setitem__:
            return
        if not any(self.has_slots(t) for t in inputs):
            return  # constants: outputs carry no channel provenance (NONE)
        handler = self.handlers.get(func)
        if handler is None:
            self.unknown(func, args, kwargs, out, "operation not in the channel-rule table")
        else:
            handler(self, func, args, kwargs, out)


# On the meta device even trivial ops run through Python reference decompositions (~0.1 ms each).
# Their outputs are fully determined by the inputs' shapes, so the trace builds them directly.
_NORMS = frozenset({F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm})
_ACTIVATIONS = frozenset({F.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.elu, F.mish,
                          F.leaky_relu, torch.relu, torch.sigmoid, torch.tanh, torch.Tensor.relu,
                          torch.Tensor.sigmoid, torch.Tensor.tanh, F.dropout, F.dropout2d})
_ARITHMETIC = frozenset({torch.add, torch.sub, torch.mul, torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul,
                         torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__sub__,
                         torch.Tensor.__rsub__, torch.Tensor.__mul__, torch.Tensor.__rmul__})
_ARITHMETIC_INPLACE = frozenset({torch.Tensor.add_, torch.Tensor.sub_, torch.Tensor.mul_, torch.Tensor.__iadd__,
                                 torch.Tensor.__isub__, torch.Tensor.__imul__})


def meta_shortcut(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The output of a shape-only op on meta tensors, or None to run it normally."""
    if func in _NORMS:
        return torch.empty_like(args[0])
    if func in _ACTIVATIONS:
        inplace = kwargs.get("inplace", False) or (func in (F.relu, F.relu6) and len(args) > 1 and args[1] is True)
        return args[0] if inplace else torch.empty_like(args[0])
    if func in _ARITHMETIC_INPLACE:
        return args[0]
    if func in _ARITHMETIC and len(args) == 2 and not kwargs:
        a, b = args
        shape = torch.broadcast_shapes(tuple(getattr(a, "shape", ())), tuple(getattr(b, "shape", ())))
        return torch.empty(shape, dtype=torch.result_type(a, b), device="meta")
    return None


class _LabelMode(TorchFunctionMode):
    def __init__(self, ctx: TraceContext, on_meta: bool):
        super().__init__()
        self.ctx = ctx
        self.on_meta = on_meta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = meta_shortcut(func, args, kwargs) if self.on_meta else None
        if out is None:
            out = func(*args, **kwargs)
        self.ctx.record(func, args, kwargs, out)
        return out


def _split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    raise TypeError("example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs")


def _install_module_stack(model: nn.Module, stack: list[str]) -> list[Any]:
    def enter(name: str) -> None:
        stack.append(name)

    def leave() -> None:  # a forward hook must return None, or it replaces the module's output
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: enter(n)))
        handles.append(module.register_forward_hook(lambda m, a, o: leave()))
    return handles


def run_trace(model: nn.Module, example_inputs: Any, strict: bool = False, on_meta: bool = True) -> TraceContext:
    """Execute `model` once recording labels; freeze the channels of its inputs and outputs.

    on_meta: run a twin of the model whose tensors live on the meta device (shapes only, no
    arithmetic: tracing a big model at 224x224 costs milliseconds per layer). Models whose control
    flow reads tensor values cannot run on meta; they are traced for real instead.
    """
    if on_meta:
        try:
            twin = meta_twin(model)
            return _run(twin, _to_meta(example_inputs), strict, on_meta=True)
        except UnsupportedOperation:
            raise
        except Exception:  # noqa: BLE001 - value-dependent code: fall back to real execution
            pass
    return _run(model, example_inputs, strict, on_meta=False)


class ShapeMode(TorchFunctionMode):
    """Runs a meta-device model with the slow shape-preserving decompositions short-circuited."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = meta_shortcut(func, args, kwargs)
        return func(*args, **kwargs) if out is None else out


def _to_meta(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs.to("meta")
    if isinstance(example_inputs, dict):
        return {k: _to_meta(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (list, tuple)):
        return type(example_inputs)(_to_meta(v) for v in example_inputs)
    return example_inputs


def _run(model: nn.Module, example_inputs: Any, strict: bool, on_meta: bool) -> TraceContext:
    ctx = TraceContext(model, strict, build_table())
    args, kwargs = _split_inputs(example_inputs)
    modes = {m: m.training for m in model.modules()}
    handles = _install_module_stack(model, ctx.module_stack)
    model.eval()
    try:
        for t in _tensors(list(args) + list(kwargs.values())):
            slot = ctx.fresh(1, FROZEN)
            ctx.set_label(t, slot.reshape((1,) * t.dim()).expand(t.shape))
        with torch.no_grad(), _LabelMode(ctx, on_meta):
            out = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    for t in _tensors(out):
        ctx.table.mark(unique_slots(ctx.label(t)), FROZEN)
    if ctx.unknowns:
        listed = "; ".join(sorted({str(u) for u in ctx.unknowns})[:8])
        warnings.warn(
            f"rlpruner: {len(ctx.unknowns)} operation(s) with unknown channel semantics; the channels they "
            f"touch are frozen (not pruned): {listed}. Use strict=True to raise instead.",
            stacklevel=4,
        )
    return ctx


__all__ = ["TraceContext", "UnknownOp", "run_trace", "NONE"]
