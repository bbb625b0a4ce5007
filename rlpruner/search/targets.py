"""What a compression target means, as objects: one class per kind, registered by name.

A target says "remove this fraction of the original X". Each kind knows how much X a (candidate)
model still has (`amount`), the goal in absolute terms (`goal`), whether a model reached it
(`reached`), and how the search plans its steps towards it (`proxy`). A new kind (a user metric)
is one new class added to `TARGETS`.

Amounts are read off a `Measure`: what a model keeps, counted by the dependency graph (units,
params, FLOPs) or predicted by the run's latency table (rlpruner.latency). Lower is more
compressed; `reached` is `amount <= goal`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Measure:
    """What a model keeps: prunable units, parameters, FLOPs and (with a latency table) latency."""

    units: int
    params: int
    flops: int
    latency_ms: float | None = None


class TargetKind:
    """Behaviour of one target kind. Subclasses set `name` and `amount`."""

    name = ""
    needs_latency = False   # the run builds a latency table (rlpruner.latency) to judge this target
    trims = True            # a step that overshoots is trimmed to the goal by bisection

    def amount(self, m: Measure) -> float:
        raise NotImplementedError

    def goal(self, value: float, base: Measure) -> float:
        """The most a model may keep to reach a reduction of `value` (a fraction) from `base`."""
        return (1.0 - value) * self.amount(base)

    def reached(self, m: Measure, goal: float) -> bool:
        return self.amount(m) <= goal

    @property
    def proxy(self) -> "TargetKind":
        """The kind the step schedule is planned with (a cheap, analytic one)."""
        return self

    def budget_cap(self, now: Measure, goal: float, multiple: int) -> int | None:
        """The most units a step may remove, when the target fixes it exactly (else None)."""
        return None

    def unreachable(self, value: float, base: Measure, smallest: Measure, limit: str) -> str | None:
        """Why `value` cannot be reached when even `smallest` (everything prunable removed) is not
        enough; None when it can."""
        if self.reached(smallest, self.goal(value, base)):
            return None
        most = max(1.0 - self.amount(smallest) / self.amount(base), 0.0)
        return f"target {self.name} reduction {value:.1%} is unreachable: {limit} reduces {self.name} by at most {most:.1%}"


class Sparsity(TargetKind):
    """The share of the original prunable channels removed (the paper's target)."""

    name, trims = "sparsity", False

    def amount(self, m: Measure) -> float:
        return m.units

    def goal(self, value: float, base: Measure) -> float:
        return float(base.units - math.ceil(value * base.units - 1e-9))

    def budget_cap(self, now: Measure, goal: float, multiple: int) -> int | None:
        return math.ceil((now.units - int(goal)) / multiple) * multiple

    def unreachable(self, value: float, base: Measure, smallest: Measure, limit: str) -> str | None:
        if self.reached(smallest, self.goal(value, base)):
            return None
        removable = base.units - smallest.units
        return (f"target sparsity {value:.1%} is unreachable: {limit} removes at most "
                f"{removable / base.units:.1%} of the {base.units} prunable channels")


class Flops(TargetKind):
    name = "flops"

    def amount(self, m: Measure) -> float:
        return m.flops


class Params(TargetKind):
    name = "params"

    def amount(self, m: Measure) -> float:
        return m.params


class Latency(TargetKind):
    """Latency on the run's runtime, as its latency table predicts it: steps of equal predicted
    latency, candidates never timed (the final model is)."""

    name, needs_latency = "latency", True

    def amount(self, m: Measure) -> float:
        if m.latency_ms is None:
            raise ValueError("a latency target needs the run's latency table")
        return m.latency_ms


TARGETS: Registry[TargetKind] = Registry("target kind")
for _kind in (Sparsity(), Flops(), Params(), Latency()):
    TARGETS.add(_kind.name, _kind)
