"""The one bisection over step budgets, shared by the search (planning, trimming to the target) and
one-shot baseline pruning."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def smallest_passing(hi: int, passes: Callable[[int], bool]) -> int:
    """The smallest k in 1..`hi` with `passes(k)`, for a predicate that, once true, stays true as k
    grows (removing more never undoes a FLOPs/params/latency goal). `passes(hi)` is assumed, not
    tested, and k = 0 is never tested; `hi` <= 0 returns `hi`. Callers cache what `passes` computes
    when they need the value at the answer."""
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_budget(counts_at: Callable[[int], np.ndarray], meets: Callable[[np.ndarray], bool],
                    budget: int, multiple: int = 1) -> np.ndarray | None:
    """The counts of the smallest budget (a multiple of `multiple`, at most `budget`) whose counts
    meet the goal; None when even `budget` does not."""
    hi = budget // multiple
    if not meets(counts_at(hi * multiple)):
        return None
    return counts_at(smallest_passing(hi, lambda k: meets(counts_at(k * multiple))) * multiple)
