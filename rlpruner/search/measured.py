"""A latency target checked by the clock, not only by the table.

The search plans and trims with the latency table's predictions; the table's error on a pruned
model is a few percent, and larger where it matters most (an allocation chosen because the table
says it is fast is where the table is most likely optimistic). So when the steps reach the table's
goal, the model is timed on the run's runtime beside the original (in turns, so that a machine
slowing down over those seconds slows both alike; on a CPU runtime in a fresh process, away from
the state the search left its own in: latency/fresh.py). A model that misses the target by more than
`latency_slack` sends the search on, towards a goal in predicted milliseconds corrected by what the
clock said. A timing is believed only as far as its own precision: the turns give an interval for
the reduction (`Runtime.time_ratio`, 95 %), and a miss counts only when that interval lies wholly
below target - slack. On a busy machine the interval widens and the model is kept rather than
pruned on for noise (short timings of a 1-ms model, whose spread was several times the slack, sent
searches well past their target: benchmarks/check_noise.py). The table is taken to overstate the
reduction by the factor just measured:

    new goal = P0 x (1 - target x min(p / m, MAX_OPTIMISM))

(P0: the original's predicted latency; p, m: the model's predicted and timed reduction). Timings
are noisy, so they are believed only so far: at most `MAX_OPTIMISM`; and a timing that finds less
reduction than the one before, for a model pruned further since, says the noise is larger than the
table's error, so the model is kept (as it is when it times no faster than the original). At most
`latency_checks` timings; each is kept in the run's state (so a resumed run does not time again
what it already decided) and in results.json.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .checkpoint import State
from .context import Context
from .step import group_table

MAX_OPTIMISM = 1.5  # the most a timing is believed to show the table overstating a reduction by


def check_measured(ctx: Context, state: State) -> State:
    """`state` (done) as it stands, or not done with a corrected goal when the timed model misses the
    latency target; a run without a latency target, or out of checks, is returned unchanged."""
    if (not state.done or not ctx.target.needs_latency or ctx.latency_table is None
            or len(state.checks) >= ctx.config.latency_checks):
        return state
    graph = ctx.graph_of(state.model)
    timed, where = ctx.latency_ratio(state.model)
    predicted_ms, predicted_original_ms = ctx.latency_table.predict(graph.shapes), ctx.base["latency_ms"]
    target, slack = ctx.config.target.value, ctx.config.latency_slack
    reduction, lowest, highest = timed.reductions
    predicted = 1.0 - predicted_ms / predicted_original_ms
    check: dict[str, Any] = {"step": state.step, "original_ms": timed.first_ms, "measured_ms": timed.second_ms,
                             "predicted_ms": predicted_ms, "goal_ms": in_effect(ctx, state).goal,
                             "measured_reduction": reduction, "measured_low": lowest, "measured_high": highest,
                             "turns": timed.turns, "process": where, "predicted_reduction": predicted,
                             "met": highest >= target - slack, "next_goal_ms": None}
    fresh = " in a fresh process" if where == "fresh" else ""
    said = (f"step {state.step}: timed {timed.second_ms:.3g} ms against the original's {timed.first_ms:.3g} ms "
            f"in {timed.turns} turns{fresh}: {reduction:.1%} less latency ({timed.confidence:.0%} interval "
            f"{lowest:.1%} to {highest:.1%}; the table predicted {predicted:.1%}; target {target:.1%})")
    if check["met"]:
        within = "" if reduction >= target - slack else ", within the timing's precision"
        ctx.log(f"{said}: target met{within}")
        return replace(state, checks=[*state.checks, check])
    if int(group_table(ctx, graph)[1].sum()) == 0:
        ctx.log(f"{said}: missed, and every group is down to {ctx.config.rl.floor_text}")
        return replace(state, checks=[*state.checks, check])
    if reduction <= 0.0 or predicted <= 0.0:
        ctx.log(f"{said}: missed, and the timed model is no faster than the original, so the timing cannot "
                "correct the table's goal: the model is kept (rebuild the table on a quiet machine)")
        return replace(state, checks=[*state.checks, check])
    if state.checks and reduction <= state.checks[-1]["measured_reduction"]:
        ctx.log(f"{said}: missed, and less than the {state.checks[-1]['measured_reduction']:.1%} timed before "
                "for a model pruned further since: the timings are noisier than the table's error, so the "
                "model is kept")
        return replace(state, checks=[*state.checks, check])
    goal = predicted_original_ms * (1.0 - target * min(predicted / reduction, MAX_OPTIMISM))
    check["next_goal_ms"] = goal
    left = ctx.config.latency_checks - len(state.checks) - 1
    ctx.log(f"{said}: missed by more than {slack:.1%}; the search goes on to a predicted "
            f"{goal:.3g} ms ({left} more timing{'s' if left != 1 else ''} at most; --latency-checks 0 trusts "
            "the table)")
    return replace(state, done=False, goal=goal, checks=[*state.checks, check])


def in_effect(ctx: Context, state: State) -> Context:
    """The context the next step runs in: its goal corrected by the last timing, if any."""
    return ctx if state.goal is None else replace(ctx, goal=state.goal)
