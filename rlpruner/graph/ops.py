"""THE table of channel rules: how each torch operation maps channel labels.

Every handler receives the trace context, the function, its arguments and its (already computed)
output, and sets the labels of the output. Kinds of rules:

- same:     output labels = labels of the first tensor argument (activations, dropout, casts, *_like)
- binary:   element-wise with broadcasting; equal channels are coupled (residual add, SE gate mul)
- move:     data movement; the op itself is applied to the label tensor (view, permute, cat, split,
            channel shuffle, slicing...), with the constraints reshapes and concatenations impose
- channel:  per-channel op on dim 1 that may change spatial extent (pooling, interpolation, pad)
- reduce:   reductions; over uniform dims they pass labels, across channels they mark INEXACT
- mix:      same shape but mixes along a dim (softmax, normalize): INEXACT when that dim is channels
- conv / linear / batch_norm / group_norm / layer_norm / prelu: layers that own parameters

Anything not in the table and touching channel labels is *unknown*: the channels it touches are
frozen and reported (or, in strict mode, an UnsupportedOperation is raised).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

from .labels import FROZEN, INEXACT, NONE, along, compact, none_like, per_index, recompact, unique_slots, varies

if TYPE_CHECKING:  # pragma: no cover
    from .trace import TraceContext

Handler = Callable[["TraceContext", Any, tuple, dict, Any], None]


# --- argument helpers --------------------------------------------------------------------------


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


# --- same / create ------------------------------------------------------------------------------


def same(ctx: "TraceContext", func, args, kwargs, out) -> None:
    src = _tensors(args[:1]) or _tensors(list(kwargs.values()))
    label = ctx.label(src[0])
    for o in _tensors(out):
        ctx.set_label(o, label if label.shape == o.shape else label.expand(o.shape))


# --- binary -----------------------------------------------------------------------------------


def _broadcast_dims(shape: torch.Size, out_shape: torch.Size) -> set[int]:
    pad = len(out_shape) - len(shape)
    return {d for d in range(len(out_shape)) if out_shape[d] > 1 and (d < pad or shape[d - pad] == 1)}


def binary(ctx: "TraceContext", func, args, kwargs, out) -> None:
    outs = _tensors(out)
    if not outs:
        return
    shape = outs[0].shape
    operands = [t for t in _tensors(list(args) + list(kwargs.values())) if t.dim() > 0 or t.numel() > 1]
    labeled = [(t, ctx.label(t)) for t in operands]
    labeled = [(t, lab.broadcast_to(shape), _broadcast_dims(t.shape, shape)) for t, lab in labeled]
    real = [x for x in labeled if ctx.has_slots(x[0])]
    if not real:
        for o in outs:
            ctx.set_label(o, none_like(shape))
        return
    primary = max(real, key=lambda x: len(shape) - len(x[2]))
    _, plabel, pbdims = primary
    result = plabel
    for t, label, bdims in labeled:
        if label is plabel:
            continue
        p_varies = {d for d in bdims if varies(plabel, d)}
        o_varies = {d for d in pbdims if varies(label, d)}
        if p_varies or o_varies:
            continue  # a broadcast modulator (e.g. spatial attention map): not a channel coupling
        ctx.couple(plabel, label)
        if bool((compact(result) < 0).any()):
            result = torch.where(result >= 0, result, label)
    for o in outs:
        ctx.set_label(o, result)


# --- move (apply the op to the labels) ----------------------------------------------------------

_LABEL_EQUIVALENT = {torch.Tensor.view: torch.Tensor.reshape}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"}


def _reshape_groups(src: list[int], dst: list[int]) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of source and destination dims with equal products (size-1 dims ignored)."""
    s = [i for i, n in enumerate(src) if n != 1]
    d = [j for j, n in enumerate(dst) if n != 1]
    groups, i, j = [], 0, 0
    while i < len(s) and j < len(d):
        gs, gd = [s[i]], [d[j]]
        ps, pd = src[s[i]], dst[d[j]]
        i, j = i + 1, j + 1
        while ps != pd:
            if ps < pd and i < len(s):
                gs.append(s[i]); ps *= src[s[i]]; i += 1
            elif pd < ps and j < len(d):
                gd.append(d[j]); pd *= dst[d[j]]; j += 1
            else:
                break
        groups.append((gs, gd))
    return groups


def _reshape_constraints(ctx: "TraceContext", label_in: torch.Tensor, label_out: torch.Tensor) -> bool:
    """Splitting a channel dim into (outer, inner) keeps the outer factor fixed (groups, heads):
    slots sharing an inner index must then go together. Returns False if the reshape is too
    irregular to reason about (caller freezes)."""
    for gs, gd in _reshape_groups(list(label_in.shape), list(label_out.shape)):
        if len(gd) <= 1 or not any(varies(label_in, dim) for dim in gs):
            continue
        if len(gs) > 1:
            return False
        outer = gd[0]
        first = label_out.narrow(outer, 0, 1)
        for k in range(1, label_out.shape[outer]):
            ctx.couple(first, label_out.narrow(outer, k, 1))
    return True


# Pieces proportional to the dim (chunk) scale with pruning when equal indices go together;
# fixed sizes/indices (split sizes, slicing bounds, shifts) do not, so the channels they touch freeze.
_PROPORTIONAL = {"chunk"}
_FIXED_SIZES = {"split", "split_with_sizes", "hsplit", "vsplit", "dsplit", "unbind", "roll"}
_SELECTIONS = {"__getitem__", "narrow", "select", "masked_select", "diagonal", "tensor_split", "unfold"}
_INDEXED = {"index_select", "gather", "take_along_dim"}  # hard-coded index tensors along a dim


def _freeze_indexed(ctx: "TraceContext", func, args, kwargs, label_in: torch.Tensor, outs) -> None:
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None or varies(label_in, dim % label_in.dim()):
        for lab in outs:
            ctx.table.mark(unique_slots(lab), FROZEN)


def move(ctx: "TraceContext", func, args, kwargs, out) -> None:
    name = getattr(func, "__name__", "")
    source = args[0]
    if isinstance(source, (list, tuple)):  # cat / stack / concat
        labels = [ctx.label(t) for t in source]
        dim = _arg(args, kwargs, 1, "dim", 0)
        _concat_constraints(ctx, labels, dim, stacked=name == "stack")
        if name in ("cat", "concat", "concatenate") and labels:
            _cat_compact(ctx, labels, dim, out)
            return
        label_args = (type(source)(labels),) + tuple(args[1:])
    else:
        label_args = (ctx.label(source),) + tuple(args[1:])
    label_func = _LABEL_EQUIVALENT.get(func, func)
    try:
        label_out = label_func(*label_args, **kwargs)
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. not defined for int tensors
        ctx.unknown(func, args, kwargs, out, f"data movement that cannot be replayed on labels ({exc})")
        return
    if name in _RESHAPES and not _reshape_constraints(ctx, label_args[0], label_out):
        ctx.unknown(func, args, kwargs, out, "reshape that regroups several channel dims")
        return
    outs = _tensors(label_out)
    if name in _PROPORTIONAL:
        _couple_pieces(ctx, outs)
    elif name in _INDEXED and any(varies(label_args[0], d) for d in range(label_args[0].dim())):
        _freeze_indexed(ctx, func, args, kwargs, label_args[0], outs)
    elif name in _FIXED_SIZES | _SELECTIONS and _changes_channels(label_args[0], outs, name in _FIXED_SIZES):
        for lab in outs:
            ctx.table.mark(unique_slots(lab), FROZEN)
    for o, lab in zip(_tensors(out), outs):
        ctx.set_label(o, recompact(lab))


def _cat_compact(ctx: "TraceContext", labels: list[torch.Tensor], dim: int, out: torch.Tensor) -> None:
    """cat of labels that are all broadcast along some dims: concatenate without materialising them."""
    dim = dim % labels[0].dim()
    flat = [
        e for e in range(labels[0].dim())
        if e != dim and all(lab.stride(e) == 0 or lab.shape[e] == 1 for lab in labels)
    ]
    index = tuple(slice(0, 1) if e in flat else slice(None) for e in range(labels[0].dim()))
    ctx.set_label(out, torch.cat([lab[index] for lab in labels], dim=dim).expand(out.shape))


def _couple_pieces(ctx: "TraceContext", pieces: list[torch.Tensor]) -> None:
    if len({tuple(p.shape) for p in pieces}) > 1:  # uneven pieces cannot stay proportional
        for p in pieces:
            ctx.table.mark(unique_slots(p), FROZEN)
        return
    for p in pieces[1:]:
        ctx.couple(pieces[0], p)


def _changes_channels(label_in: torch.Tensor, outs: list[torch.Tensor], fixed_sizes: bool) -> bool:
    """Whether a selection/split with hard-coded indices cuts through dims that carry channels."""
    carries = [d for d in range(label_in.dim()) if varies(label_in, d)]
    if not carries:
        return False
    if fixed_sizes:
        return len(outs) > 1 or any(o.shape != label_in.shape for o in outs)
    before = set(unique_slots(label_in).tolist())
    after = set().union(*(set(unique_slots(o).tolist()) for o in outs)) if outs else set()
    return before != after


def _concat_constraints(ctx: "TraceContext", labels: list[torch.Tensor], dim: int, stacked: bool) -> None:
    """All dims but the concatenation dim must match: equal indices there are coupled."""
    if len(labels) < 2:
        return
    nd = labels[0].dim()
    dim = dim % (nd + 1 if stacked else nd)
    others = [d for d in range(nd) if stacked or d != dim]
    fixed = [d for d in others if any(varies(lab, d) for lab in labels)]
    if not fixed:
        return
    probes = []
    for lab in labels:
        index = [slice(None) if d in fixed else slice(0, 1) for d in range(nd)]
        probes.append(lab[tuple(index)])
    for p in probes[1:]:
        ctx.couple(probes[0], p)


def setitem(ctx: "TraceContext", func, args, kwargs, out) -> None:
    """x[idx] = v: the written region must keep x's channel structure; v's channels couple to it."""
    target, index, value = args[0], args[1], args[2]
    if isinstance(value, torch.Tensor) and ctx.has_slots(value):
        region = ctx.label(target)[index]
        ctx.couple(region, ctx.label(value).broadcast_to(region.shape))


# --- per-channel ops (dim 1) ---------------------------------------------------------------------


def channel(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x = args[0]
    name = getattr(func, "__name__", "")
    if name == "pad":
        pad = _arg(args, kwargs, 1, "pad")
        if len(pad) > 2 * (x.dim() - 2):  # pads the channel dim with a fixed number of constants
            move_pad(ctx, func, args, kwargs, out)
            return
    if x.dim() < 2:
        same(ctx, func, args, kwargs, out)
        return
    slots = per_index(ctx.table, ctx.label(x), 1)
    for o in _tensors(out):
        ctx.set_label(o, along(slots, o.shape, 1))


def move_pad(ctx: "TraceContext", func, args, kwargs, out) -> None:
    pad = _arg(args, kwargs, 1, "pad")
    label = F.pad(ctx.label(args[0]).contiguous(), pad, mode="constant", value=NONE)
    ctx.set_label(out, label)


# --- reductions and mixing ------------------------------------------------------------------------


def _reduce_dims(x: torch.Tensor, args, kwargs, func) -> tuple[list[int], bool]:
    dim = _arg(args, kwargs, 1, "dim")
    if getattr(func, "__name__", "") == "norm":
        dim = _arg(args, kwargs, 2, "dim")
    keepdim = bool(_arg(args, kwargs, 2 if getattr(func, "__name__", "") != "norm" else 3, "keepdim", False))
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim())), keepdim
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % max(x.dim(), 1) for d in dims), keepdim


def reduce(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b) is element-wise
        binary(ctx, func, args, kwargs, out)
        return
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return
    if isinstance(_arg(args, kwargs, 1, "dim"), str):
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
        for o in _tensors(out):
            ctx.set_label(o, none_like(o.shape))
        return
    if not keepdim:
        head = head.reshape([n for d, n in enumerate(head.shape) if d not in dims])
    for o in _tensors(out):
        ctx.set_label(o, head.expand(o.shape) if head.dim() == o.dim() else none_like(o.shape))


def mix(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if getattr(func, "__name__", "") == "normalize":
        dim = _arg(args, kwargs, 2, "dim", 1)
    label = ctx.label(x)
    if dim is None or varies(label, dim % x.dim()):
        ctx.table.mark(unique_slots(label), INEXACT)
    for o in _tensors(out):
        ctx.set_label(o, label)


# --- parametrised layers ------------------------------------------------------------------------


def conv(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    bias = _arg(args, kwargs, 2, "bias")
    transposed = "transpose" in getattr(func, "__name__", "")
    groups = int(_arg(args, kwargs, 6, "groups", 1) or 1)  # index 6 in both conv and conv_transpose
    wname = ctx.param_name(weight)
    if wname is None:
        ctx.unknown(func, args, kwargs, out, "convolution whose weight is computed, not a parameter")
        return
    in_slots = per_index(ctx.table, ctx.label(x), 1)
    cout = out.shape[1]
    out_slots = ctx.fresh(cout)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
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
    ctx.add_cost(wname, spatial)
    ctx.set_label(out, along(out_slots, out.shape, 1))


def _couple_conv_groups(ctx: "TraceContext", in_slots: torch.Tensor, out_slots: torch.Tensor, groups: int) -> None:
    """A grouped conv can only lose whole groups: a group's input and output channels go together."""
    cin_g, cout_g = len(in_slots) // groups, len(out_slots) // groups
    ins = in_slots.view(groups, cin_g)
    outs = out_slots.view(groups, cout_g)
    head = outs[:, :1]
    ctx.table.union_pairs(torch.stack([head.expand(groups, cout_g).reshape(-1), outs.reshape(-1)], 1))
    ctx.table.union_pairs(torch.stack([head.expand(groups, cin_g).reshape(-1), ins.reshape(-1)], 1))
    constant = (ins < 0).any(dim=1)  # a group fed by constants cannot be removed
    if constant.any():
        ctx.table.mark(outs[constant].reshape(-1), FROZEN)


def linear(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    bias = _arg(args, kwargs, 2, "bias")
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


def _attach_channel_params(ctx: "TraceContext", tensors: list[Any], slots: torch.Tensor) -> bool:
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor):
            continue
        name = ctx.param_name(t)
        if name is None:
            return False
        ctx.table.attach(name, 0, slots)
    return True


def batch_norm(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x = args[0]
    names = ("running_mean", "running_var", "weight", "bias")
    tensors = [_arg(args, kwargs, i + 1, n) for i, n in enumerate(names)]
    if getattr(func, "__name__", "") == "instance_norm":
        tensors = [_arg(args, kwargs, i, n) for i, n in zip((1, 2, 3, 4), names)]
    slots = per_index(ctx.table, ctx.label(x), 1)
    if not _attach_channel_params(ctx, tensors, slots):
        ctx.unknown(func, args, kwargs, out, "normalisation with computed statistics or affine parameters")
        return
    ctx.set_label(out, along(slots, out.shape, 1))


def group_norm(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x, num_groups = args[0], int(_arg(args, kwargs, 1, "num_groups"))
    weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
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


def layer_norm(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x, shape = args[0], tuple(_arg(args, kwargs, 1, "normalized_shape"))
    weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
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


def prelu(ctx: "TraceContext", func, args, kwargs, out) -> None:
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    if weight.numel() == 1:
        same(ctx, func, args, kwargs, out)
        return
    slots = per_index(ctx.table, ctx.label(x), 1)
    if not _attach_channel_params(ctx, [weight], slots):
        ctx.unknown(func, args, kwargs, out, "PReLU with a computed weight")
        return
    ctx.set_label(out, along(slots, out.shape, 1))


# --- the table ----------------------------------------------------------------------------------

_NAMESPACES = (torch, torch.Tensor, F, torch.special)

_RULES: dict[Handler, tuple[str, ...]] = {
    same: (
        "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu",
        "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "mish", "leaky_relu", "leaky_relu_",
        "elu", "elu_", "selu", "celu", "softplus", "softsign", "logsigmoid", "threshold", "rrelu", "expit",
        "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
        "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "abs", "abs_", "neg", "__neg__", "exp", "log", "sqrt",
        "rsqrt", "square", "reciprocal", "sign", "floor", "ceil", "round", "erf", "sin", "cos", "nan_to_num",
        "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu",
        "cuda", "requires_grad_", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
        "zero_", "fill_", "__abs__", "__invert__", "logical_not", "isnan", "isfinite", "bool", "long", "int",
    ),
    binary: (
        "add", "add_", "__add__", "__iadd__", "__radd__", "sub", "sub_", "__sub__", "__isub__", "__rsub__", "rsub",
        "mul", "mul_", "__mul__", "__imul__", "__rmul__", "div", "div_", "true_divide", "__truediv__",
        "__itruediv__", "__rtruediv__", "__div__", "__rdiv__", "floor_divide", "__floordiv__", "pow", "pow_",
        "__pow__", "__rpow__", "maximum", "minimum", "fmax", "fmin", "where", "addcmul", "addcdiv", "lerp",
        "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__",
        "__and__", "__or__", "__xor__", "logical_and", "logical_or", "masked_fill", "masked_fill_", "copysign",
        "atan2", "hypot", "remainder", "fmod", "__mod__", "sub_", "add_", "xlogy",
    ),
    move: (
        "view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "permute", "transpose", "transpose_",
        "t", "swapaxes", "swapdims", "movedim", "moveaxis", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_",
        "expand", "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave", "cat", "concat",
        "concatenate", "stack", "split", "chunk", "tensor_split", "unbind", "narrow", "select", "__getitem__",
        "index_select", "gather", "take_along_dim", "flip", "fliplr", "flipud", "roll", "rot90", "pixel_shuffle",
        "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "unfold", "split_with_sizes", "hsplit",
        "vsplit", "dsplit", "hstack", "vstack", "masked_select", "diagonal",
    ),
    channel: (
        "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "fractional_max_pool2d", "interpolate", "upsample",
        "upsample_nearest", "upsample_bilinear", "pad", "max_pool1d_with_indices", "max_pool2d_with_indices",
        "grid_sample",
    ),
    reduce: (
        "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "argmax", "argmin",
        "nansum", "nanmean", "median", "all", "any", "count_nonzero",
    ),
    mix: ("softmax", "log_softmax", "softmin", "normalize", "cumsum", "cumprod", "local_response_norm"),
    conv: ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    linear: ("linear",),
    batch_norm: ("batch_norm", "instance_norm"),
    group_norm: ("group_norm",),
    layer_norm: ("layer_norm",),
    prelu: ("prelu",),
    setitem: ("__setitem__",),
}


def build_table() -> dict[Any, Handler]:
    """func object -> handler, resolving every name in every namespace where it exists."""
    table: dict[Any, Handler] = {}
    for handler, names in _RULES.items():
        for name in names:
            for ns in _NAMESPACES:
                func = getattr(ns, name, None)
                if func is not None and func not in table:
                    table[func] = handler
    for prop, handler in (("T", move), ("mT", move), ("H", move), ("mH", move), ("data", same)):
        table[getattr(torch.Tensor, prop).__get__] = handler  # x.T, x.data ... are property reads
    return table
