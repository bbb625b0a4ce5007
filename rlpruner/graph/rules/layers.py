"""Layers that own per-channel parameters: their channel rules (over the functional calls) and their
surgery fix-ups (over the nn.Module types), side by side.

- conv / linear:             fresh output slots; input channels attached to the weight's in dim
- batch_norm / group_norm / layer_norm / prelu: per-channel parameters follow the input's channels

A fix-up updates a module's attributes (in_channels, num_features, groups...) after surgery sliced
its tensors; `input_dims` names the (attribute, dim) pairs that index the module's *input* channels
(the consumer side of a channel, which surgery slices but masking must leave alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..context import TraceContext, arg
from ..labels import INEXACT, along, per_index, unique_slots, varies
from .elementwise import same

Fixup = Callable[[nn.Module], None]


@dataclass(frozen=True)
class Layer:
    """What surgery and tests know about one nn.Module type."""

    fixup: Fixup
    input_dims: Callable[[nn.Module], frozenset[tuple[str, int]]] = lambda m: frozenset()


# --- channel rules --------------------------------------------------------------------------------


def conv(ctx: TraceContext, func, args, kwargs, out) -> None:
    x, weight = args[0], arg(args, kwargs, 1, "weight")
    bias = arg(args, kwargs, 2, "bias")
    transposed = "transpose" in getattr(func, "__name__", "")
    groups = int(arg(args, kwargs, 6, "groups", 1) or 1)  # index 6 in both conv and conv_transpose
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    wname, out_slots = ctx.param_name(weight), None
    if wname is None:
        source = ctx.source_weight(weight, out_dim)
        if source is None:
            ctx.unknown(func, args, kwargs, out, "convolution whose weight is computed, not a parameter")
            return
        wname, out_slots = source
    in_slots = per_index(ctx.table, ctx.label(x), 1)
    cout = out.shape[1]
    if out_slots is None:
        out_slots = ctx.fresh(cout)
    else:  # a weight standardised over its fan-in: removing an input channel changes the others' scale
        ctx.table.mark(in_slots, INEXACT)
    if groups == 1:
        ctx.table.attach(wname, in_dim, in_slots)
        ctx.table.attach(wname, out_dim, out_slots)
    else:
        _couple_conv_groups(ctx, in_slots, out_slots, groups)
        # whole groups are removed: the rows of the weight that index groups carry the facts
        ctx.table.attach(wname, 0, out_slots if not transposed else in_slots)
    if bias is not None:
        bname = ctx.param_name(bias)
        if bname is None:
            ctx.unknown(func, args, kwargs, out, "convolution whose bias is computed, not a parameter")
            return
        ctx.table.attach(bname, 0, out_slots)
    spatial = (x.numel() // x.shape[1]) if transposed else (out.numel() // cout)
    ctx.add_cost(wname, spatial, out_dim)
    ctx.set_label(out, along(out_slots, out.shape, 1))


def _couple_conv_groups(ctx: TraceContext, in_slots: torch.Tensor, out_slots: torch.Tensor, groups: int) -> None:
    """A grouped conv can only lose whole groups: a group's input and output channels go together."""
    cin_g, cout_g = len(in_slots) // groups, len(out_slots) // groups
    ins = in_slots.view(groups, cin_g)
    outs = out_slots.view(groups, cout_g)
    head = outs[:, :1]
    ctx.table.union_pairs(torch.stack([head.expand(groups, cout_g).reshape(-1), outs.reshape(-1)], 1))
    ctx.table.union_pairs(torch.stack([head.expand(groups, cin_g).reshape(-1), ins.reshape(-1)], 1))
    constant = (ins < 0).any(dim=1)  # a group fed by constants cannot be removed
    if constant.any():
        ctx.freeze(outs[constant].reshape(-1), "grouped convolution fed by constants")


def linear(ctx: TraceContext, func, args, kwargs, out) -> None:
    x, weight = args[0], arg(args, kwargs, 1, "weight")
    bias = arg(args, kwargs, 2, "bias")
    wname = ctx.param_name(weight)
    bname = None if bias is None else ctx.param_name(bias)
    if wname is None or (bias is not None and bname is None):
        ctx.unknown(func, args, kwargs, out, "linear layer whose weight is computed, not a parameter")
        return
    ctx.table.attach(wname, 1, per_index(ctx.table, ctx.label(x), -1))
    out_slots = ctx.fresh(out.shape[-1])
    ctx.table.attach(wname, 0, out_slots)
    if bname is not None:
        ctx.table.attach(bname, 0, out_slots)
    ctx.add_cost(wname, out.numel() // out.shape[-1])
    ctx.set_label(out, along(out_slots, out.shape, -1))


def _attach_channel_params(ctx: TraceContext, params: list[Any], slots: torch.Tensor) -> bool:
    """Per-channel parameters follow `slots`; a computed one (`gain * scale`) must carry channel slots
    itself, which are coupled to them. False when one is a constant (its size would not follow)."""
    for t in params:
        if not isinstance(t, torch.Tensor) or ctx.attach(t, 0, slots):
            continue
        if t.dim() != 1 or not ctx.has_slots(t):
            return False
        ctx.couple(ctx.label(t), slots, "a normalisation's computed affine parameters")
    return True


def batch_norm(ctx: TraceContext, func, args, kwargs, out) -> None:
    x = args[0]
    names = ("running_mean", "running_var", "weight", "bias")
    params = [arg(args, kwargs, i + 1, n) for i, n in enumerate(names)]
    if getattr(func, "__name__", "") == "instance_norm":
        params = [arg(args, kwargs, i, n) for i, n in zip((1, 2, 3, 4), names)]
    slots = per_index(ctx.table, ctx.label(x), 1)
    if not _attach_channel_params(ctx, params, slots):
        ctx.unknown(func, args, kwargs, out, "normalisation with computed statistics or affine parameters")
        return
    ctx.set_label(out, along(slots, out.shape, 1))


def group_norm(ctx: TraceContext, func, args, kwargs, out) -> None:
    x, num_groups = args[0], int(arg(args, kwargs, 1, "num_groups"))
    weight, bias = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    slots = per_index(ctx.table, ctx.label(x), 1)
    if weight is None:
        ctx.unknown(func, args, kwargs, out, "GroupNorm without affine parameters (group count cannot follow)")
        return
    if num_groups == 1:
        ctx.table.mark(slots, INEXACT)
    else:  # whole normalisation groups only, so the group count stays valid and exact
        per = slots.view(num_groups, -1)
        ctx.table.union_pairs(torch.stack([per[:, :1].expand_as(per).reshape(-1), per.reshape(-1)], 1))
    if not _attach_channel_params(ctx, [weight, bias], slots):
        ctx.unknown(func, args, kwargs, out, "GroupNorm with computed affine parameters")
        return
    ctx.set_label(out, along(slots, out.shape, 1))


def layer_norm(ctx: TraceContext, func, args, kwargs, out) -> None:
    x, shape = args[0], tuple(arg(args, kwargs, 1, "normalized_shape"))
    weight, bias = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    label = ctx.label(x)
    dim = x.dim() - len(shape)
    if any(varies(label, d) for d in range(dim + 1, x.dim())):
        ctx.unknown(func, args, kwargs, out, "LayerNorm over several channel dims")
        return
    if weight is None and varies(label, dim):
        ctx.unknown(func, args, kwargs, out, "LayerNorm without affine parameters (its shape cannot follow)")
        return
    if varies(label, dim):
        ctx.table.mark(unique_slots(label), INEXACT)
    slots = per_index(ctx.table, label, dim)
    if not _attach_channel_params(ctx, [weight, bias], slots):
        ctx.unknown(func, args, kwargs, out, "LayerNorm with computed affine parameters")
        return
    ctx.set_label(out, along(slots, out.shape, dim) if len(shape) == 1 else label)


def prelu(ctx: TraceContext, func, args, kwargs, out) -> None:
    x, weight = args[0], arg(args, kwargs, 1, "weight")
    if weight.numel() == 1:
        same(ctx, func, args, kwargs, out)
        return
    slots = per_index(ctx.table, ctx.label(x), 1)
    if not _attach_channel_params(ctx, [weight], slots):
        ctx.unknown(func, args, kwargs, out, "PReLU with a computed weight")
        return
    ctx.set_label(out, along(slots, out.shape, 1))


def norm_on_meta(func, args: tuple, kwargs: dict) -> torch.Tensor:
    return torch.empty_like(args[0])


NAMES = {
    conv: ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    linear: ("linear",),
    batch_norm: ("batch_norm", "instance_norm"),
    group_norm: ("group_norm",),
    layer_norm: ("layer_norm",),
    prelu: ("prelu",),
}

META = {norm_on_meta: (F.batch_norm, F.instance_norm, F.group_norm, F.layer_norm)}


# --- surgery fix-ups and input dims, per module type ---------------------------------------------


def _fix_conv(m: nn.modules.conv._ConvNd) -> None:
    w = m.weight.shape
    if m.transposed:  # weight: (in, out / groups, *k)
        if m.groups > 1:
            m.groups = w[0] // (m.in_channels // m.groups)
        m.in_channels, m.out_channels = w[0], w[1] * m.groups
    else:  # weight: (out, in / groups, *k)
        if m.groups > 1:
            m.groups = w[0] // (m.out_channels // m.groups)
        m.out_channels, m.in_channels = w[0], w[1] * m.groups


def _conv_input_dims(m: nn.modules.conv._ConvNd) -> frozenset[tuple[str, int]]:
    if m.transposed:  # a grouped transposed conv's dim 0 indexes whole groups (producer side too)
        return frozenset({("weight", 0)}) if m.groups == 1 else frozenset()
    return frozenset({("weight", 1)})


def _fix_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_batchnorm(m: nn.modules.batchnorm._NormBase) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    m.num_features = ref.shape[0]


def _fix_groupnorm(m: nn.GroupNorm) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = m.weight.shape[0]
    if m.num_groups > 1:  # whole groups went; one group (a LayerNorm over C, H, W) stays one group
        m.num_groups = m.num_channels // per_group


def _fix_layernorm(m: nn.LayerNorm) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _fix_prelu(m: nn.PReLU) -> None:
    m.num_parameters = m.weight.numel()


# First isinstance match wins (a module type's base classes come after it).
LAYERS: tuple[tuple[type, Layer], ...] = (
    (nn.modules.conv._ConvNd, Layer(_fix_conv, _conv_input_dims)),
    (nn.Linear, Layer(_fix_linear, lambda m: frozenset({("weight", 1)}))),
    (nn.modules.batchnorm._NormBase, Layer(_fix_batchnorm)),
    (nn.GroupNorm, Layer(_fix_groupnorm)),
    (nn.LayerNorm, Layer(_fix_layernorm)),
    (nn.PReLU, Layer(_fix_prelu)),
)
