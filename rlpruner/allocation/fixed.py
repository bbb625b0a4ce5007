"""Fixed allocation rules, the peers RL-Pruner's learned distribution is measured against.

- ``uniform``  the same fraction of every prunable group (counts proportional to current widths,
               largest-remainder rounding). Units are chosen by the run's importance criterion.
- ``global``   global magnitude: every unit of every group scored by its L2 magnitude divided by its
               group's mean score (so layers of different fan-in compare), the globally lowest
               units removed first.
- ``halp``     HALP (NeurIPS'22): the run's importance criterion (Taylor by default), not normalised
               per group, divided by what a unit's removal saves in the target's unit (predicted
               latency for a latency target, FLOPs, params), re-measured as removals accumulate
               (`walk.CostWalk`); a search-loop allocator only, since it needs the step's cost function.

The count rules are pure functions of sizes, capacities and scores; the two allocators run them
inside the search loop (same step budget, trimming and recovery as the learned distribution).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..importance import get as get_importance
from ..registry import Registry
from . import policy
from .base import CountsAt, Plan, Proposal, StepTask
from .walk import CostWalk

GLOBAL_IMPORTANCE = "l2"  # the "magnitude" of global magnitude pruning


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
    (a chunk scores as its highest unit, so a chunk goes only once all its units would; a group whose
    capacity is not a multiple gives its remainder first, as in `policy.allocate`), and group i loses
    at most `capacity[i]`. Ties go to the earlier group, then the lower chunk.
    """
    capacity = np.asarray(capacity, dtype=np.int64)
    wanted = policy.wanted_chunks(budget, capacity, multiple)
    chunk_scores, owners = [], []
    for i, (group_scores, room) in enumerate(zip(scores, capacity)):
        n_chunks = int(policy.chunks(room, multiple))
        if n_chunks <= 0:
            continue
        ascending = np.sort(np.asarray(group_scores, dtype=np.float64))
        ends = policy.chunk_counts(np.arange(1, n_chunks + 1), np.full(n_chunks, room), multiple)
        chunk_scores.append(ascending[ends - 1])
        owners.append(np.full(n_chunks, i))
    taken = np.zeros(len(capacity), dtype=np.int64)
    if wanted == 0:
        return taken
    values, groups = np.concatenate(chunk_scores), np.concatenate(owners)
    ranks = np.concatenate([np.arange(len(c)) for c in chunk_scores])
    chosen = np.lexsort((ranks, groups, values))[:wanted]  # lexsort: the last key is the primary one
    np.add.at(taken, groups[chosen], 1)
    return policy.chunk_counts(taken, capacity, multiple)


def global_scores(model: nn.Module, graph: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Normalised L2 magnitude of every unit of the named prunable groups of `graph`."""
    raw = get_importance(GLOBAL_IMPORTANCE)(model, graph)
    return {n: normalise(raw[n]) for n in names if n in raw}


class _FixedAllocator:
    """A fixed rule inside the loop: one candidate at the full step budget, nothing to explore."""

    learned = False

    def __init__(self, options: Any) -> None:
        self.multiple = options.round_to

    def propose(self, task: StepTask) -> Proposal:
        plan, scores = self._ranked(task)
        counts_at = self._counts_at(task, plan, scores)
        with task.timer("policy"):
            counts = counts_at(task.budget_for(counts_at))
        chosen = task.score(counts, counts / max(int(counts.sum()), 1), plan)
        return Proposal(chosen=chosen, pd=chosen.pd, counts_at=counts_at, plan=plan)

    def _ranked(self, task: StepTask) -> tuple[Plan, list[np.ndarray] | None]:
        """The plan whose unit order the step uses, and the per-group scores the rule needs."""
        return task.plan, None

    def _counts_at(self, task: StepTask, plan: Plan, scores: list[np.ndarray] | None) -> CountsAt:
        return self.rule(plan.sizes, plan.capacity, self.multiple, scores)

    @staticmethod
    def rule(sizes: np.ndarray, capacity: np.ndarray, multiple: int,
             scores: Sequence[np.ndarray] | None = None) -> CountsAt:
        raise NotImplementedError


class UniformAllocator(_FixedAllocator):
    """Every open group loses the same fraction of its current width; units by the run's criterion."""

    @staticmethod
    def rule(sizes: np.ndarray, capacity: np.ndarray, multiple: int,
             scores: Sequence[np.ndarray] | None = None) -> CountsAt:
        return lambda budget: uniform_counts(sizes, capacity, budget, multiple)

    @staticmethod
    def unit_scores(model: nn.Module, graph: Any, names: Sequence[str], importance: Any = "l2",
                    data: Any = None) -> dict[str, np.ndarray]:
        """How units are ranked within a group: the run's importance criterion."""
        return get_importance(importance, data=data)(model, graph)


class GlobalAllocator(_FixedAllocator):
    """The globally lowest normalised-L2 units go first; units are picked by that score too."""

    @staticmethod
    def rule(sizes: np.ndarray, capacity: np.ndarray, multiple: int,
             scores: Sequence[np.ndarray] | None = None) -> CountsAt:
        if scores is None:
            raise ConfigError("global allocation needs per-group scores (see rlpruner.allocation.fixed.global_scores)")
        return lambda budget: global_counts(scores, capacity, budget, multiple)

    @staticmethod
    def unit_scores(model: nn.Module, graph: Any, names: Sequence[str], importance: Any = "l2",
                    data: Any = None) -> dict[str, np.ndarray]:
        """How units are ranked: by the same normalised magnitude that allocates them (not `importance`)."""
        return global_scores(model, graph, names)

    def _ranked(self, task: StepTask) -> tuple[Plan, list[np.ndarray] | None]:
        with task.timer("importance"):
            scores = global_scores(task.model, task.plan.graph, list(task.plan.order))
        plan = replace(task.plan, order={n: np.argsort(s, kind="stable") for n, s in scores.items()})
        return plan, [scores.get(n, np.zeros(0)) for n in task.names]


class HalpAllocator(GlobalAllocator):
    """HALP: the lowest importance per millisecond saved goes first, costs re-measured as the step's
    removals accumulate. Removals are priced by predicted latency whenever the run optimises it (a
    latency target, or a FLOPs or params target with a latency reward: the step still removes the
    target's amount, spent where the table says latency is), else by the target's unit. Importance is
    the run's criterion (Taylor by default, as in HALP), not normalised per group, so a group thinned
    by earlier steps keeps the scale its units have. A group's floor is `min_keep` and the run's
    `max_group_ratio`: without one (1), latency targets on ResNet-20 emptied its whole second stage
    (benchmarks/reading.md, "Accuracy at equal latency")."""

    def _ranked(self, task: StepTask) -> tuple[Plan, list[np.ndarray] | None]:
        if task.plan.scores is None:
            return super()._ranked(task)
        return task.plan, [task.plan.scores.get(n, np.zeros(0)) for n in task.names]

    def _counts_at(self, task: StepTask, plan: Plan, scores: list[np.ndarray] | None) -> CountsAt:
        if task.cost_left is None:
            raise ConfigError("the 'halp' allocation needs the step's cost function (StepTask.cost_left); "
                              "it runs inside the search loop only")
        return CostWalk(scores or [], plan.capacity, self.multiple, task.price_left or task.cost_left).counts_at


FIXED: Registry[type] = Registry("fixed allocation method")  # the rules one-shot pruning can use too
FIXED.add("uniform", UniformAllocator)
FIXED.add("global", GlobalAllocator)
