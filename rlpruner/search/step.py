"""One pruning step: plan, allocate, trim to the target, cut, recover, record.

1. **Plan**: trace the current model; every group's size and how much it may still lose; the step
   budget; the importance order of every group's units (scored once per step).
2. **Allocate**: the run's allocator (`rlpruner.allocation`) proposes the step's removal counts,
   scoring candidates through `score` (a structural copy that shares every unchanged tensor,
   evaluated on the candidate validation batches; FLOPs/params from the graph's analytic count).
3. **Trim**: when the proposal passes the target's goal, remove only as many units as needed.
4. **Cut and recover**: physical surgery, then knowledge distillation when one is due.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..allocation import Candidate, Plan, StepTask, policy
from ..allocation.base import Job
from ..allocation.budget import smallest_passing
from ..batches import batch_len
from ..batchnorm import recalibrate
from ..distill import distill, probe
from ..errors import PruningError
from ..importance import get as get_importance
from ..report import StepRecord
from ..surgery import apply_slices, prune_channels
from .checkpoint import State, Teacher
from .context import (
    FINAL,
    IMPORTANCE,
    KD,
    Context,
    after_removal,
    derived_seed,
    seeded,
)
from .judges import JUDGES, Evidence
from .targets import Measure


def run_step(ctx: Context, state: State) -> State:
    step, before = state.step + 1, ctx.timer.snapshot()
    start = time.perf_counter()
    plan = plan_step(ctx, state, step)
    judge, rl = JUDGES.get(ctx.config.rl.judge), ctx.config.rl
    with ctx.timer("eval"):
        reference = References(
            ctx.task.outputs(state.model, ctx.data.score_batches) if judge.needs_reference else None,
            ctx.task.outputs(state.teacher.model, ctx.data.bn_batches) if rl.probe_steps else None)
    scored: list[Candidate] = []
    scored_by = [0] * ctx.world.size    # candidates each rank scored
    validated: dict[bytes, float] = {}  # the guard's check of the chosen counts serves the record too

    def shared(jobs: Sequence[Job], plan: Plan) -> list[list[Candidate]]:
        """Each rank scores its block of `jobs`; every rank gets all the blocks, in rank order."""
        mine = ctx.world.share(len(jobs))
        return ctx.world.gather(lambda: [score(ctx, state.model, plan, *jobs[i], reference) for i in mine],
                                f"step {step}: scoring candidates")

    def score_many(jobs: Sequence[Job], plan: Plan) -> list[Candidate]:
        parts = shared(jobs, plan)
        for rank, part in enumerate(parts):
            scored_by[rank] += len(part)
        flat = [c for part in parts for c in part]
        scored.extend(flat)
        return flat

    def scorer(counts: np.ndarray, pd: np.ndarray, plan: Plan) -> Candidate:
        return score_many([(counts, pd)], plan)[0]

    def rescore(counts: np.ndarray, pd: np.ndarray, plan: Plan) -> Candidate:  # the trim's: not a candidate
        return shared([(counts, pd)], plan)[0][0]

    def validator(candidate: Candidate, plan: Plan) -> float:
        key = candidate.counts.tobytes()
        if key not in validated:
            validated[key] = validate(ctx, state.model, plan, candidate)
        return validated[key]

    def after(counts: np.ndarray) -> Measure:
        return after_removal(plan.graph, ctx.names, counts, int(plan.sizes.sum()), ctx.latency_table)

    def cost_left(counts: np.ndarray) -> float:
        return ctx.target.proxy.amount(after(counts))

    def latency_left(counts: np.ndarray) -> float:
        return after(counts).latency_ms

    now = cost_left(np.zeros_like(plan.sizes))
    task = StepTask(step=step, model=state.model, plan=plan, names=ctx.names, pd=state.pd, score=scorer,
                    budget_for=lambda counts_at: budget_for(ctx, plan, counts_at, now, cost_left),
                    validate=validator, acc_ref=state.acc_ref,
                    seed=ctx.config.seed, planned_steps=ctx.planned_steps, log=ctx.log, timer=ctx.timer,
                    progress=ctx.progress and ctx.world.main, score_many=score_many, cost_left=cost_left,
                    price_left=cost_left if ctx.latency_table is None else latency_left)
    proposal = ctx.allocator.propose(task)
    plan = proposal.plan
    chosen, latency = trim(ctx, state.model, plan, proposal.chosen, proposal.counts_at, rescore)
    pruned_val = validator(chosen, plan)
    removals = _removals(ctx, plan, chosen.counts)
    with ctx.timer("surgery"):
        model = prune_channels(state.model, plan.graph, removals, inplace=True)
        ctx.world.sync(recalibrate(model, ctx.data.bn_batches, ctx.task.forward))
    val, teacher = _recover(ctx, state.teacher, model, step)
    widths = plan.sizes - chosen.counts
    done = ctx.target.reached(_measure(chosen, latency, int(widths.sum())), ctx.goal)
    if not done and int((plan.capacity - chosen.counts).sum()) == 0:
        ctx.log(f"step {step}: every group is down to {ctx.config.rl.floor_text}; stopping short of the target")
        done = True
    times = {k: v - before.get(k, 0.0) for k, v in ctx.timer.snapshot().items()}
    times["wall_s"] = time.perf_counter() - start
    record = _step_record(ctx, step, chosen, widths, proposal.pd,
                          {**proposal.info, "candidates": len(scored), "scored_by": scored_by},
                          val=val, pruned_val=pruned_val, latency=latency, teacher=teacher, times=times)
    # the guard compares like with like: the next step's chosen candidate with this one, both just pruned
    return State(step=step, pd=proposal.pd, model=model, teacher=teacher, acc_ref=pruned_val,
                 removals=state.removals + [{n: r.tolist() for n, r in removals.items()}],
                 records=state.records + [record], done=done, goal=state.goal, checks=state.checks)


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------

def plan_step(ctx: Context, state: State, step: int) -> Plan:
    with ctx.timer("trace"):
        graph = ctx.graph_of(state.model)
    with ctx.timer("policy"):
        sizes, capacity = group_table(ctx, graph)
        budget = min(ctx.step_budget, policy.max_budget(capacity, ctx.config.rl.multiple))
        cap = ctx.target.budget_cap(Measure(int(sizes.sum()), 0, 0), ctx.goal, ctx.config.rl.multiple)
        if cap is not None:
            budget = min(budget, cap)
        if budget <= 0:
            raise PruningError(f"step {step}: no channel can be removed any more (every group is down to "
                               f"{ctx.config.rl.floor_text}) and the target is not reached")
    with ctx.timer("importance"):
        scores = ctx.world.first(lambda: _importance_scores(ctx, state.model, graph, capacity, step),
                                 f"step {step}: importance")
    order = {n: np.argsort(s, kind="stable") for n, s in scores.items()}
    return Plan(graph, sizes, capacity, budget, order, scores)


def group_table(ctx: Context, graph: Any) -> tuple[np.ndarray, np.ndarray]:
    """Current size and removable capacity of every group of the original model, in `ctx.names` order."""
    groups = {g.name: g for g in graph.groups}
    sizes = np.array([groups[n].size if n in groups else 0 for n in ctx.names], dtype=np.int64)
    open_ = np.array([n in groups and groups[n].prunable for n in ctx.names])
    original = np.array([ctx.original_sizes[n] for n in ctx.names], dtype=np.int64)
    return sizes, np.where(open_, ctx.config.rl.capacity(sizes, original), 0)


def _importance_scores(ctx: Context, model: nn.Module, graph: Any, capacity: np.ndarray,
                       step: int) -> dict[str, np.ndarray]:
    """The run's criterion's score of every unit of each open group, computed once per step."""
    criterion = get_importance(ctx.config.rl.importance, data=ctx.data.calibration,
                               seed=derived_seed(ctx.config.seed, step, IMPORTANCE))
    with seeded(ctx, step, IMPORTANCE):
        scores = criterion(model, graph)
    return {n: np.asarray(scores[n], dtype=np.float64) for n, c in zip(ctx.names, capacity) if c > 0}


def _removals(ctx: Context, plan: Plan, counts: np.ndarray) -> dict[str, np.ndarray]:
    return {n: plan.order[n][:c] for n, c in zip(ctx.names, counts) if c > 0}


# --------------------------------------------------------------------------------------------------
# Score and trim
# --------------------------------------------------------------------------------------------------

def _reward(ctx: Context, judged: float, params: int, flops: int, latency_ms: float | None) -> float:
    alpha, beta, lam = ctx.config.reward.weights()
    q = judged + alpha * (1.0 - flops / ctx.base["flops"]) + beta * (1.0 - params / ctx.base["params"])
    if lam and latency_ms is not None:
        q += lam * (1.0 - latency_ms / ctx.base["latency_ms"])
    return q


@dataclass(frozen=True)
class References:
    """What a step computes once for all its candidates: the current model's outputs on the scoring
    set (for a judge that needs them) and the teacher's on the BN images (for the probe)."""

    judge: list[Any] | None = None
    probe: list[Any] | None = None


def score(ctx: Context, model: nn.Module, plan: Plan, counts: np.ndarray, pd: np.ndarray,
          reference: References | None = None) -> Candidate:
    """Build one candidate as a structural copy, re-estimate its BatchNorm statistics, (with
    `probe_steps`) let a private copy take a few KD steps, and score it on the scoring subset of
    validation with the run's judge."""
    reference, rl = reference or References(), ctx.config.rl
    with ctx.timer("surgery"):
        slices = plan.graph.slices(_removals(ctx, plan, counts))
        candidate = apply_slices(model, slices, inplace=False)
        params, flops = plan.graph.count(slices=slices)
    with ctx.timer("eval"):
        recalibrate(candidate, ctx.data.bn_batches, ctx.task.forward)
    if rl.probe_steps:
        with ctx.timer("probe"), torch.enable_grad():
            candidate = probe(candidate, ctx.data.bn_batches, reference.probe, replace(ctx.config.kd, lr=rl.probe_lr),
                              ctx.task, ctx.distiller, rl.probe_steps)
    with ctx.timer("eval"):
        judge, batches = JUDGES.get(rl.judge), ctx.data.score_batches
        outputs = ctx.task.outputs(candidate, batches) if judge.needs_outputs or ctx.task.metric is None else None
        acc = ctx.task.score(candidate, batches, outputs)
        judged = judge.score(Evidence(acc, outputs, reference.judge, batches, ctx.task, ctx.distiller))
        latency = ctx.predicted_ms(plan.graph, slices=slices)  # the latency table's (no timing)
    return Candidate(counts, pd, acc, params, flops, latency, _reward(ctx, judged, params, flops, latency))


def validate(ctx: Context, model: nn.Module, plan: Plan, candidate: Candidate) -> float:
    """A candidate's metric on the whole validation split, BatchNorm recalibrated: what the guard
    and the step's record use (the scoring subset only ranks candidates)."""
    with ctx.timer("surgery"):
        pruned = apply_slices(model, plan.graph.slices(_removals(ctx, plan, candidate.counts)), inplace=False)
    with ctx.timer("eval"):
        return ctx.evaluate(recalibrate(pruned, ctx.data.bn_batches, ctx.task.forward))


def budget_for(ctx: Context, plan: Plan, counts_at: Callable[[int], np.ndarray], now: float,
               cost_left: Callable[[np.ndarray], float]) -> int:
    """The channel budget at which `counts_at` removes the step's cost in the target's proxy unit from
    the current model (which has `now` of it; `cost_left(counts)`: what it keeps after removing
    `counts`): equal-cost candidates, the distribution decides where, the step decides how much. The
    plan's channel budget when the run compares candidates at equal channels."""
    multiple = ctx.config.rl.multiple
    most = policy.max_budget(plan.capacity, multiple)
    if not ctx.config.rl.equal_cost:
        return plan.budget

    def removes_enough(chunks: int) -> bool:
        return now - cost_left(counts_at(chunks * multiple)) >= ctx.step_cost

    limit = most if ctx.target.trims else plan.budget  # sparsity: the plan's budget is already exact
    if not removes_enough(limit // multiple):
        return limit
    return smallest_passing(limit // multiple, removes_enough) * multiple


def _measure(candidate: Candidate, latency_ms: float | None, units_left: int) -> Measure:
    return Measure(units=units_left, params=candidate.params, flops=candidate.flops, latency_ms=latency_ms)


def _predicted(ctx: Context, plan: Plan, candidate: Candidate) -> float | None:
    if candidate.latency_ms is not None:
        return candidate.latency_ms
    return ctx.predicted_ms(plan.graph, _removals(ctx, plan, candidate.counts))


def trim(ctx: Context, model: nn.Module, plan: Plan, chosen: Candidate, counts_at: Callable[[int], np.ndarray],
         rescore: Callable[[np.ndarray, np.ndarray, Plan], Candidate]) -> tuple[Candidate, float | None]:
    """When the chosen candidate passes the goal, remove only as many units as needed: bisection over
    the step budget (`counts_at(budget)` allocates a smaller budget the way the candidate was), then
    whole chunks given back one group at a time while the goal still holds, so that one coarse unit
    (a residual group spans many layers) does not carry finer ones past the target."""
    latency = _predicted(ctx, plan, chosen)
    units_before = int(plan.sizes.sum())
    if not ctx.target.trims or not ctx.target.reached(_measure(chosen, latency, units_before), ctx.goal):
        return chosen, latency
    multiple = ctx.config.rl.multiple
    probes: dict[bytes, tuple[Candidate, float | None, bool]] = {}

    def probe(counts: np.ndarray) -> tuple[Candidate, float | None, bool]:
        key = counts.tobytes()
        if key not in probes:
            with ctx.timer("surgery"):
                params, flops = plan.graph.count(_removals(ctx, plan, counts))
            candidate = replace(chosen, counts=counts, params=params, flops=flops, latency_ms=None)
            probe_latency = _predicted(ctx, plan, candidate)
            reached = ctx.target.reached(_measure(candidate, probe_latency, units_before - int(counts.sum())),
                                         ctx.goal)
            probes[key] = (candidate, probe_latency, reached)
        return probes[key]

    # the chosen candidate's own budget (exact for round_to=1; a partial alignment chunk can make it an
    # underestimate, and then the bisection keeps the candidate's counts)
    top = -(-int(chosen.counts.sum()) // multiple)
    chunks = smallest_passing(top, lambda k: probe(counts_at(k * multiple))[2])
    counts = counts_at(chunks * multiple) if probe(counts_at(chunks * multiple))[2] else chosen.counts
    def kept(c: np.ndarray) -> float | None:  # what a passing allocation keeps, in the target's unit
        candidate, probe_latency, reached = probe(c)
        units = units_before - int(c.sum())
        return ctx.target.amount(_measure(candidate, probe_latency, units)) if reached else None

    counts = _give_back(counts, plan.capacity, multiple, kept)
    if np.array_equal(counts, chosen.counts):
        return chosen, latency
    rescored = rescore(counts, chosen.pd, plan)
    probe_latency = probe(counts)[1]
    return rescored, probe_latency if rescored.latency_ms is None else rescored.latency_ms


def _give_back(counts: np.ndarray, capacity: np.ndarray, multiple: int,
               kept: Callable[[np.ndarray], float | None]) -> np.ndarray:
    """Greedily take chunks back while the goal holds (`kept` is None once it does not), each time the
    chunk that gives back the most (ties: the lower group)."""
    short = (-np.asarray(capacity, dtype=np.int64)) % multiple
    while True:
        best, best_kept = None, -np.inf
        for i in np.flatnonzero(counts > 0):
            fewer = counts.copy()
            fewer[i] = policy.chunk_counts(np.array([(counts[i] + short[i]) // multiple - 1]),
                                           np.array([capacity[i]]), multiple)[0]
            amount = kept(fewer)
            if amount is not None and amount > best_kept:
                best, best_kept = fewer, amount
        if best is None:
            return counts
        counts = best


# --------------------------------------------------------------------------------------------------
# Recovery and the step's record
# --------------------------------------------------------------------------------------------------

def _recovery_loaders(ctx: Context, seed: int, batch_size: int) -> Any:
    """A freshly seeded training loader per recovery (so a resumed run shuffles identically)."""
    train = ctx.data.source.recovery(seed, batch_size, ctx.config.kd.augment, ctx.world)
    return SimpleNamespace(train=train, val=ctx.data.val_batches)


def distill_for(ctx: Context, model: nn.Module, teacher: Teacher, epochs: int, *keys: int) -> float:
    """KD fine-tuning for `epochs`; returns the student's validation metric."""
    kd = replace(ctx.config.kd, epochs=epochs, progress=ctx.config.progress if ctx.config.kd.progress is None
                 else ctx.config.kd.progress)
    with ctx.timer("recovery"), seeded(ctx, *keys):
        loaders = _recovery_loaders(ctx, derived_seed(ctx.config.seed, *keys), kd.batch_size)
        result = distill(model, teacher.model, loaders, kd, device=ctx.device, teacher_val=teacher.val,
                         desc=f"KD {'final' if keys[-1] == FINAL else f'step {keys[0]}'}", task=ctx.task,
                         outputs=ctx.distiller, precision=ctx.precision, world=ctx.world, evaluate=ctx.evaluate)
    if result.retries:
        ctx.log(f"KD {'final' if keys[-1] == FINAL else f'step {keys[0]}'}: the loss diverged; restarted "
                f"{result.retries} time(s) from the last good weights, finished at lr {result.lr:g}")
    return result.student_val


def recovery_due(period: int, kd_epochs: int, step: int) -> bool:
    """Whether step `step` (from 1) ends with KD recovery: every `period` steps (0: never while
    searching), when there are epochs to spend."""
    return bool(period and kd_epochs and step % period == 0)


def _recover(ctx: Context, teacher: Teacher, model: nn.Module, step: int) -> tuple[float, Teacher]:
    """(validation metric, teacher) after this step's recovery, when one is due."""
    kd = ctx.config.kd
    if not recovery_due(ctx.config.post_train_period, kd.epochs, step):
        with ctx.timer("recovery"):
            return ctx.evaluate(model), teacher
    val = distill_for(ctx, model, teacher, kd.epochs, step, KD)
    if kd.switch_teacher and val > teacher.val + kd.switch_margin:
        return val, Teacher(copy.deepcopy(model).eval(), step, val)
    return val, teacher


def _step_record(ctx: Context, step: int, chosen: Candidate, widths: np.ndarray, pd: np.ndarray, info: dict,
                 *, val: float, pruned_val: float, latency: float | None, teacher: Teacher,
                 times: dict[str, float]) -> StepRecord:
    removed_total = ctx.total_units - int(widths.sum())
    return StepRecord(
        step=step, removed=int(chosen.counts.sum()), removed_total=removed_total,
        sparsity=removed_total / ctx.total_units, flops=int(chosen.flops), params=int(chosen.params),
        flops_reduction=1.0 - chosen.flops / ctx.base["flops"],
        params_reduction=1.0 - chosen.params / ctx.base["params"], val_acc_pruned=pruned_val, val_acc=val,
        reward=chosen.q, epsilon=info["epsilon"], explored=info["explored"], guard_resets=info["guard_resets"],
        teacher=teacher.label, latency_ms=latency, widths={n: int(w) for n, w in zip(ctx.names, widths)},
        pd={n: float(p) for n, p in zip(ctx.names, pd)}, times=times, guard_reason=info.get("guard_reason", ""),
        anchored=info.get("anchored", False),
        candidates=info["candidates"], scored_by=list(info.get("scored_by", [])), judge=ctx.config.rl.judge,
        score_samples=sum(batch_len(b) for b in ctx.data.score_batches), score_split=ctx.config.rl.score_split,
        bn_samples=sum(batch_len(b) for b in ctx.data.bn_batches), probe_steps=ctx.config.rl.probe_steps)


def step_line(record: StepRecord) -> str:
    """The one-line log of a step, as the CLI prints it."""
    latency = "" if record.latency_ms is None else f"  latency {record.latency_ms:.3f} ms (predicted)"
    guard = f"  guard resets {record.guard_resets}" if record.guard_resets else ""
    guard += "  anchored" if record.anchored else ""
    probed = f", probe {record.probe_steps}" if record.probe_steps else ""
    split = " training" if record.score_split == "train" else ""
    judged = (f"  [{record.judge} on {record.score_samples}{split} images, BN {record.bn_samples}{probed}]"
              if record.judge else "")
    return (f"step {record.step:3d}  removed {record.removed:4d} (total {record.removed_total}, "
            f"sparsity {record.sparsity:.1%})  FLOPs left {1 - record.flops_reduction:.1%}  "
            f"params left {1 - record.params_reduction:.1%}  val {record.val_acc:.2%} "
            f"(pruned {record.val_acc_pruned:.2%})  reward {record.reward:.4f}{latency}{guard}{judged}")
