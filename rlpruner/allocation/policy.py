"""RL-Pruner policy math: the pruning distribution (PD) and everything that moves it.

Pure functions over numpy arrays, indexed like the search's list of prunable groups. Randomness
comes only from the `numpy.random.Generator` passed in, so a run replays exactly from its seed.

- `capacity` / `density_init`     how much each group may lose; PD_i proportional to channels_i
- `sample`                        PD' = normalise(clamp(PD + N(0,1)·noise·U(0,1), >= 1e-5))
- `allocate`                      PD' -> integer removals per group summing exactly to a budget
- `ReplayBuffer`                  the step's best `size` (Q, PD') pairs
- `update` / `clip_ratio`         PD <- PD + lambda·(PD_best - PD) with the PPO-style ratio clip
- `choose` / `epsilon_at`         epsilon-greedy choice of the step's model and its decay schedule
- `lookahead_q`, `accuracy_dropped`  look-ahead discount and the accuracy-drop guard
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, PruningError

MIN_PROB = 1e-5  # floor of every shrinkable entry, so a group is never ruled out for good
EPSILON_SCHEDULES = ("cosine", "linear", "constant")


def capacity(sizes: Sequence[int], min_keep: int = 1, multiple: int = 1,
             floor: Sequence[int] | None = None) -> np.ndarray:
    """Most units each group may still lose, keeping at least `min_keep` (>= 1) units, at least
    `floor[i]` units in group i where given (a width the run must not go below), and a width that is
    a multiple of `multiple` (`round_to`): the width a group keeps is at least the larger of the two
    rounded up to a multiple. A group whose width is not a multiple has that remainder as its first chunk."""
    if min_keep < 1:
        raise ConfigError(f"min_keep must be >= 1 so that no group is emptied, got {min_keep}")
    if multiple < 1:
        raise ConfigError(f"round_to multiple must be >= 1, got {multiple}")
    sizes = np.asarray(sizes, dtype=np.int64)
    least = np.full(sizes.shape, max(min_keep, 1), dtype=np.int64)
    if floor is not None:
        least = np.maximum(least, np.asarray(floor, dtype=np.int64))
    keep = -(-least // multiple) * multiple
    return np.maximum(sizes - keep, 0)


def ratio_floor(original: Sequence[int], max_group_ratio: float) -> np.ndarray | None:
    """The width each group must keep when at most `max_group_ratio` of its `original` width may go
    (None at 1: no floor). w x (1 - ratio) is rounded to 9 decimals before the ceiling, so that
    floating point does not raise a floor by one (10 x (1 - 0.7) keeps 3)."""
    if not 0 < max_group_ratio <= 1:
        raise ConfigError(f"max_group_ratio must be in (0, 1], got {max_group_ratio!r}")
    if max_group_ratio == 1:
        return None
    return np.ceil(np.round(np.asarray(original, dtype=np.float64) * (1 - max_group_ratio), 9)).astype(np.int64)


def floor_text(min_keep: int, max_group_ratio: float = 1.0) -> str:
    """What every group keeps, for messages: 'min_keep=1 unit(s)' [and the share of its width]."""
    text = f"min_keep={min_keep} unit(s)"
    if max_group_ratio < 1:
        text += f" and {1 - max_group_ratio:.0%} of its width (max_group_ratio={max_group_ratio:g})"
    return text


def chunks(capacity_: np.ndarray, multiple: int) -> np.ndarray:
    """Removal chunks each group can give: whole `multiple`s, plus one partial chunk (the width's
    remainder) where the width is not a multiple."""
    return -(-np.asarray(capacity_, dtype=np.int64) // multiple)


def max_budget(capacity_: np.ndarray, multiple: int = 1) -> int:
    """The largest budget `allocate` accepts: every chunk of every group, counted as whole multiples."""
    return int(chunks(capacity_, multiple).sum()) * multiple


def wanted_chunks(budget: int, capacity_: np.ndarray, multiple: int) -> int:
    """`budget` units as a number of chunks for the global rankings (`fixed.global_counts`,
    `walk.CostWalk`); PruningError when it is not a multiple of `multiple` or asks more than the
    groups can give."""
    if budget < 0 or budget % multiple:
        raise PruningError(f"budget {budget} must be a non-negative multiple of round_to={multiple}")
    if budget // multiple > int(np.maximum(chunks(capacity_, multiple), 0).sum()):
        raise PruningError(f"cannot remove {budget} units: only {int(np.asarray(capacity_).sum())} can go "
                           "without emptying a group")
    return budget // multiple


def chunk_counts(chunk_numbers: np.ndarray, capacity_: np.ndarray, multiple: int) -> np.ndarray:
    """Units removed by taking `chunk_numbers` chunks per group (a partial chunk comes first)."""
    short = (-np.asarray(capacity_, dtype=np.int64)) % multiple
    return chunk_numbers * multiple - np.where(chunk_numbers > 0, short, 0)


def normalise(values: np.ndarray) -> np.ndarray:
    total = float(values.sum())
    if total <= 0:
        raise PruningError("the pruning distribution has no mass left: every group is at its minimum width")
    return values / total


def masked(pd: np.ndarray, capacity_: np.ndarray) -> np.ndarray:
    """Zero the groups that cannot shrink any more, floor the others at MIN_PROB, renormalise."""
    open_ = np.asarray(capacity_) > 0
    return normalise(np.where(open_, np.maximum(pd, MIN_PROB), 0.0))


def density_init(sizes: Sequence[int], capacity_: Sequence[int]) -> np.ndarray:
    """The paper's "output channel density": PD_i proportional to channels_i, 0 where nothing can go."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return normalise(np.where(np.asarray(capacity_) > 0, sizes, 0.0))


def sample(pd: np.ndarray, noise: float, rng: np.random.Generator, capacity_: np.ndarray) -> np.ndarray:
    """One candidate distribution PD' around `pd`.

    The uniform factor is one draw per candidate (as in the reference code), so candidates range
    from near-copies of PD to full-`noise` perturbations.
    """
    scale = noise * rng.uniform()
    return masked(pd + rng.standard_normal(len(pd)) * scale, capacity_)


def allocate(pd: np.ndarray, budget: int, capacity_: np.ndarray, multiple: int = 1) -> np.ndarray:
    """Integer removals per group: sums exactly to `budget`, never exceeds `capacity_`.

    Largest-remainder rounding of budget·PD; a group whose share exceeds its capacity is filled to
    capacity and the overflow is shared among the others in proportion to their PD (or, when they
    all have PD 0, their capacity). With `multiple` > 1 units go in chunks of `multiple`, so every
    group keeps a width that is a multiple of it; a group whose capacity is not a multiple gives its
    remainder as its first chunk, and the counts then fall short of `budget` by what those partial
    chunks lack of a whole one.
    """
    capacity_ = np.asarray(capacity_, dtype=np.int64)
    if budget < 0 or budget % multiple:
        raise PruningError(f"step budget {budget} must be a non-negative multiple of round_to={multiple}")
    chunks_cap = chunks(capacity_, multiple)
    wanted = budget // multiple
    if wanted > chunks_cap.sum():
        raise PruningError(
            f"cannot remove {budget} units in one step: only {int(capacity_.sum())} can go "
            "without emptying a group")
    counts = np.zeros(len(capacity_), dtype=np.int64)
    free = chunks_cap > 0
    remaining = wanted
    weights = np.where(free, np.asarray(pd, dtype=np.float64), 0.0)
    while remaining > 0:
        w = weights * free
        if w.sum() <= 0:  # only zero-probability groups can take the rest
            w = chunks_cap * free.astype(np.float64)
        quota = remaining * w / w.sum()
        full = free & (quota >= chunks_cap)
        if not full.any():
            counts += _largest_remainder(quota, remaining, w)
            break
        counts[full] = chunks_cap[full]
        remaining -= int(chunks_cap[full].sum())
        free &= ~full
    return chunk_counts(counts, capacity_, multiple)


def _largest_remainder(quota: np.ndarray, total: int, weights: np.ndarray) -> np.ndarray:
    base = np.floor(quota).astype(np.int64)
    short = total - int(base.sum())
    # Ties: larger remainder, then larger weight, then lower index (lexsort keys are last-major).
    order = np.lexsort((np.arange(len(quota)), -weights, -(quota - base)))
    base[order[:short]] += 1
    return base


@dataclass(frozen=True)
class Entry:
    """One evaluated candidate: its reward, its distribution, and whatever the search needs back."""

    q: float
    pd: np.ndarray
    payload: Any = None


@dataclass(frozen=True)
class ReplayBuffer:
    """The best `size` candidates of a step. Immutable: `add` returns a new buffer."""

    size: int
    entries: tuple[Entry, ...] = field(default_factory=tuple)

    def add(self, entry: Entry) -> "ReplayBuffer":
        """Keep `entry` while there is room; when full it replaces the worst entry if q >= worst q."""
        if len(self.entries) < self.size:
            return ReplayBuffer(self.size, self.entries + (entry,))
        worst = min(range(len(self.entries)), key=lambda i: self.entries[i].q)
        if entry.q < self.entries[worst].q:
            return self
        return ReplayBuffer(self.size, self.entries[:worst] + (entry,) + self.entries[worst + 1:])

    def best(self) -> Entry:
        if not self.entries:
            raise PruningError("the replay buffer is empty: no candidate was evaluated this step")
        return max(self.entries, key=lambda e: e.q)  # first of equals: stable across runs

    def cleared(self) -> "ReplayBuffer":
        return ReplayBuffer(self.size)


def clip_ratio(old: np.ndarray, new: np.ndarray, clip: float) -> np.ndarray:
    """Rescale `new` so that every entry's ratio new/old lies in [1 - clip, 1 + clip] (old > 0)."""
    safe_old = np.where(old > 0, old, 1.0)
    ratio = np.clip(new / safe_old, 1.0 - clip, 1.0 + clip)
    return np.where(old > 0, old * ratio, new)


def update(pd: np.ndarray, pd_best: np.ndarray, step_length: float, clip: float | None,
           capacity_: np.ndarray) -> np.ndarray:
    """PD <- PD + step_length·(PD_best - PD); with `clip`, the PPO-style bound on PD_new/PD_old."""
    moved = masked(pd + step_length * (pd_best - pd), capacity_)
    if clip is None:
        return moved
    return masked(clip_ratio(pd, moved, clip), capacity_)


def choose(buffer: ReplayBuffer, epsilon: float, rng: np.random.Generator) -> Entry:
    """Epsilon-greedy: a random buffer entry with probability epsilon, else the best."""
    explore = rng.uniform() < epsilon
    if explore and buffer.entries:
        return buffer.entries[int(rng.integers(len(buffer.entries)))]
    return buffer.best()


def epsilon_at(done: int, total_steps: int, start: float, schedule: str = "cosine",
               decay_fraction: float = 0.1) -> float:
    """Exploration rate of the step after `done` completed steps (0 for the first step, which
    explores at `start`): decays over the first `decay_fraction` of `total_steps`, then 0.
    'constant' holds `start` over that window."""
    if schedule not in EPSILON_SCHEDULES:
        raise ConfigError(f"epsilon schedule {schedule!r} is not one of {', '.join(EPSILON_SCHEDULES)}")
    window = total_steps * decay_fraction
    if done >= window or window <= 0:
        return 0.0
    progress = done / window
    if schedule == "linear":
        return max(start * (1.0 - progress), 0.0)
    if schedule == "cosine":
        return max(start * 0.5 * (1.0 + math.cos(math.pi * progress)), 0.0)
    return start


def lookahead_q(q: float, next_level_qs: Sequence[float], gamma: float) -> float:
    """Q += gamma · max Q of the next level (no change when nothing was looked ahead)."""
    return q + gamma * max(next_level_qs) if len(next_level_qs) else q


def accuracy_dropped(previous: float, current: float, threshold: float) -> bool:
    """True when `current` is more than `threshold` (relative to |previous|: metrics may be negative)
    below `previous`."""
    # The tolerance keeps a drop of exactly `threshold` (up to float rounding) on the allowed side.
    return previous - current > threshold * abs(previous) + 1e-9
