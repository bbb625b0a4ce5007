"""Allocation: how a pruning step's budget is shared among the prunable groups.

RL-Pruner's question at every step is *how many units does each group lose?* An `Allocator`
answers it. Four are registered by name in `ALLOCATORS`:

- ``rl``       the learned pruning distribution (`learned.LearnedAllocator`, the paper's method);
- ``uniform``  the same fraction of every group (`fixed.UniformAllocator`);
- ``global``   global magnitude ranking (`fixed.GlobalAllocator`);
- ``halp``     importance per unit of the target's cost, HALP's latency-aware ranking
               (`fixed.HalpAllocator`, `walk.CostWalk`).

A new allocator (e.g. sensitivity-based) is one class with a `propose` method, registered with
`ALLOCATORS.add("name", factory)`; the search loop (plan, score, trim, recover) stays as it is.
The allocator sees the step through a `StepTask`: the plan (sizes, capacities, budget, importance
order), a `score` callback that builds and evaluates a candidate, and the run's knobs. It never
imports the search, so the dependency runs one way: search -> allocation.

Pure math lives beside it: `policy` (the PD: init, sample, allocate, update, epsilon-greedy),
`fixed` (uniform and global-magnitude counts), `walk` (the cost-aware ranking) and `budget` (the
one bisection over budgets).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import Allocator, Candidate, Plan, Proposal, Scorer, StepTask
from .fixed import FIXED, GlobalAllocator, HalpAllocator, UniformAllocator
from .learned import LearnedAllocator

__all__ = ["ALLOCATORS", "FIXED", "Allocator", "Candidate", "GlobalAllocator", "HalpAllocator", "LearnedAllocator",
           "Plan", "Proposal", "Scorer", "StepTask", "UniformAllocator", "get_allocator"]

ALLOCATORS: Registry[Callable[[Any], Allocator]] = Registry("allocation method")
ALLOCATORS.add("rl", LearnedAllocator)
for _name in FIXED.names():
    ALLOCATORS.add(_name, FIXED.get(_name))
ALLOCATORS.add("halp", HalpAllocator)  # not in FIXED: it needs the search step's cost function


def get_allocator(name: str, options: Any) -> Allocator:
    """The allocator registered as `name`, built with the run's RL options (`RLConfig`)."""
    return ALLOCATORS.get(name)(options)
