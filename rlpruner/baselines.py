"""Baseline pruning distributions: the rules RL-Pruner's learned distribution is measured against.

Each baseline answers the question the RL policy answers at every step: *how many units does each
group lose out of this step's budget?* It plugs into the same search loop (`rlpruner compress
--method uniform|global`), so the step schedule, the trimming to the exact target and the
knowledge-distillation recovery are identical; only the allocation differs.

- ``uniform``  the same fraction of every prunable group (counts proportional to current widths,
               largest-remainder rounding). Units are chosen by the run's importance criterion.
- ``global``   global magnitude: every unit of every group scored by its L2 magnitude divided by its
               group's mean score (so layers of different fan-in compare), and the globally lowest
               units removed first.

One-shot use, without the loop:

    counts = plan_to_flops(graph, 0.5, "uniform")           # {group: units}, FLOPs -50% or more
    model = prune_to_flops(model, example, 0.5, method="global")

Everything below is a pure function of sizes, capacities and scores except `prune_to_flops`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from . import policy
from .errors import ConfigError, PruningError

METHODS = ("rl", "uniform", "global")
BASELINES = ("uniform", "global")
GLOBAL_IMPORTANCE = "l2"  # the "magnitude" of global magnitude pruning


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"pruning method {method!r} is not one of {', '.join(METHODS)}")
    return method


def uniform_counts(sizes: Sequence[int], capacity: Sequence[int], budget: int, multiple: int = 1) -> np.ndarray:
    """`budget` removals shared in proportion to the current widths: every open group loses the same
    fraction (up to rounding to whole units, or to `multiple`s of them)."""
    return policy.allocate(policy.density_init(sizes, capacity), budget, np.asarray(capacity), multiple)


def normalise(scores: np.ndarray) -> np.ndarray:
    """A group's scores divided by their mean (Torch-Pruning's default normaliser); all-zero stays zero."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = float(scores.mean()) if scores.size else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)


def global_counts(scores: Sequence[np.ndarray], capacity: Sequence[int], budget: int,
                  multiple: int = 1) -> np.ndarray:
    """Removals per group when the `budget` globally lowest-scored units go first.

    `scores[i]` holds one (normalised) score per unit of group i. Units leave in chunks of `multiple`
    (a chunk scores as its highest unit, so a chunk goes only once all its units would), and group i
    loses at most `capacity[i]`. Ties go to the earlier group, then the lower chunk.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    if budget < 0 or budget % multiple:
        raise PruningError(f"budget {budget} must be a non-negative multiple of round_to={multiple}")
    chunk_scores, owners = [], []
    for i, (group_scores, room) in enumerate(zip(scores, capacity)):
        chunks = int(room) // multiple
        if chunks <= 0:
            continue
        ascending = np.sort(np.asarray(group_scores, dtype=np.float64))
        chunk_scores.append(ascending[np.arange(1, chunks + 1) * multiple - 1])
        owners.append(np.full(chunks, i))
    wanted = budget // multiple
    total = sum(len(c) for c in chunk_scores)
    if wanted > total:
        raise PruningError(f"cannot remove {budget} units: only {total * multiple} can go without "
                           "emptying a group")
    counts = np.zeros(len(capacity), dtype=np.int64)
    if wanted == 0:
        return counts
    values, groups = np.concatenate(chunk_scores), np.concatenate(owners)
    ranks = np.concatenate([np.arange(len(c)) for c in chunk_scores])
    chosen = np.lexsort((ranks, groups, values))[:wanted]  # lexsort: the last key is the primary one
    np.add.at(counts, groups[chosen], multiple)
    return counts


def global_scores(model: nn.Module, graph: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Normalised L2 magnitude of every unit of the named prunable groups of `graph`."""
    from .importance import get

    raw = get(GLOBAL_IMPORTANCE)(model, graph)
    return {n: normalise(raw[n]) for n in names if n in raw}


def smallest_budget(counts_at: Callable[[int], np.ndarray], meets: Callable[[np.ndarray], bool],
                    budget: int, multiple: int = 1) -> np.ndarray | None:
    """The counts of the smallest budget (a multiple of `multiple`, at most `budget`) whose counts
    meet the goal, by bisection; None when even `budget` does not. Assumes removing more never
    hurts the goal, which holds for FLOPs and parameters."""
    hi = budget // multiple
    best = counts_at(hi * multiple)
    if not meets(best):
        return None
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        counts = counts_at(mid * multiple)
        lo, hi, best = (lo, mid, counts) if meets(counts) else (mid, hi, best)
    return best


def plan_to_flops(graph: Any, target: float, method: str, *, scores: Mapping[str, np.ndarray] | None = None,
                  round_to: int = 1, min_keep: int = 1) -> dict[str, int]:
    """Per-group removal counts that cut the FLOPs of `graph`'s model by at least `target` (a fraction),
    with as few units as the method allows. `scores` (normalised, per group) is needed by 'global'."""
    if method not in BASELINES:
        raise ConfigError(f"one-shot planning supports {', '.join(BASELINES)}, not {method!r}")
    if not 0.0 < target < 1.0:
        raise ConfigError(f"FLOPs reduction target must be in (0, 1), got {target}")
    groups = graph.prunable_groups()
    names = [g.name for g in groups]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    room = policy.capacity(sizes, min_keep, round_to)
    if method == "global" and scores is None:
        raise ConfigError("method 'global' needs per-group scores (see global_scores)")

    def counts_at(budget: int) -> np.ndarray:
        if method == "uniform":
            return uniform_counts(sizes, room, budget, round_to)
        return global_counts([scores[n] for n in names], room, budget, round_to)

    goal = (1.0 - target) * graph.count()[1]

    def meets(counts: np.ndarray) -> bool:
        return graph.count({n: range(c) for n, c in zip(names, counts) if c > 0})[1] <= goal

    counts = smallest_budget(counts_at, meets, int(room.sum()), round_to)
    if counts is None:
        raise PruningError(f"a FLOPs reduction of {target:.1%} is unreachable: pruning every group down to "
                           f"min_keep={min_keep} unit(s) is not enough")
    return {n: int(c) for n, c in zip(names, counts) if c > 0}


def prune_to_flops(model: nn.Module, example_inputs: Any, target: float, *, method: str = "uniform",
                   importance: str = "l2", round_to: int = 1, keep: Sequence[str] = (),
                   data: tuple[Any, Any] | None = None) -> nn.Module:
    """One-shot: prune `model` in place until its FLOPs drop by `target`, allocating with `method`.

    'uniform' picks units within each group by `importance`; 'global' ranks and picks by normalised
    L2 magnitude. `round_to` removes units in multiples of it (widths that are multiples of it stay so).
    """
    from .graph import trace, validate_forward
    from .importance import get, lowest
    from .surgery import prune_channels

    graph = trace(model, example_inputs, keep=keep)
    names = [g.name for g in graph.prunable_groups()]
    if method == "global":
        scores = global_scores(model, graph, names)
    else:
        scores = get(importance, data=data)(model, graph)
    counts = plan_to_flops(graph, target, method, scores=scores if method == "global" else None,
                           round_to=round_to)
    prune_channels(model, graph, {n: lowest(scores[n], c) for n, c in counts.items()}, inplace=True)
    validate_forward(model, example_inputs)
    return model
