"""nn.MultiheadAttention: its channel rule (the module traced as one operation), its surgery fix-up,
and the module a pruned one becomes, in one place.

Channels, per head-dim index (uniform across heads, so the head count stays):
- the q and k projections' rows of index j in every head are one unit (q.k sums over them);
- the v projection's rows of index j in every head and the out projection's matching columns are one
  unit (each output head-channel goes through out_proj only);
- the inputs (query, key, value) are consumed by the projections' columns: with the packed
  `in_proj_weight` the three share its columns, so their channels are coupled;
- the output is out_proj's rows: fresh channels, as a linear layer's.
Removing head-dim channels changes torch's scale 1/sqrt(head_dim); a pruned module keeps the original
scale, so the pruned model computes exactly what the original computes with those channels masked.

torch's module requires query width = inner width = output width (`embed_dim`), which pruning breaks,
so the fix-up turns a pruned one into `PrunedMultiheadAttention`: the same parameters (names and
layout), the same call and outputs, widths read from its weights. A saved pruned model is rebuilt by
building the original and shrinking its tensors, which runs the same fix-up.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..context import TraceContext, arg
from ..labels import INEXACT, along, per_index, varies
from .layers import Layer

_OP = "nn.MultiheadAttention"


def head_dims(m: nn.MultiheadAttention) -> tuple[int, int, float]:
    """(q/k head dim, v head dim, score scale) of a module, pruned or not."""
    if isinstance(m, PrunedMultiheadAttention):
        return m.qk_head_dim, m.v_head_dim, m.scale
    return m.head_dim, m.head_dim, float(m.head_dim) ** -0.5


def multihead_attention(ctx: TraceContext, module: nn.MultiheadAttention, args: tuple, kwargs: dict,
                        out: Any) -> None:
    """The default: head-dim channels, uniform across heads (row h * d + j of a projection is unit j)."""
    heads = module.num_heads
    dqk, dv, _ = head_dims(module)
    qk, v = ctx.fresh(dqk), ctx.fresh(dv)
    _attention(ctx, module, args, kwargs, out, qk.repeat(heads), v.repeat(heads))


def whole_heads(ctx: TraceContext, module: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any) -> None:
    """Whole heads instead (rows h * d ... h * d + d - 1 of q, k and v, and out_proj's matching columns,
    are unit h), rewriting `num_heads`. Returned attention weights follow the heads (per head), or make
    them inexact (averaged over the heads, which removing one changes); a per-head attn_mask (N * heads,
    L, S) freezes them. For it: `rlpruner.graph.register_rule(nn.MultiheadAttention, whole_heads)` for
    the whole process (the search too), or `rules={nn.MultiheadAttention: whole_heads}` per call."""
    dqk, dv, _ = head_dims(module)
    heads = ctx.fresh(module.num_heads)
    rows_qk, rows_v = heads.repeat_interleave(dqk), heads.repeat_interleave(dv)
    if not _attention(ctx, module, args, kwargs, out, rows_qk, rows_v):
        return
    mask = arg(args, kwargs, 5, "attn_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 3:
        ctx.freeze(heads, f"{_OP} with a per-head attn_mask (its size counts the heads)")
        return
    ctx.size_attribute(module.num_heads, [heads], attr="num_heads")
    weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    if weights is None:
        return
    if arg(args, kwargs, 6, "average_attn_weights", True):  # the mean over the heads that remain
        ctx.table.mark(heads, INEXACT)
    else:  # one map per head: (N, heads, L, S)
        ctx.set_label(weights, along(heads, weights.shape, -3))


def _attention(ctx: TraceContext, module: nn.MultiheadAttention, args: tuple, kwargs: dict, out: Any,
               rows_qk: torch.Tensor, rows_v: torch.Tensor) -> bool:
    """The module's channels, with the units of its q/k rows and v rows given; False if frozen."""
    inputs = [arg(args, kwargs, i, name) for i, name in enumerate(("query", "key", "value"))]
    labels = [ctx.label(t) for t in inputs]
    if any(varies(label, d) for label in labels for d in range(label.dim() - 1)):
        ctx.unknown(module, args, kwargs, out, "attention with channels along the token or batch dim")
        return False
    ins = [per_index(ctx.table, label, -1) for label in labels]
    packed = module.in_proj_weight is not None
    if packed:  # one weight's columns read query, key and value alike
        ctx.couple(ins[0], ins[1], f"{_OP} (one input projection for query and key)")
        ctx.couple(ins[0], ins[2], f"{_OP} (one input projection for query and value)")
        facts = [(module.in_proj_weight, 1, ins[0]),
                 (module.in_proj_weight, 0, torch.cat([rows_qk, rows_qk, rows_v]))]
    else:
        weights = (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        facts = [(w, 1, s) for w, s in zip(weights, ins)]
        facts += [(w, 0, rows) for w, rows in zip(weights, (rows_qk, rows_qk, rows_v))]
    if module.in_proj_bias is not None:
        facts.append((module.in_proj_bias, 0, torch.cat([rows_qk, rows_qk, rows_v])))
    if module.bias_k is not None:
        facts += [(module.bias_k, 2, rows_qk), (module.bias_v, 2, rows_v)]
    wo, bo = module.out_proj.weight, module.out_proj.bias
    out_slots = ctx.fresh(wo.shape[0])
    facts += [(wo, 1, rows_v), (wo, 0, out_slots)] + ([(bo, 0, out_slots)] if bo is not None else [])
    if not all(ctx.param_name(t) is not None for t, _, _ in facts):
        ctx.unknown(module, args, kwargs, out, f"{_OP} whose projections are computed, not parameters")
        return False
    for t, dim, slots in facts:
        ctx.attach(t, dim, slots)
    tokens = [t.numel() // t.shape[-1] for t in inputs]
    if packed:  # FLOPs: the packed weight is applied to each input's tokens once (a third each)
        ctx.add_cost(ctx.param_name(module.in_proj_weight), sum(tokens) // 3)
    else:
        for w, n in zip(weights, tokens):
            ctx.add_cost(ctx.param_name(w), n)
    ctx.add_cost(ctx.param_name(wo), tokens[0])
    result = out[0] if isinstance(out, tuple) else out
    ctx.set_label(result, along(out_slots, result.shape, -1))
    return True


# --- the module a pruned one becomes ---------------------------------------------------------------


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose per-head widths, input widths and output width were pruned: the
    same parameters and call (query, key, value, key_padding_mask, need_weights, attn_mask,
    average_attn_weights, is_causal) and the same outputs; scores keep the original scale."""

    scale: float

    @property
    def v_head_dim(self) -> int:
        return self.out_proj.weight.shape[1] // self.num_heads

    @property
    def qk_head_dim(self) -> int:
        if self.in_proj_weight is not None:
            return (self.in_proj_weight.shape[0] - self.out_proj.weight.shape[1]) // (2 * self.num_heads)
        return self.q_proj_weight.shape[0] // self.num_heads

    @property
    def head_dim(self) -> int:  # torch's name for it
        return self.qk_head_dim

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, heads = query.shape[0], query.shape[1], self.num_heads
        dqk, dv = self.qk_head_dim, self.v_head_dim
        q, k, v = self._project(query, key, value)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, batch, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, batch, 1)])
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        q = q.reshape(length, batch * heads, dqk).transpose(0, 1)
        k = k.reshape(k.shape[0], batch * heads, dqk).transpose(0, 1)
        v = v.reshape(v.shape[0], batch * heads, dv).transpose(0, 1)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch * heads, 1, dqk)], dim=1)
            v = torch.cat([v, v.new_zeros(batch * heads, 1, dv)], dim=1)
            attn_mask, key_padding_mask = _pad(attn_mask), _pad(key_padding_mask)
        scores = torch.bmm(q * self.scale, k.transpose(1, 2))
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, q.dtype)
        weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        if self.training and self.dropout > 0.0:
            weights = F.dropout(weights, p=self.dropout)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(length * batch, heads * dv)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias).view(length, batch, -1)
        per_head = weights.view(batch, heads, length, -1)
        weights_out = (per_head.mean(dim=1) if average_attn_weights else per_head) if need_weights else None
        if not batched:
            return out.squeeze(1), None if weights_out is None else weights_out.squeeze(0)
        return (out.transpose(0, 1) if self.batch_first else out), weights_out

    def _project(self, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads, dqk, dv = self.num_heads, self.qk_head_dim, self.v_head_dim
        sizes = [heads * dqk, heads * dqk, heads * dv]
        biases = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(sizes)
        if self.in_proj_weight is not None:
            weights = self.in_proj_weight.split(sizes)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))  # type: ignore


def _pad(mask: torch.Tensor | None) -> torch.Tensor | None:
    return None if mask is None else F.pad(mask, (0, 1))


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int,
                   heads: int, dtype: torch.dtype) -> torch.Tensor | None:
    """torch's two masks as one float mask added to the scores (True in a bool mask: not attended)."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    total = None if attn_mask is None else additive(attn_mask)
    if total is not None and total.dim() == 2:
        total = total.unsqueeze(0)
    if key_padding_mask is not None:
        padding = additive(key_padding_mask).view(batch, 1, 1, -1).expand(-1, heads, -1, -1)
        padding = padding.reshape(batch * heads, 1, -1)
        total = padding if total is None else total + padding
    return total


def _fix(m: nn.MultiheadAttention) -> None:
    if not isinstance(m, PrunedMultiheadAttention):
        _, _, m.scale = head_dims(m)  # the original 1/sqrt(head_dim), kept
        m.__class__ = PrunedMultiheadAttention
        vars(m).pop("head_dim", None)  # now read from the weights
    # the head dims are read from the weights and `num_heads` (which whole-head pruning rewrites after
    # this fix-up); the attributes torch's module keeps are updated for whoever reads them
    if m.in_proj_weight is not None:
        m.kdim = m.vdim = m.in_proj_weight.shape[1]
    else:
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    m.embed_dim = m.out_proj.weight.shape[0]
    # torch's fused kernels (nn.TransformerEncoderLayer's fast path) assume the original layout and
    # check this flag first; this module reads `in_proj_weight is None` instead
    m._qkv_same_embed_dim = False


def _input_dims(m: nn.MultiheadAttention) -> frozenset[tuple[str, int]]:
    return frozenset((name, 1) for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
                     if getattr(m, name, None) is not None)


MODULES = {multihead_attention: (nn.MultiheadAttention,)}  # whole_heads: on request
LAYERS: tuple[tuple[type, Layer], ...] = ((nn.MultiheadAttention, Layer(_fix, _input_dims)),)
