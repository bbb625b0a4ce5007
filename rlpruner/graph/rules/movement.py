"""Data-movement rules: the op itself is applied to the label tensor (view, permute, cat, split,
channel shuffle, slicing...), plus the constraints reshapes and concatenations impose.

- move:    replay on labels; hard-coded sizes or indices that cut through channels freeze them
- channel: per-channel op on dim 1 that may change spatial extent (pooling, interpolation, pad)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import TraceContext, arg, op_name, tensors
from ..labels import NONE, along, per_index, recompact, unique_slots, varies
from .elementwise import same

_LABEL_EQUIVALENT = {torch.Tensor.view: torch.Tensor.reshape}
_RESHAPES = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"}

# Pieces proportional to the dim (chunk) scale with pruning when equal indices go together;
# fixed sizes/indices (split sizes, slicing bounds, shifts) do not, so the channels they touch freeze.
_PROPORTIONAL = {"chunk"}
_SPLITS = {"split", "split_with_sizes"}
_FIXED_SIZES = {"hsplit", "vsplit", "dsplit", "unbind"}
_SELECTIONS = {"__getitem__", "narrow", "select", "masked_select", "diagonal", "tensor_split", "unfold"}
_INDEXED = {"index_select", "gather", "take_along_dim"}  # hard-coded index tensors along a dim


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


def _reshape_constraints(ctx: TraceContext, label_in: torch.Tensor, label_out: torch.Tensor) -> bool:
    """Splitting a channel dim into (outer..., inner) keeps the outer factors fixed (groups, heads,
    q/k/v): slots sharing an inner index must then go together. Returns False if the reshape is too
    irregular to reason about (caller freezes)."""
    for gs, gd in _reshape_groups(list(label_in.shape), list(label_out.shape)):
        if len(gd) <= 1 or not any(varies(label_in, dim) for dim in gs):
            continue
        if len(gs) > 1:
            return False
        for outer in gd[:-1]:
            first = label_out.narrow(outer, 0, 1)
            for k in range(1, label_out.shape[outer]):
                ctx.couple(first, label_out.narrow(outer, k, 1), "a reshape")
    return True


def _positions(label: torch.Tensor, dim: int) -> torch.Tensor:
    """The slot of every position along `dim` (at index 0 of every other dim)."""
    return label.movedim(dim, 0).reshape(label.shape[dim], -1)[:, 0]


def _coupled_along(ctx: TraceContext, label: torch.Tensor, dim: int) -> bool:
    """Whether every position along `dim` belongs to the same units (the extent of `dim` cannot change)."""
    return not varies(label, dim) or ctx.uniform_head(label, [dim]) is not None


def _rolls_channels(ctx: TraceContext, label: torch.Tensor, dims) -> bool:
    """A roll wraps a different channel around once channels are removed, unless the dim holds one unit."""
    dims = range(label.dim()) if dims is None else [dims] if isinstance(dims, int) else dims
    return any(not _coupled_along(ctx, label, d % label.dim()) for d in dims)


def _sizes_given(args: tuple, kwargs: dict) -> list:
    shape = kwargs.get("shape", kwargs.get("size", args[1:]))
    if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size)):
        shape = shape[0]
    return list(shape)


def _record_reshape_sizes(ctx: TraceContext, func, args, kwargs, label_out: torch.Tensor) -> None:
    """A reshape to a literal extent along a dim whose channels can be pruned (`view(B, N, H, self.head_dim)`):
    the module attribute holding that extent must follow the pruning."""
    if getattr(func, "__name__", "") not in ("view", "reshape"):
        return
    sizes = _sizes_given(args, kwargs)
    if len(sizes) != label_out.dim():
        return
    channel_dims = [d for d, size in enumerate(sizes)
                    if type(size) is int and size > 1 and not _coupled_along(ctx, label_out, d)]
    whole = [int(size) for size in sizes] if all(type(size) is int and size >= 1 for size in sizes) else None
    if channel_dims and whole is not None and ctx.size_holder(whole) is not None:
        # the whole shape held by one attribute (`view(self.shape)`, a layer scale's (C, 1, 1))
        pieces = [_positions(label_out, d) if d in channel_dims else torch.full((size,), NONE)
                  for d, size in enumerate(whole)]
        ctx.size_attribute(whole, pieces)
        return
    for dim in channel_dims:
        ctx.size_attribute(sizes[dim], [_positions(label_out, dim)])


def _freeze_indexed(ctx: TraceContext, func, args, kwargs, label_in: torch.Tensor, outs) -> None:
    dim = arg(args, kwargs, 1, "dim")
    if dim is None or varies(label_in, dim % label_in.dim()):
        for lab in outs:
            ctx.freeze(unique_slots(lab), f"{op_name(func)} with hard-coded indices")


def move(ctx: TraceContext, func, args, kwargs, out) -> None:
    name = getattr(func, "__name__", "")
    source = args[0]
    if isinstance(source, (list, tuple)):  # cat / stack / concat
        labels = [ctx.label(t) for t in source]
        dim = arg(args, kwargs, 1, "dim", 0)
        _concat_constraints(ctx, labels, dim, stacked=name == "stack")
        if name in ("cat", "concat", "concatenate") and labels:
            _cat_compact(ctx, labels, dim, out)
            return
        label_args = (type(source)(labels),) + tuple(args[1:])
    else:
        if any(t.device.type == "meta" for t in tensors(list(args[1:]) + list(kwargs.values()))):
            # indices held in a tensor (table[index]) have no values on the meta device: trace for real
            raise RuntimeError(f"{op_name(func)} with tensor indices needs their values")
        label_args = (ctx.label(source),) + tuple(args[1:])
    label_func = _LABEL_EQUIVALENT.get(func, func)
    try:
        label_out = label_func(*label_args, **kwargs)
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. not defined for int tensors
        ctx.unknown(func, args, kwargs, out, f"data movement that cannot be replayed on labels ({exc})")
        return
    if name in _RESHAPES:
        if not _reshape_constraints(ctx, label_args[0], label_out):
            ctx.unknown(func, args, kwargs, out, "reshape that regroups several channel dims")
            return
        _record_reshape_sizes(ctx, func, args, kwargs, label_out)
    outs = tensors(label_out)
    if name in _SPLITS:
        _split(ctx, func, args, kwargs, label_args[0], outs)
    elif name == "roll" and _rolls_channels(ctx, label_args[0], arg(args, kwargs, 2, "dims")):
        ctx.freeze(unique_slots(label_args[0]), f"{op_name(func)} along a channel dim")  # wrap-around moves
    elif name == "unbind" and _coupled_along(ctx, label_args[0], arg(args, kwargs, 1, "dim", 0)):
        pass  # q, k, v = qkv.unbind(0) after a reshape that coupled them: every piece keeps its units
    elif name in _PROPORTIONAL:
        _couple_pieces(ctx, outs)
    elif name in _INDEXED and any(varies(label_args[0], d) for d in range(label_args[0].dim())):
        _freeze_indexed(ctx, func, args, kwargs, label_args[0], outs)
    elif name in _FIXED_SIZES | _SELECTIONS and _changes_channels(label_args[0], outs, name in _FIXED_SIZES):
        kind = "hard-coded sizes" if name in _FIXED_SIZES else "hard-coded indices"
        for lab in outs:
            ctx.freeze(unique_slots(lab), f"{op_name(func)} with {kind}")
    for o, lab in zip(tensors(out), outs):
        ctx.set_label(o, recompact(lab))


def _split(ctx: TraceContext, func, args, kwargs, label_in: torch.Tensor, outs: list[torch.Tensor]) -> None:
    """split(x, sizes, dim): nothing to do along a dim without channels. Equal int-sized pieces
    stay proportional (coupled, like chunk); sizes held by a module attribute (`self.splits`) are
    rewritten by surgery, and so is the attribute holding the total an equal size is computed from
    (`self.in_channels // self.num_paths`, `self.expand_chs // 2`) when no attribute holds the size
    itself; any other hard-coded sizes freeze the channels they cut (a size computed otherwise is
    caught by the pruned model's forward check, which leaves its group whole)."""
    dim = arg(args, kwargs, 2, "dim", 0) % label_in.dim()
    if len(outs) <= 1 or _coupled_along(ctx, label_in, dim):
        return
    size = arg(args, kwargs, 1, "split_size_or_sections", arg(args, kwargs, 1, "split_size"))
    if size is None:
        size = kwargs.get("split_sizes")
    if type(size) is int and label_in.shape[dim] % size == 0:
        _couple_pieces(ctx, outs)
        if not ctx.size_attribute(size, [_positions(outs[0], dim)]):
            ctx.size_attribute(label_in.shape[dim], [_positions(label_in, dim)])
        return
    if isinstance(size, (list, tuple)):
        pieces = [_positions(o, dim) for o in outs]
        if ctx.size_attribute(list(size), pieces) or _sizes_held_one_by_one(ctx, size, outs, pieces):
            return
    for lab in outs:
        ctx.freeze(unique_slots(lab), f"{op_name(func)} with hard-coded sizes")


def _sizes_held_one_by_one(ctx: TraceContext, sizes, outs: list[torch.Tensor], pieces: list[torch.Tensor]) -> bool:
    """`split(x, [self.key_dim, self.key_dim, self.val_dim])` (LeViT): every size held by one attribute.
    Pieces counted by the same attribute must keep equal counts, so they are coupled (q and k are anyway)."""
    holders = [ctx.size_holder(int(n)) if type(n) is int else None for n in sizes]
    if None in holders:
        return False
    first: dict[str, int] = {}
    for i, name in enumerate(holders):
        if name in first:
            ctx.couple(outs[first[name]], outs[i], f"split sizes counted by one attribute ({name})")
        else:
            first[name] = i
            ctx.size_attribute(int(sizes[i]), [pieces[i]])
    return True


def _cat_compact(ctx: TraceContext, labels: list[torch.Tensor], dim: int, out: torch.Tensor) -> None:
    """cat of labels that are all broadcast along some dims: concatenate without materialising them."""
    dim = dim % labels[0].dim()
    flat = [
        e for e in range(labels[0].dim())
        if e != dim and all(lab.stride(e) == 0 or lab.shape[e] == 1 for lab in labels)
    ]
    index = tuple(slice(0, 1) if e in flat else slice(None) for e in range(labels[0].dim()))
    ctx.set_label(out, torch.cat([lab[index] for lab in labels], dim=dim).expand(out.shape))


def _couple_pieces(ctx: TraceContext, pieces: list[torch.Tensor]) -> None:
    if len({tuple(p.shape) for p in pieces}) > 1:  # uneven pieces cannot stay proportional
        for p in pieces:
            ctx.freeze(unique_slots(p), "chunk into uneven pieces")
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


def _concat_constraints(ctx: TraceContext, labels: list[torch.Tensor], dim: int, stacked: bool) -> None:
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


def channel(ctx: TraceContext, func, args, kwargs, out) -> None:
    x = args[0]
    name = getattr(func, "__name__", "")
    if name == "pad":
        pad = arg(args, kwargs, 1, "pad")
        if len(pad) > 2 * (x.dim() - 2):  # pads the channel dim with a fixed number of constants
            move_pad(ctx, func, args, kwargs, out)
            return
    if x.dim() < 2:
        same(ctx, func, args, kwargs, out)
        return
    slots = per_index(ctx.table, ctx.label(x), 1)
    for o in tensors(out):
        ctx.set_label(o, along(slots, o.shape, 1))


def move_pad(ctx: TraceContext, func, args, kwargs, out) -> None:
    pad = arg(args, kwargs, 1, "pad")
    label = F.pad(ctx.label(args[0]).contiguous(), pad, mode="constant", value=NONE)
    ctx.set_label(out, label)


NAMES = {
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
}

PROPERTIES = {"T": move, "mT": move, "H": move, "mH": move}  # x.T ... are property reads
