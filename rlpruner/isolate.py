"""Fail small: when pruning breaks the model's forward, find the groups responsible and freeze only them.

A model may build a shape from Python integers (`x.view(B, 64, -1)`, `split(x, [24, 40])` with
literal sizes) that the trace cannot see. Pruning a group whose channels pass through such a spot
breaks the forward; every other group is independent of it. `breaking_groups` finds the culprits
by pruning halves of the removal set on shape-only copies (a binary search per culprit), so the rest
of the model still prunes, exactly, and the warning names the op, the module and the shape.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch import nn

from .graph import DependencyGraph, ForwardFailure, Removals, forward_failure
from .surgery import Fixups, prune_channels

Check = Callable[[Sequence[str]], "ForwardFailure | None"]


def breaking_groups(model: nn.Module, graph: DependencyGraph, removals: Removals, example_inputs: Any,
                    fixups: Fixups | None = None) -> dict[str, ForwardFailure]:
    """{group name: how the forward fails} for the groups of `removals` whose pruning breaks `model`.

    Pruning every other group of `removals` leaves a model that runs. Groups that break only in
    combination are all named (with the failure of the combination)."""
    names = [n for n, units in removals.items() if len(units)]

    def check(subset: Sequence[str]) -> ForwardFailure | None:
        if not subset:
            return None
        pruned = prune_channels(model, graph, {n: removals[n] for n in subset}, inplace=False, fixups=fixups)
        return forward_failure(pruned, example_inputs)

    found: dict[str, ForwardFailure] = {}
    failure = check(names)
    while failure is not None:
        culprits, failure = _narrow(names, failure, check)
        found.update((n, failure) for n in culprits)
        names = [n for n in names if n not in culprits]
        failure = check(names)
    return found


def breaking_at_half(model: nn.Module, graph: DependencyGraph, example_inputs: Any) -> dict[str, ForwardFailure]:
    """`breaking_groups` for half of the units of every prunable group: the probe run before a search
    (and by benchmarks/coverage.py) to find the groups a hard-coded count forbids touching."""
    probe = {g.name: np.arange(max(1, g.size // 2)) for g in graph.prunable_groups()}
    return breaking_groups(model, graph, probe, example_inputs)


def _narrow(names: list[str], failure: ForwardFailure, check: Check) -> tuple[list[str], ForwardFailure]:
    """A small failing subset of `names` (which fail together with `failure`), by halving."""
    while len(names) > 1:
        half = len(names) // 2
        for part in (names[:half], names[half:]):
            part_failure = check(part)
            if part_failure is not None:
                names, failure = part, part_failure
                break
        else:
            return names, failure  # only the combination fails
    return names, failure


def frozen_reasons(found: Mapping[str, ForwardFailure]) -> dict[str, str]:
    """The graph reasons ({group: why}) for groups that broke the forward."""
    return {name: f"pruning it breaks {failure}" for name, failure in found.items()}


def warn_frozen(found: Mapping[str, ForwardFailure], graph: DependencyGraph) -> None:
    if not found:
        return
    listed = "; ".join(f"{name!r} ({graph.group(name).size} channels): {failure}"
                       for name, failure in list(found.items())[:6])
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    warnings.warn(
        f"rlpruner: froze {len(found)} group(s) whose pruning breaks the model's forward, probably a "
        f"hard-coded channel count; the rest is pruned: {listed}{more}. Give the op a rule or fix the "
        "count in the model to prune them (docs/custom-ops.md).", stacklevel=3)
