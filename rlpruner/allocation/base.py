"""The types an allocator works with: the step's plan, a scored candidate, the task and the answer."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from torch import nn


@dataclass
class Plan:
    """What one step may do to the current model."""

    graph: Any                             # rlpruner.graph.DependencyGraph of the current model
    sizes: np.ndarray                      # current width of every group of the original, in run order
    capacity: np.ndarray                   # units each group may still lose this step
    budget: int                            # units the step removes
    order: dict[str, np.ndarray]           # per open group: units from least to most important
    scores: dict[str, np.ndarray] | None = None  # per open group: the run's criterion's score of every
                                           # unit (what `order` sorts), for allocators that rank across groups


@dataclass(frozen=True)
class Candidate:
    """One evaluated allocation: removal counts per group and what the pruned model measured."""

    counts: np.ndarray
    pd: np.ndarray
    acc: float
    params: int
    flops: int
    latency_ms: float | None
    q: float


Scorer = Callable[[np.ndarray, np.ndarray, Plan], Candidate]  # (counts, pd, plan) -> scored candidate
Job = tuple[np.ndarray, np.ndarray]                             # (counts, pd) of a candidate to score
BatchScorer = Callable[[Sequence[Job], Plan], list[Candidate]]  # several at once (split across processes)
CountsAt = Callable[[int], np.ndarray]                          # channel budget -> removals per group


def _no_timer(key: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass
class StepTask:
    """Everything an allocator may use to choose one step's removals."""

    step: int                              # 1-based
    model: nn.Module                       # the current model (not to be modified)
    plan: Plan
    names: tuple[str, ...]                 # group names, in the order of every array
    pd: np.ndarray                         # the distribution carried from the previous step
    score: Scorer
    budget_for: Callable[[CountsAt], int]  # the channel budget at which an allocation rule removes the
                                           # step's cost (the same for every candidate of the step)
    validate: Callable[[Candidate, Plan], float]  # a candidate's accuracy on the whole validation split
    acc_ref: float                         # the previous step's chosen model, as pruned, on the same split
    seed: int
    planned_steps: int
    log: Callable[[str], None] = lambda line: None
    timer: Callable[[str], contextlib.AbstractContextManager[None]] = _no_timer
    progress: bool = False
    score_many: BatchScorer | None = None  # the search's: shares the jobs among the run's processes
    cost_left: Callable[[np.ndarray], float] | None = None  # what the current model keeps after removing
                                           # counts per group, in the target's proxy unit (predicted
                                           # latency, FLOPs, params or units)
    price_left: Callable[[np.ndarray], float] | None = None  # the same in the unit removals are priced
                                           # by: predicted latency whenever the run optimises it (a latency
                                           # target or reward), else `cost_left`'s unit

    def score_all(self, jobs: Sequence[Job], plan: Plan) -> list[Candidate]:
        """Candidates for every `(counts, pd)` of `jobs`, in order: scored together (a multi-process
        run splits them among its ranks), so an allocator that draws a round first loses nothing."""
        if self.score_many is not None:
            return self.score_many(jobs, plan)
        return [self.score(counts, pd, plan) for counts, pd in jobs]


@dataclass
class Proposal:
    """An allocator's answer: the chosen candidate and how to allocate a smaller budget the same way
    (the search trims the step to the exact target with `counts_at`)."""

    chosen: Candidate
    pd: np.ndarray                         # the distribution to carry into the next step
    counts_at: CountsAt
    plan: Plan                             # the task's plan, or one with the allocator's own unit order
    info: dict[str, Any] = field(default_factory=lambda: {"epsilon": 0.0, "explored": False, "guard_resets": 0,
                                                          "guard_reason": ""})


class Allocator(Protocol):
    learned: bool                          # True when `Proposal.pd` carries learned state across steps

    def propose(self, task: StepTask) -> Proposal: ...
