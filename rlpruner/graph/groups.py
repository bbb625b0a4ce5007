"""Coupled channel groups, built from a finished trace.

A *unit* is a set of slots that must be removed together (a channel, a whole conv group, a whole
GroupNorm group). Units that touch exactly the same parameter dims form one *group*: the thing the
RL policy allocates removals to. Each group lists its members: which dim of which tensor, and which
positions of that dim belong to which unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
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


@dataclass
class DependencyGraph:
    groups: list[Group]
    shapes: dict[str, tuple[int, ...]]  # every parameter and buffer
    parameters: frozenset[str]  # names of the shapes that are parameters
    costs: list[tuple[str, int]]  # (conv/linear weight, multiplier): FLOPs = 2 * multiplier * numel
    unknown_ops: list[UnknownOp] = field(default_factory=list)

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
        return "\n".join(lines)


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
    names = facts["names"]
    ident = roots[facts["slot"]]
    kept_param = np.array([_is_kept(n, keep) for n in names], dtype=bool)
    kept = kept_param[facts["param"]] if len(names) else np.zeros(0, dtype=bool)
    np.bitwise_or.at(flags, ident[kept], FROZEN)
    groups = _group_identities(names, facts, ident, flags, ctx.unknowns)
    return DependencyGraph(groups, shapes, parameters, list(ctx.costs), list(ctx.unknowns))


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


def _group_identities(names, facts, ident, flags, unknowns) -> list[Group]:
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
    for sig, gid in sig_ids.items():
        rows = order[bounds[gid] : bounds[gid + 1]]
        groups.append(_make_group(names, facts, ident, keys, flags, sig, rows, used))
    return groups


def _make_group(names, facts, ident, keys, flags, sig, rows, used) -> Group:
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
        reason = "model input/output, kept layer or unsupported operation"
    elif len(idents) < 2:
        reason = "a single unit"
    return Group(_group_name(members, used), len(idents), not reason, exact, tuple(members), reason)


def _group_name(members: list[Member], used: dict[str, int]) -> str:
    producers = [m for m in members if m.dim == 0 and m.param.endswith("weight")]
    base = (producers or members)[0].module or (producers or members)[0].param
    used[base] = used.get(base, 0) + 1
    return base if used[base] == 1 else f"{base}#{used[base] - 1}"


def validate_forward(model: nn.Module, example_inputs) -> None:
    """Run the pruned model once; a failure means a structure the trace could not see.

    Runs on a meta-device twin first (shapes only, near free); only if that cannot run (code that
    reads tensor values) does it run the real model.
    """
    from contextlib import nullcontext

    from .trace import ShapeMode, _split_inputs, _to_meta
    from .twin import meta_twin

    def run(m: nn.Module, inputs, mode) -> None:
        args, kwargs = _split_inputs(inputs)
        was = m.training
        m.eval()
        try:
            with torch.no_grad(), mode:
                m(*args, **kwargs)
        finally:
            m.train(was)

    try:
        run(meta_twin(model), _to_meta(example_inputs), ShapeMode())
        return
    except Exception:  # noqa: BLE001 - decide with a real run below
        pass
    try:
        run(model, example_inputs, nullcontext())
    except Exception as exc:  # noqa: BLE001 - re-raised with context for the user
        raise PruningError(
            f"the pruned model no longer runs ({type(exc).__name__}: {exc}). The model probably hard-codes a "
            "channel count (e.g. in a view/reshape); keep the layers involved with keep=[...]"
        ) from exc
