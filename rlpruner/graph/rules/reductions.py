"""Rules for ops that combine elements: reductions and same-shape mixing along a dim.

- reduce: over dims where one slot holds (spatial mean) labels pass; across independent channels
          the result depends on every channel, so they are marked INEXACT
- mix:    same shape but mixes along a dim (softmax, normalize): INEXACT when that dim is channels
"""
from __future__ import annotations

import torch

from ..context import TraceContext, arg, tensors
from ..labels import INEXACT, compact, none_like, unique_slots, varies
from .elementwise import binary


def _reduce_dims(x: torch.Tensor, args, kwargs, func) -> tuple[list[int], bool]:
    dim = arg(args, kwargs, 1, "dim")
    if getattr(func, "__name__", "") == "norm":
        dim = arg(args, kwargs, 2, "dim")
    keepdim = bool(arg(args, kwargs, 2 if getattr(func, "__name__", "") != "norm" else 3, "keepdim", False))
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim())), keepdim
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % max(x.dim(), 1) for d in dims), keepdim


def reduce(ctx: TraceContext, func, args, kwargs, out) -> None:
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b) is element-wise
        binary(ctx, func, args, kwargs, out)
        return
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return
    if isinstance(arg(args, kwargs, 1, "dim"), str):
        ctx.unknown(func, args, kwargs, out, "reduction over a named dim")
        return
    dims, keepdim = _reduce_dims(x, args, kwargs, func)
    label = ctx.label(x)
    head = ctx.uniform_head(label, dims)
    if head is None:  # reduces across independent channels: their removal changes the value
        rest = compact(label).amax(dim=dims, keepdim=True) if dims else compact(label)
        if any(varies(rest, d) for d in range(x.dim()) if d not in dims):
            ctx.unknown(func, args, kwargs, out, "reduction mixing channels of several dims")
            return
        ctx.table.mark(unique_slots(label), INEXACT)
        for o in tensors(out):
            ctx.set_label(o, none_like(o.shape))
        return
    if not keepdim:
        head = head.reshape([n for d, n in enumerate(head.shape) if d not in dims])
    for o in tensors(out):
        ctx.set_label(o, head.expand(o.shape) if head.dim() == o.dim() else none_like(o.shape))


def mix(ctx: TraceContext, func, args, kwargs, out) -> None:
    x = args[0]
    dim = arg(args, kwargs, 1, "dim")
    if getattr(func, "__name__", "") == "normalize":
        dim = arg(args, kwargs, 2, "dim", 1)
    label = ctx.label(x)
    if dim is None or varies(label, dim % x.dim()):
        ctx.table.mark(unique_slots(label), INEXACT)
    for o in tensors(out):
        ctx.set_label(o, label)


NAMES = {
    reduce: (
        "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "argmax", "argmin",
        "nansum", "nanmean", "median", "all", "any", "count_nonzero",
    ),
    mix: ("softmax", "log_softmax", "softmin", "normalize", "cumsum", "cumprod", "local_response_norm"),
}
