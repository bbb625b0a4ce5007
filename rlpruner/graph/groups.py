"""Coupled channel groups, built from a finished trace.

A *unit* is a set of slots that must be removed together (a channel, a whole conv group, a whole
GroupNorm group). Units that touch exactly the same parameter dims form one *group*: the thing the
RL policy allocates removals to. Each group lists its members: which dim of which tensor, and which
positions of that dim belong to which unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from ..errors import ConfigError, PruningError
from .context import TraceContext, UnknownOp
from .labels import FROZEN, INEXACT

Removals = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Member:
    """Positions of dim `dim` of tensor `param` (a state_dict name); `units[i]` owns `positions[i]`."""

    param: str
    dim: int
    positions: np.ndarray
    units: np.ndarray

    @property
    def module(self) -> str:
        return self.param.rpartition(".")[0]

    def positions_of(self, units: np.ndarray) -> np.ndarray:
        chosen = np.zeros(int(self.units.max()) + 1 if len(self.units) else 0, dtype=bool)
        units = np.asarray(units, dtype=np.int64)
        chosen[units[units < len(chosen)]] = True
        return self.positions[chosen[self.units]]


@dataclass(frozen=True)
class Group:
    name: str
    size: int
    prunable: bool
    exact: bool
    members: tuple[Member, ...]
    reason: str = ""  # why it is not prunable

    @property
    def channels(self) -> int:
        return int(len(self.members[0].positions)) if self.members else 0

    def __repr__(self) -> str:
        flag = "" if self.prunable else f", frozen: {self.reason}"
        return f"Group({self.name!r}, size={self.size}, members={len(self.members)}{flag})"


@dataclass(frozen=True)
class SizePiece:
    """One count held by a module attribute: `fixed` channels that never go, plus one entry per
    channel position naming the (group, unit) it belongs to (a unit may fill several positions)."""

    fixed: int
    units: tuple[tuple[str, int], ...]

    def after(self, removed: Mapping[str, set[int]]) -> int:
        return self.fixed + sum(1 for g, u in self.units if u not in removed.get(g, ()))


@dataclass(frozen=True)
class SizeAttribute:
    """A module attribute the forward reads as a channel count: `split(x, self.splits)` sizes, a
    `view(..., self.head_dim)` extent. Surgery rewrites it to the count that remains."""

    name: str  # "module.path.attr"
    pieces: tuple[SizePiece, ...]
    as_list: bool  # a list of sizes (one per piece) rather than one int

    def after(self, removed: Mapping[str, set[int]]) -> int | list[int]:
        counts = [p.after(removed) for p in self.pieces]
        return counts if self.as_list else counts[0]


@dataclass(frozen=True)
class Coverage:
    """Which output channels of the conv/linear layers lie in prunable groups, and why the rest do not."""

    channels: int
    prunable: int
    frozen: dict[str, int]  # reason -> channels

    @property
    def share(self) -> float:
        return self.prunable / self.channels if self.channels else 0.0

    def __str__(self) -> str:
        lines = [f"prunable: {self.prunable} of {self.channels} conv/linear output channels ({self.share:.1%})"]
        for why, n in sorted(self.frozen.items(), key=lambda kv: -kv[1]):
            lines.append(f"  frozen {n:6d} ({n / max(self.channels, 1):.1%}): {why}")
        return "\n".join(lines)


@dataclass
class DependencyGraph:
    groups: list[Group]
    shapes: dict[str, tuple[int, ...]]  # every parameter and buffer
    parameters: frozenset[str]  # names of the shapes that are parameters
    costs: list[tuple[str, int]]  # (conv/linear weight, multiplier): FLOPs = 2 * multiplier * numel
    unknown_ops: list[UnknownOp] = field(default_factory=list)
    producers: list[tuple[str, int]] = field(default_factory=list)  # (conv/linear weight, output dim)
    sizes: list[SizeAttribute] = field(default_factory=list)  # attributes surgery rewrites

    def freeze(self, reasons: Mapping[str, str]) -> "DependencyGraph":
        """The same graph with the groups named in `reasons` ({name: why}) no longer prunable."""
        groups = [replace(g, prunable=False, reason=reasons[g.name]) if g.name in reasons and g.prunable else g
                  for g in self.groups]
        return replace(self, groups=groups)

    def coverage(self) -> Coverage:
        """Prunable share of the conv/linear output channels, and the frozen ones by reason."""
        where: dict[tuple[str, int], Group] = {}
        for g in self.groups:
            for m in g.members:
                where.setdefault((m.param, m.dim), g)
        total = prunable = 0
        frozen: dict[str, int] = {}
        for param, dim in self.producers:
            n = self.shapes[param][dim]
            total += n
            g = where.get((param, dim))
            if g is not None and g.prunable:
                prunable += n
            else:
                why = g.reason if g is not None else "not in any group"
                frozen[why] = frozen.get(why, 0) + n
        return Coverage(total, prunable, frozen)

    def size_values(self, removals: Removals) -> dict[str, int | list[int]]:
        """New values of the size attributes (`sizes`) that `removals` change."""
        removed = {name: set(np.asarray(u, dtype=np.int64).reshape(-1).tolist()) for name, u in removals.items()}
        out = {}
        for attr in self.sizes:
            before, after = attr.after({}), attr.after(removed)
            if after != before:
                out[attr.name] = after
        return out

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"no channel group named {name!r}; groups: {', '.join(g.name for g in self.groups[:20])}...")

    def slices(self, removals: Removals) -> dict[str, dict[int, np.ndarray]]:
        """For every tensor touched: dim -> sorted positions to KEEP."""
        removed: dict[tuple[str, int], list[np.ndarray]] = {}
        for name, units in removals.items():
            units = np.asarray(units, dtype=np.int64).reshape(-1)
            if units.size == 0:
                continue
            group = self.group(name)
            _check_removal(group, units)
            for m in group.members:
                removed.setdefault((m.param, m.dim), []).append(m.positions_of(units))
        plan: dict[str, dict[int, np.ndarray]] = {}
        for (param, dim), parts in removed.items():
            keep = np.ones(self.shapes[param][dim], dtype=bool)
            for part in parts:
                keep[part] = False
            plan.setdefault(param, {})[dim] = np.flatnonzero(keep)
        return plan

    def new_shapes(self, removals: Removals | None = None, *, slices: Mapping | None = None) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape after `removals` (or after already computed `slices`)."""
        shapes = dict(self.shapes)
        for param, dims in (self.slices(removals or {}) if slices is None else slices).items():
            shapes[param] = tuple(len(dims[d]) if d in dims else n for d, n in enumerate(shapes[param]))
        return shapes

    def count(self, removals: Removals | None = None, *, slices: Mapping | None = None) -> tuple[int, int]:
        """(params, FLOPs) after `removals` (or `slices`), analytically; FLOPs counted like
        torch.utils.flop_counter (2 x MACs of every conv/linear call)."""
        shapes = self.new_shapes(removals, slices=slices)
        params = sum(math.prod(shapes[n]) for n in self.parameters)
        flops = sum(2 * mult * math.prod(shapes[w]) for w, mult in self.costs)
        return params, flops

    def summary(self) -> str:
        lines = [f"{'group':40s} {'size':>6s} {'members':>8s}  status"]
        for g in self.groups:
            status = "prunable" + ("" if g.exact else " (inexact)") if g.prunable else f"frozen: {g.reason}"
            lines.append(f"{g.name:40s} {g.size:6d} {len(g.members):8d}  {status}")
        return "\n".join(lines + ["", str(self.coverage())])


def _check_removal(group: Group, units: np.ndarray) -> None:
    if not group.prunable:
        raise PruningError(f"group {group.name!r} cannot be pruned ({group.reason})")
    if units.min() < 0 or units.max() >= group.size:
        raise PruningError(f"group {group.name!r} has {group.size} units; asked to remove unit {int(units.max())}")
    if len(np.unique(units)) >= group.size:
        raise PruningError(f"removing all {group.size} units of group {group.name!r} would empty it")


# --- building groups from a trace ---------------------------------------------------------------


def build_graph(ctx: TraceContext, model: nn.Module, keep: Sequence[str] = ()) -> DependencyGraph:
    shapes = {n: tuple(t.shape) for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    parameters = frozenset(n for n, _ in model.named_parameters())
    facts = _fact_arrays(ctx)
    roots = _merge_shared_positions(ctx, facts)
    flags = np.zeros(len(roots), dtype=np.int64)
    np.bitwise_or.at(flags, roots, np.asarray(ctx.table.flags, dtype=np.int64))
    reasons: dict[int, str] = {}
    for slot, why in sorted(ctx.table.reasons.items()):
        reasons.setdefault(int(roots[slot]), why)
    names = facts["names"]
    ident = roots[facts["slot"]]
    kept_param = np.array([_is_kept(n, keep) for n in names], dtype=bool)
    kept = kept_param[facts["param"]] if len(names) else np.zeros(0, dtype=bool)
    np.bitwise_or.at(flags, ident[kept], FROZEN)
    for root, param in zip(ident[kept].tolist(), facts["param"][kept].tolist()):
        reasons.setdefault(root, f"kept layer {names[param].rpartition('.')[0]} (keep=)")
    groups, unit_of = _group_identities(names, facts, ident, flags, reasons)
    sizes = _size_attributes(ctx, roots, unit_of)
    return DependencyGraph(groups, shapes, parameters, list(ctx.costs), list(ctx.unknowns),
                           producers=list(ctx.producers), sizes=sizes)


def _size_attributes(ctx: TraceContext, roots: np.ndarray, unit_of: dict[int, tuple[str, int]]) -> list[SizeAttribute]:
    """Module attributes that hold channel counts (split sizes, head dims): which units each counts."""
    found: dict[str, SizeAttribute] = {}
    for site in ctx.sizes:
        key = f"{site.module}.{site.attr}" if site.module else site.attr
        if key in found:
            continue
        pieces = []
        for slots in site.pieces:
            fixed, units = 0, []
            for s in slots.tolist():
                owner = unit_of.get(int(roots[s])) if s >= 0 else None
                if owner is None:
                    fixed += 1
                else:
                    units.append(owner)
            pieces.append(SizePiece(fixed, tuple(units)))
        found[key] = SizeAttribute(key, tuple(pieces), site.as_list)
    return list(found.values())


def _is_kept(param: str, keep: Sequence[str]) -> bool:
    module = param.rpartition(".")[0]
    return any(module == k or module.startswith(k + ".") for k in keep)


def _fact_arrays(ctx: TraceContext) -> dict[str, np.ndarray | list[str]]:
    model_order = {n: i for i, n in enumerate(ctx.names.values())}
    names = sorted({f.param for f in ctx.table.facts}, key=model_order.__getitem__)
    index = {n: i for i, n in enumerate(names)}
    facts = ctx.table.facts
    if not facts:
        empty = np.zeros(0, dtype=np.int64)
        return {"names": names, "param": empty, "dim": empty, "pos": empty, "slot": empty}
    return {
        "names": names,
        "param": np.concatenate([np.full(len(f.slots), index[f.param]) for f in facts]),
        "dim": np.concatenate([np.full(len(f.slots), f.dim) for f in facts]),
        "pos": np.concatenate([f.positions for f in facts]),
        "slot": np.concatenate([f.slots for f in facts]),
    }


def _pair_codes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Encode int pairs as single int64s (much faster to np.unique than 2-column rows)."""
    base = int(b.max()) + 1 if len(b) else 1
    return a * base + b, base


def _merge_shared_positions(ctx: TraceContext, facts: dict) -> np.ndarray:
    """One tensor position reached by several slots (a module called twice): those slots go together."""
    if len(facts["slot"]):
        codes, _ = _pair_codes(facts["param"] * 16 + facts["dim"], facts["pos"])
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        first_slot = facts["slot"][first][inverse.reshape(-1)]
        shared = first_slot != facts["slot"]
        for a, b in set(zip(first_slot[shared].tolist(), facts["slot"][shared].tolist())):
            ctx.table.union(a, b)
    return ctx.table.roots()


def _group_identities(names, facts, ident, flags, reasons) -> tuple[list[Group], dict[int, tuple[str, int]]]:
    """The groups, and the (group name, unit) of every identity (a root slot) they hold."""
    keys = facts["param"] * 16 + facts["dim"]  # (param, dim) in one int; dims < 16
    codes, base = _pair_codes(ident, keys)
    codes = np.unique(codes)  # sorted by identity, then key
    owners, starts = np.unique(codes // base, return_index=True)
    key_lists = np.split(codes % base, starts[1:])
    signatures = [tuple(k.tolist()) for k in key_lists]
    sig_ids = {sig: i for i, sig in enumerate(sorted(set(signatures)))}
    gid_of = np.full(len(flags), -1, dtype=np.int64)
    gid_of[owners] = [sig_ids[sig] for sig in signatures]
    row_gid = gid_of[ident]
    order = np.argsort(row_gid, kind="stable")
    bounds = np.searchsorted(row_gid[order], np.arange(len(sig_ids) + 1))
    used: dict[str, int] = {}
    groups = []
    unit_of: dict[int, tuple[str, int]] = {}
    for sig, gid in sig_ids.items():
        rows = order[bounds[gid] : bounds[gid + 1]]
        group, idents, ranks = _make_group(names, facts, ident, keys, flags, reasons, sig, rows, used)
        groups.append(group)
        unit_of.update((i, (group.name, r)) for i, r in zip(idents.tolist(), ranks.tolist()))
    return groups, unit_of


def _make_group(names, facts, ident, keys, flags, reasons, sig, rows, used) -> tuple[Group, np.ndarray, np.ndarray]:
    g_ident, g_keys, g_pos = ident[rows], keys[rows], facts["pos"][rows]
    idents, inv = np.unique(g_ident, return_inverse=True)
    first = g_keys == sig[0]  # every identity of the group has this member: order units by it
    min_pos = np.full(len(idents), np.iinfo(np.int64).max)
    np.minimum.at(min_pos, inv[first], g_pos[first])
    rank = np.empty(len(idents), dtype=np.int64)
    rank[np.argsort(min_pos, kind="stable")] = np.arange(len(idents))
    g_units = rank[inv.reshape(-1)]
    members = []
    for k in sig:
        sel = g_keys == k
        codes, base = _pair_codes(g_pos[sel], g_units[sel])
        codes = np.unique(codes)
        members.append(Member(names[k // 16], k % 16, codes // base, codes % base))
    frozen = bool((flags[idents] & FROZEN).any())
    exact = not bool((flags[idents] & INEXACT).any())
    reason = ""
    if frozen:
        frozen_ids = idents[(flags[idents] & FROZEN) != 0].tolist()
        reason = next((reasons[i] for i in frozen_ids if i in reasons), "unsupported operation")
    elif len(idents) < 2:
        reason = "a single unit"
    group = Group(_group_name(members, used), len(idents), not reason, exact, tuple(members), reason)
    return group, idents, rank


def _group_name(members: list[Member], used: dict[str, int]) -> str:
    producers = [m for m in members if m.dim == 0 and m.param.endswith("weight")]
    base = (producers or members)[0].module or (producers or members)[0].param
    used[base] = used.get(base, 0) + 1
    return base if used[base] == 1 else f"{base}#{used[base] - 1}"
