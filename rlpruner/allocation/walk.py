"""Cost-aware global ranking (HALP, Shen et al., NeurIPS'22): units leave in the order of their
importance per unit of the target's cost they save, the cost re-measured as removals accumulate.

Global magnitude ranks units by importance alone, so a cheap channel (a late layer's, a few FLOPs,
little latency) goes as readily as an expensive one of the same score. HALP divides a unit's
importance by the latency its removal saves, read from a latency table, and removes the cheapest
importance per millisecond first. `CostWalk` does that for any cost the run targets: predicted
latency (HALP's case), FLOPs or params; for a channel target it is a global ranking by the scores.

The walk is greedy over *strides*: a group gives a few chunks at a time (about 1/`points` of what it
may lose), its next stride priced as (importance of those units) / (cost they save from the current
model). A removal changes its neighbours' costs (a conv's FLOPs fall with its input width), so
prices are re-measured lazily: the best stale price is re-priced, taken if still the best, else
re-queued. Removing units of one group only lowers what the others' units save, so a price only
rises and the lazy walk takes what the full re-pricing would (exact for FLOPs and params; the
latency table's small local width effects can break it slightly).
"""
from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Sequence

import numpy as np

from . import policy

STRIDE_POINTS = 16  # strides per group over its whole removable range


class CostWalk:
    """The removal order of a cost-aware global ranking, extended as far as `counts_at` asks.

    `scores[i]`: one importance per unit of group i (comparable across groups, e.g. Taylor's loss
    estimate); units leave from the lowest. `capacity[i]`: units group i may lose. `left`:
    what the model keeps, in the target's unit, after removing a vector of units per group (the
    step's cost function). Units go in chunks of `multiple` (a partial chunk first where a capacity
    is not a multiple, as `policy.allocate` does).
    """

    def __init__(self, scores: Sequence[np.ndarray], capacity: Sequence[int], multiple: int,
                 left: Callable[[np.ndarray], float], points: int = STRIDE_POINTS) -> None:
        self.capacity = np.asarray(capacity, dtype=np.int64)
        self.multiple, self.left = multiple, left
        self.n_chunks = policy.chunks(self.capacity, multiple)
        self.strides = np.maximum(1, -(-self.n_chunks // max(points, 1)))
        self.removed_score: list[np.ndarray] = []  # per group: score removed after k chunks, k = 0..n
        for group_scores, room, n in zip(scores, self.capacity, self.n_chunks):
            ascending = np.sort(np.asarray(group_scores, dtype=np.float64))[:max(int(room), 0)]
            units = policy.chunk_counts(np.arange(int(n) + 1), np.full(int(n) + 1, room), multiple)
            self.removed_score.append(np.concatenate([[0.0], np.cumsum(ascending)])[units])
        self.taken = np.zeros(len(self.capacity), dtype=np.int64)  # chunks per group after the walk so far
        self.kept = float(left(self.units(self.taken)))
        self.sequence: list[tuple[int, int]] = []  # (group, chunks it gives) in the walk's order
        self.totals = [0]                          # chunks removed after each entry of the sequence
        self.version = 0                           # bumps at every removal: prices older than it are stale
        self.heap: list[tuple[float, float, int, int, float]] = []  # (last?, price, group, version, kept)
        for i in np.flatnonzero(self.n_chunks > 0):
            self._queue(int(i))

    def units(self, chunks: np.ndarray) -> np.ndarray:
        return policy.chunk_counts(chunks, self.capacity, self.multiple)

    def _next(self, group: int) -> int:
        return min(int(self.strides[group]), int(self.n_chunks[group] - self.taken[group]))

    def _price(self, group: int) -> tuple[float, float, float]:
        """(infinite?, importance per unit cost, what the model keeps after it) of the group's next stride.
        A stride that saves nothing (or adds cost: some runtimes run a few odd widths slower) is
        priced last, ordered by its importance."""
        trial = self.taken.copy()
        trial[group] += self._next(group)
        kept = float(self.left(self.units(trial)))
        importance = float(self.removed_score[group][trial[group]] - self.removed_score[group][self.taken[group]])
        saved = self.kept - kept
        if not np.isfinite(saved) or saved <= 0:
            return 1.0, importance, kept
        return 0.0, importance / saved, kept

    def _queue(self, group: int) -> None:
        last, price, kept = self._price(group)
        heapq.heappush(self.heap, (last, price, group, self.version, kept))

    def _extend(self, wanted: int) -> None:
        while self.totals[-1] < wanted and self.heap:
            last, price, group, version, kept = heapq.heappop(self.heap)
            if version != self.version:  # priced before the last removal: re-price, take it if still first
                last, price, kept = self._price(group)
                if self.heap and (last, price, group) > self.heap[0][:3]:
                    heapq.heappush(self.heap, (last, price, group, self.version, kept))
                    continue
            size = self._next(group)
            self.taken[group] += size
            self.kept, self.version = kept, self.version + 1
            self.sequence.append((group, size))
            self.totals.append(self.totals[-1] + size)
            if self.taken[group] < self.n_chunks[group]:
                self._queue(group)

    def counts_at(self, budget: int) -> np.ndarray:
        """Units per group when the walk removes `budget` units (a multiple of `multiple`): whole strides
        in the walk's order, then part of the next one. Monotone in `budget`."""
        wanted = policy.wanted_chunks(budget, self.capacity, self.multiple)
        self._extend(wanted)
        whole = bisect.bisect_right(self.totals, wanted) - 1
        chunks = np.zeros(len(self.capacity), dtype=np.int64)
        for group, size in self.sequence[:whole]:
            chunks[group] += size
        rest = wanted - self.totals[whole]
        if rest:
            chunks[self.sequence[whole][0]] += rest
        return self.units(chunks)
