"""Element-wise rules: one output element per input element (activations, casts, arithmetic).

- same:    output labels = labels of the first tensor argument (activations, dropout, casts, *_like)
- binary:  element-wise with broadcasting; equal channels are coupled (residual add, SE gate mul); a
           parameter of several dims (ViT's position embedding) takes the channels it meets
- setitem: x[idx] = v couples v's channels to the written region of x
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import TraceContext, tensors
from ..labels import along, compact, none_like, per_index, varies


def same(ctx: TraceContext, func, args, kwargs, out) -> None:
    src = tensors(args[:1]) or tensors(list(kwargs.values()))
    label = ctx.label(src[0])
    for o in tensors(out):
        ctx.set_label(o, label if label.shape == o.shape else label.expand(o.shape))


def _broadcast_dims(shape: torch.Size, out_shape: torch.Size) -> set[int]:
    pad = len(out_shape) - len(shape)
    return {d for d in range(len(out_shape)) if out_shape[d] > 1 and (d < pad or shape[d - pad] == 1)}


def binary(ctx: TraceContext, func, args, kwargs, out) -> None:
    outs = tensors(out)
    if not outs:
        return
    shape = outs[0].shape
    operands = [t for t in tensors(list(args) + list(kwargs.values())) if t.dim() > 0 or t.numel() > 1]
    _parameters_meet_channels(ctx, operands, shape)
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


def _parameters_meet_channels(ctx: TraceContext, operands: list[torch.Tensor], shape: torch.Size) -> None:
    """A parameter of several dims first read here, with an activation whose channels lie along one
    of its dims (`tokens + self.pos_embed`, (1, N, C) against (B, N, C)): that dim follows those
    channels, so the parameter is pruned with them instead of freezing them as one whole tensor."""
    for t in operands:
        name = ctx.param_name(t)
        if name is None or ctx.labelled(t) or name in ctx.weight_dims:
            continue
        big = [d for d, n in enumerate(t.shape) if n > 1]
        if len(big) < 2:  # one dim: `_param_label` lays it along its channels already
            continue
        pad = len(shape) - t.dim()
        for other in operands:
            if other is t or ctx.param_name(other) is not None or not ctx.has_slots(other):
                continue
            label = ctx.label(other).broadcast_to(shape)
            channel_dims = [d for d in range(len(shape))  # dims along which the units differ
                            if varies(label, d) and ctx.uniform_head(label, [d]) is None]
            if len(channel_dims) == 1 and channel_dims[0] - pad in big:
                dim = channel_dims[0] - pad
                slots = per_index(ctx.table, label, channel_dims[0])
                ctx.table.attach(name, dim, slots)
                ctx.set_label(t, along(slots, t.shape, dim))
                break


def setitem(ctx: TraceContext, func, args, kwargs, out) -> None:
    """x[idx] = v: the written region must keep x's channel structure; v's channels couple to it."""
    target, index, value = args[0], args[1], args[2]
    if isinstance(value, torch.Tensor) and ctx.has_slots(value):
        region = ctx.label(target)[index]
        ctx.couple(region, ctx.label(value).broadcast_to(region.shape))


# --- meta-device shortcuts: on meta even trivial ops run through Python reference decompositions
# (~0.1 ms each); their outputs are determined by the inputs' shapes, so the trace builds them.


def activation_on_meta(func, args: tuple, kwargs: dict) -> torch.Tensor:
    inplace = kwargs.get("inplace", False) or (func in (F.relu, F.relu6) and len(args) > 1 and args[1] is True)
    return args[0] if inplace else torch.empty_like(args[0])


def arithmetic_on_meta(func, args: tuple, kwargs: dict) -> torch.Tensor | None:
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    shape = torch.broadcast_shapes(tuple(getattr(a, "shape", ())), tuple(getattr(b, "shape", ())))
    return torch.empty(shape, dtype=torch.result_type(a, b), device="meta")


def inplace_on_meta(func, args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0]


NAMES = {
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
    setitem: ("__setitem__",),
}

META = {
    activation_on_meta: (
        F.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.elu, F.mish, F.leaky_relu,
        torch.relu, torch.sigmoid, torch.tanh, torch.Tensor.relu, torch.Tensor.sigmoid, torch.Tensor.tanh,
        F.dropout, F.dropout2d,
    ),
    arithmetic_on_meta: (
        torch.add, torch.sub, torch.mul, torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul, torch.Tensor.__add__,
        torch.Tensor.__radd__, torch.Tensor.__sub__, torch.Tensor.__rsub__, torch.Tensor.__mul__,
        torch.Tensor.__rmul__,
    ),
    inplace_on_meta: (
        torch.Tensor.add_, torch.Tensor.sub_, torch.Tensor.mul_, torch.Tensor.__iadd__, torch.Tensor.__isub__,
        torch.Tensor.__imul__,
    ),
}
PROPERTIES = {"data": same}  # x.data is a property read
