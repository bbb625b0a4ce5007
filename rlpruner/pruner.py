"""One-shot structured pruning, in one call:

    prune(model, example_inputs, ratio=0.5)                  # the same ratio (or a ratio per group)
    prune_to_flops(model, example_inputs, 0.5, "global")     # a fixed allocation rule to a FLOPs target

The RL search (rlpruner.search) uses the same pieces, but chooses per-group counts step by step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from .allocation.fixed import FIXED
from .allocation.budget import smallest_budget
from .allocation.policy import capacity, floor_text, max_budget, ratio_floor
from .errors import ConfigError, PruningError
from .graph import DependencyGraph, trace
from .graph.rules import RuleLike
from .importance import Calibration, Importance, get, lowest
from .isolate import breaking_groups, frozen_reasons, warn_frozen
from .surgery import Fixups, prune_channels

Ratio = float | Mapping[str, float]


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: Ratio,
    *,
    importance: str | Importance = "l2",
    keep: Sequence[str] = (),
    round_to: int | None = None,
    data: tuple[Any, Any] | Calibration | None = None,
    strict: bool = False,
    verify: bool = True,
    rules: Mapping[Any, RuleLike] | None = None,
    fixups: Fixups | None = None,
) -> nn.Module:
    """Remove the least important `ratio` of the units of every prunable group, physically, in place.

    ratio: one fraction in [0, 1) for every prunable group, or {group name: fraction}.
    round_to: keep a multiple of this many units per group (hardware-friendly widths).
    data: (inputs, targets) calibration batch for the 'taylor', 'activation' and 'variance' criteria,
        or an `importance.Calibration` (batches of any structure, a forward, a task loss).
    rules, fixups: channel rules and surgery fix-ups for custom ops/modules, for this call
    (see rlpruner.graph.register_rule and docs/custom-ops.md).
    verify: check that the pruned model runs; groups whose pruning breaks it (a hard-coded channel
    count the trace cannot see) are found by bisection and left unpruned, with a warning naming them.
    """
    graph = trace(model, example_inputs, keep=keep, strict=strict, rules=rules)
    counts = removal_counts(graph, ratio, round_to)
    scores = get(importance, data=data)(model, graph) if counts else {}
    removals = {name: lowest(scores[name], n) for name, n in counts.items() if n > 0}
    if verify:  # fail small: a group whose pruning breaks the forward is left whole, with a warning
        broken = breaking_groups(model, graph, removals, example_inputs, fixups)
        warn_frozen(broken, graph)
        removals = {name: units for name, units in removals.items() if name not in broken}
    prune_channels(model, graph, removals, inplace=True, fixups=fixups)  # verified above when verify=True
    return model


def removal_counts(graph: DependencyGraph, ratio: Ratio, round_to: int | None = None) -> dict[str, int]:
    """Units to remove per prunable group for a uniform or per-group ratio."""
    groups = {g.name: g for g in graph.prunable_groups()}
    if isinstance(ratio, Mapping):
        unknown = sorted(set(ratio) - {g.name for g in graph.groups})
        if unknown:
            raise ConfigError(f"ratio names unknown groups {unknown}; prunable groups: {', '.join(groups)}")
        frozen = sorted(set(ratio) - set(groups))
        if frozen:
            raise ConfigError(f"groups {frozen} cannot be pruned (model outputs, kept layers or unsupported ops)")
        wanted = dict(ratio)
    else:
        wanted = {name: ratio for name in groups}
    for name, r in wanted.items():
        if not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ConfigError(f"pruning ratio for {name!r} must be in [0, 1), got {r!r}")
    if round_to is not None and round_to < 1:
        raise ConfigError(f"round_to must be a positive integer, got {round_to}")
    return {name: _count(groups[name].size, float(r), round_to) for name, r in wanted.items()}


def _count(size: int, ratio: float, round_to: int | None) -> int:
    remove = min(int(np.floor(size * ratio + 1e-9)), size - 1)
    if round_to and round_to > 1 and size > round_to:
        keep = size - remove
        keep = max(round_to, int(np.ceil(keep / round_to)) * round_to)  # round up: never prune more than asked
        remove = max(size - min(keep, size), 0)
    return remove


def plan_to_flops(graph: DependencyGraph, target: float, method: str, *,
                  scores: Mapping[str, np.ndarray] | None = None, round_to: int = 1,
                  min_keep: int = 1, max_group_ratio: float = 1.0) -> dict[str, int]:
    """Per-group removal counts that cut the FLOPs of `graph`'s model by at least `target` (a fraction),
    with as few units as the fixed allocation `method` (rlpruner.allocation.FIXED: 'uniform',
    'global') allows. `scores` (normalised, per group) is needed by 'global'. No group loses more
    than `max_group_ratio` of its width."""
    allocator = FIXED.get(method)
    if not 0.0 < target < 1.0:
        raise ConfigError(f"FLOPs reduction target must be in (0, 1), got {target}")
    groups = graph.prunable_groups()
    names = [g.name for g in groups]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    room = capacity(sizes, min_keep, round_to, ratio_floor(sizes, max_group_ratio))
    counts_at = allocator.rule(sizes, room, round_to, None if scores is None else [scores[n] for n in names])
    goal = (1.0 - target) * graph.count()[1]

    def meets(counts: np.ndarray) -> bool:
        return graph.count({n: range(c) for n, c in zip(names, counts) if c > 0})[1] <= goal

    counts = smallest_budget(counts_at, meets, max_budget(room, round_to), round_to)
    if counts is None:
        raise PruningError(f"a FLOPs reduction of {target:.1%} is unreachable: pruning every group down to "
                           f"{floor_text(min_keep, max_group_ratio)} is not enough")
    return {n: int(c) for n, c in zip(names, counts) if c > 0}


def prune_to_flops(model: nn.Module, example_inputs: Any, target: float, *, method: str = "uniform",
                   importance: str = "l2", round_to: int = 1, keep: Sequence[str] = (),
                   data: tuple[Any, Any] | None = None, max_group_ratio: float = 1.0) -> nn.Module:
    """One-shot: prune `model` in place until its FLOPs drop by `target`, allocating with `method`.

    'uniform' picks units within each group by `importance`; 'global' ranks and picks by normalised
    L2 magnitude. `round_to`: every group keeps a width that is a multiple of it (as in `prune`);
    `max_group_ratio`: the largest share of any group's width removed (Torch-Pruning's max_pruning_ratio).
    """
    allocator = FIXED.get(method)
    graph = trace(model, example_inputs, keep=keep)
    names = [g.name for g in graph.prunable_groups()]
    scores = allocator.unit_scores(model, graph, names, importance, data)
    while True:  # fail small: freeze the groups that break the forward, then plan again without them
        counts = plan_to_flops(graph, target, method, scores=scores, round_to=round_to,
                               max_group_ratio=max_group_ratio)
        removals = {n: lowest(scores[n], c) for n, c in counts.items()}
        broken = breaking_groups(model, graph, removals, example_inputs)
        if not broken:
            break
        warn_frozen(broken, graph)
        graph = graph.freeze(frozen_reasons(broken))
    prune_channels(model, graph, removals, inplace=True)  # `breaking_groups` ran exactly these removals
    return model
