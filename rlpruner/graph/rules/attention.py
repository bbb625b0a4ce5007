"""Attention: matmul between activations, and F.scaled_dot_product_attention.

- matmul: `a @ b` couples the contracted dim of both sides (q's and k's head dims go together); the
  output carries the channels of whichever side has them in its free dim (`attn @ v` carries v's).
  `x @ W` with a 2-D parameter W is a linear layer.
- sdpa:   q and k head dims coupled, the output carries v's; with the default scale (1/sqrt(head
  dim)) removing a head-dim channel rescales the scores, so those channels are marked INEXACT.

With these, the head reshapes (`view(B, N, 3, heads, self.head_dim)`, handled in movement.py: outer
factors fixed, so the per-head dim shrinks uniformly across heads, and the module attribute holding
it is rewritten) make a transformer block's q/k/v projections prunable.
"""
from __future__ import annotations

import torch

from ..context import TraceContext, arg
from ..labels import INEXACT, none_like, per_index, unique_slots, varies


def _head(ctx: TraceContext, label: torch.Tensor, dim: int) -> torch.Tensor | None:
    return ctx.uniform_head(label, [dim % label.dim()])


def matmul(ctx: TraceContext, func, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    if not isinstance(b, torch.Tensor) or a.dim() < 2 or b.dim() < 2:
        ctx.unknown(func, args, kwargs, out, "matmul with a vector operand")
        return
    wname = ctx.param_name(b)
    if wname is not None and b.dim() == 2:  # x @ W: a linear layer with W stored (in, out)
        ctx.table.attach(wname, 0, per_index(ctx.table, ctx.label(a), -1))
        out_slots = ctx.fresh(b.shape[1])
        ctx.table.attach(wname, 1, out_slots)
        ctx.add_cost(wname, out.numel() // out.shape[-1], out_dim=1)
        ctx.set_channels(out, out_slots, dim=-1)
        return
    la, lb = ctx.label(a), ctx.label(b)
    a_free, b_free = varies(la, la.dim() - 2), varies(lb, lb.dim() - 1)  # rows of a, columns of b
    if varies(la, la.dim() - 1) or varies(lb, lb.dim() - 2):  # the contracted dim carries channels
        a_k, b_k = _head(ctx, la, -2), _head(ctx, lb, -1)  # (..., 1, K) and (..., K, 1)
        if a_k is None or b_k is None:
            ctx.unknown(func, args, kwargs, out, "matmul mixing channels of the contracted and free dims")
            return
        ctx.couple(a_k.transpose(-1, -2), b_k, "a matmul")
    if a_free and b_free:
        ctx.unknown(func, args, kwargs, out, "matmul whose output has channels on both dims")
        return
    side = _head(ctx, la, -1) if a_free else _head(ctx, lb, -2) if b_free else None
    if (a_free or b_free) and side is None:
        ctx.unknown(func, args, kwargs, out, "matmul mixing channels of the contracted and free dims")
        return
    ctx.set_label(out, none_like(out.shape) if side is None else side.broadcast_to(out.shape))


def sdpa(ctx: TraceContext, func, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    lq, lk, lv = ctx.label(q), ctx.label(k), ctx.label(v)
    qe, ke, ve = _head(ctx, lq, -2), _head(ctx, lk, -2), _head(ctx, lv, -2)
    if qe is None or ke is None or ve is None:
        ctx.unknown(func, args, kwargs, out, "attention with channels along the token dim")
        return
    try:
        ctx.couple(qe, ke, "scaled_dot_product_attention")
        label = ve.broadcast_to(out.shape)
    except RuntimeError as exc:  # e.g. grouped-query heads that do not broadcast
        ctx.unknown(func, args, kwargs, out, f"attention with unmatched heads ({exc})")
        return
    if arg(args, kwargs, 6, "scale") is None:  # 1/sqrt(head dim) follows the pruned width
        ctx.table.mark(unique_slots(qe), INEXACT)
    ctx.set_label(out, label)


NAMES = {
    matmul: ("matmul", "__matmul__", "bmm"),
    sdpa: ("scaled_dot_product_attention",),
}
