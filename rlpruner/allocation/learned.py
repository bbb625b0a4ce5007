"""RL-Pruner's learned allocation: sample distributions around the PD, score them, move the PD
towards each round's best, pick the step's model epsilon-greedily, and guard against collapse.

All randomness of step k, attempt a is drawn from `default_rng([seed, k, a])`, so a resumed run
replays bit for bit without saved generator state.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from . import policy
from .base import Candidate, CountsAt, Plan, Proposal, StepTask


class LearnedOptions(Protocol):
    """The fields of `rlpruner.search.RLConfig` this allocator reads."""

    lr_epoch: int
    patience: int | None
    sample_num: int
    noise: float
    step_length: float
    clip: float | None
    epsilon: float
    epsilon_schedule: str
    epsilon_decay_fraction: float
    sample_step: int
    lookahead_samples: int
    gamma: float
    guard_threshold: float | None
    guard_retries: int
    anchor_margin: float | None
    round_to: int


class LearnedAllocator:
    learned = True

    def __init__(self, options: LearnedOptions) -> None:
        self.rl = options

    def propose(self, task: StepTask) -> Proposal:
        rl, plan = self.rl, task.plan
        with tqdm(total=rl.lr_epoch * rl.sample_num, desc=f"step {task.step}", leave=False, dynamic_ncols=True,
                  disable=not task.progress) as bar:
            chosen, pd, info = self._choose(task, bar)
        return Proposal(chosen=chosen, pd=pd, plan=plan, info=info, counts_at=self._along(chosen.pd, plan))

    def _along(self, pd: np.ndarray, plan: Plan) -> CountsAt:
        """Removal counts for any budget, allocated along `pd`."""
        return lambda budget: policy.allocate(pd, budget, plan.capacity, self.rl.round_to)

    def _choose(self, task: StepTask, bar: Any) -> tuple[Candidate, np.ndarray, dict]:
        """Explore, then pick epsilon-greedily; on an accuracy collapse reset the policy and redo the step."""
        rl, plan = self.rl, task.plan
        mass = (task.pd * (plan.capacity > 0)).sum()
        pd = policy.masked(task.pd, plan.capacity) if mass > 0 else policy.density_init(plan.sizes, plan.capacity)
        epsilon = policy.epsilon_at(task.step - 1, task.planned_steps, rl.epsilon, rl.epsilon_schedule,
                                    rl.epsilon_decay_fraction)
        fallback: policy.Entry | None = None
        reasons: list[str] = []
        for attempt in range(rl.guard_retries + 1):
            rng = np.random.default_rng([task.seed, task.step, attempt])
            anchor = self._anchor(task, pd, rng)
            buffer, pd = self._explore(task, pd, rng, bar, anchor)
            entry = policy.choose(buffer, epsilon, rng)
            explored = entry is not buffer.best()
            if anchor is not None and not explored and not self._beats(entry, anchor):
                entry = anchor
            if rl.guard_threshold is None:
                break
            val = task.validate(entry.payload, task.plan)
            if not policy.accuracy_dropped(task.acc_ref, val, rl.guard_threshold):
                break
            fallback = max((e for e in (fallback, buffer.best(), anchor) if e is not None), key=lambda e: e.q)
            reasons.append(f"the chosen candidate's validation accuracy {val:.2%} is more than "
                           f"{rl.guard_threshold:.0%} below the previous pruned model's {task.acc_ref:.2%}")
            if attempt == rl.guard_retries:
                entry, explored = fallback, False  # out of resets: the best candidate of all attempts
                task.log(f"step {task.step}: guard: {reasons[-1]}; out of resets ({rl.guard_retries}), "
                         "taking the best candidate of all attempts")
                break
            task.log(f"step {task.step}: guard: {reasons[-1]}; resetting the pruning distribution and redoing the step")
            pd = policy.density_init(plan.sizes, plan.capacity)
            bar.reset(total=bar.total)
        info = {"epsilon": epsilon, "explored": explored, "guard_resets": attempt,
                "guard_reason": "; ".join(reasons), "anchored": anchor is not None and entry is anchor}
        if info["anchored"]:
            task.log(f"step {task.step}: anchor: no sampled candidate scored more than {rl.anchor_margin:g} above "
                     f"the allocation along the distribution ({anchor.q:.4f}); keeping that allocation")
        return replace(entry.payload, q=entry.q), pd, info  # q with its look-ahead term

    def _anchor(self, task: StepTask, pd: np.ndarray, rng: np.random.Generator) -> policy.Entry | None:
        """With `anchor_margin`: the step's allocation along `pd` itself (no noise), scored; else None."""
        if self.rl.anchor_margin is None:
            return None
        along = self._along(pd, task.plan)
        counts = along(task.budget_for(along))
        draw = _Draw(counts, pd, self._lookahead(task.plan, counts, pd, self.rl.sample_step - 1, rng))
        candidate, q = draw.value(iter(task.score_all(draw.jobs(), task.plan)), self.rl.gamma)
        return policy.Entry(q, pd, candidate)

    def _beats(self, entry: policy.Entry, anchor: policy.Entry | None) -> bool:
        """Whether a sampled candidate clears the anchor by more than the margin (always, without one)."""
        return anchor is None or entry.q > anchor.q + self.rl.anchor_margin

    def _explore(self, task: StepTask, pd: np.ndarray, rng: np.random.Generator, bar: Any,
                 anchor: policy.Entry | None = None) -> tuple[policy.ReplayBuffer, np.ndarray]:
        """`lr_epoch` rounds of `sample_num` candidates; the policy moves when a round beats the step's best
        (and clears the anchor by its margin, when there is one). A round's distributions (and their
        look-ahead) are all drawn before any is scored, in the order one-at-a-time scoring would draw
        them, so the candidates can be scored together."""
        rl, plan = self.rl, task.plan
        buffer, step_best, stale = policy.ReplayBuffer(rl.sample_num), -math.inf, 0
        for _ in range(rl.lr_epoch):
            if rl.patience is not None and stale >= rl.patience:
                bar.update(bar.total - bar.n)  # the distribution stopped moving: the step is decided
                break
            with task.timer("policy"):
                drawn = [self._draw(task, plan, pd, rng) for _ in range(rl.sample_num)]
            scored = iter(task.score_all([job for draw in drawn for job in draw.jobs()], plan))
            round_best: policy.Entry | None = None
            for draw in drawn:
                candidate, q = draw.value(scored, rl.gamma)
                entry = policy.Entry(q, draw.pd, candidate)
                buffer = buffer.add(entry)
                round_best = entry if round_best is None or entry.q > round_best.q else round_best
                bar.update(1)
            if round_best.q > step_best and self._beats(round_best, anchor):
                with task.timer("policy"):
                    pd = policy.update(pd, round_best.pd, rl.step_length, rl.clip, plan.capacity)
                step_best, stale = round_best.q, 0
            else:
                stale += 1
        return buffer, pd

    def _draw(self, task: StepTask, plan: Plan, pd: np.ndarray, rng: np.random.Generator) -> _Draw:
        """One sampled distribution at the step's equal-cost budget, with its look-ahead tree."""
        rl = self.rl
        sampled = policy.sample(pd, rl.noise, rng, plan.capacity)
        along = self._along(sampled, plan)
        counts = along(task.budget_for(along))
        return _Draw(counts, sampled, self._lookahead(plan, counts, sampled, rl.sample_step - 1, rng))

    def _lookahead(self, plan: Plan, counts: np.ndarray, pd: np.ndarray, depth: int,
                   rng: np.random.Generator) -> list[_Draw]:
        """`lookahead_samples` allocations one more budget deeper than `counts` (recursively, `depth`
        levels); they depend on the parent's counts and distribution only, not on its score."""
        rl = self.rl
        room = plan.capacity - counts
        budget = min(plan.budget, policy.max_budget(room, rl.round_to))
        if depth <= 0 or budget <= 0:
            return []
        children = []
        for _ in range(rl.lookahead_samples):
            child_pd = policy.sample(pd, rl.noise, rng, room)
            child_counts = counts + policy.allocate(child_pd, budget, room, rl.round_to)
            children.append(_Draw(child_counts, child_pd, self._lookahead(plan, child_counts, child_pd, depth - 1,
                                                                          rng)))
        return children


@dataclass(frozen=True)
class _Draw:
    """A drawn candidate and its look-ahead children, to be scored."""

    counts: np.ndarray
    pd: np.ndarray
    children: list[_Draw]

    def jobs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This candidate, then its children's trees: the order one-at-a-time scoring goes in."""
        return [(self.counts, self.pd), *(job for child in self.children for job in child.jobs())]

    def value(self, scored: Iterator[Candidate], gamma: float) -> tuple[Candidate, float]:
        """(this candidate, its Q with the look-ahead term), taking scores from `scored` in `jobs` order."""
        candidate = next(scored)
        deeper = [child.value(scored, gamma)[1] for child in self.children]
        return candidate, policy.lookahead_q(candidate.q, deeper, gamma)
