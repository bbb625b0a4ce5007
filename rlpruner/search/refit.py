"""Refit: the original model pruned afresh, one-shot, to the widths a search found.

The search decides how wide every group ends up; the model it walked there is a by-product, damaged
by every step's cut. Refitting takes the *original* model, ranks each group's units by the run's
importance criterion once, on the original, removes the least important ones down to the found
widths, re-estimates BatchNorm, and hands that model to the final fine-tune instead (the protocol of
AMC and EagleEye: search the widths, then spend the whole recovery budget on one model). Its FLOPs
and parameters are those of the searched model: both depend only on the widths.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
from torch import nn

from ..batchnorm import recalibrate
from ..errors import PruningError
from ..graph import DependencyGraph
from ..importance import get as get_importance, lowest
from ..surgery import prune_channels
from .context import IMPORTANCE, Context, derived_seed, seeded

REFIT = 4  # purpose mixed into the seed of the refit's importance scores


def refit_removals(ctx: Context, model: nn.Module, graph: DependencyGraph,
                   widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Units of `model` (a copy of the original; `graph` its dependency graph) to remove per group so
    that every group keeps `widths[group]`: the least important by `rl.importance`, scored on it."""
    groups = {g.name: g for g in graph.groups}
    for name in ctx.names:
        width = int(widths.get(name, ctx.original_sizes[name]))
        if not 1 <= width <= ctx.original_sizes[name]:
            raise PruningError(f"refit: group {name!r} cannot keep {width} of its {ctx.original_sizes[name]} units")
        if width < ctx.original_sizes[name] and not (name in groups and groups[name].prunable):
            raise PruningError(f"refit: group {name!r} of the original model is not prunable, yet the search "
                               f"narrowed it to {width} units")
    cuts = {n: ctx.original_sizes[n] - int(widths.get(n, ctx.original_sizes[n])) for n in ctx.names}
    if not any(cuts.values()):
        return {}
    criterion = get_importance(ctx.config.rl.importance, data=ctx.data.calibration,
                               seed=derived_seed(ctx.config.seed, REFIT, IMPORTANCE))
    with seeded(ctx, REFIT, IMPORTANCE):
        scores = criterion(model, graph)
    return {n: lowest(np.asarray(scores[n]), c) for n, c in cuts.items() if c > 0}


def refit(ctx: Context, widths: Mapping[str, int]) -> nn.Module:
    """A copy of the original model with every group cut to `widths` (group name -> units kept),
    BatchNorm re-estimated on the run's BN images; the original is left as it is."""
    model = copy.deepcopy(ctx.original)
    graph = ctx.graph_of(model)
    removals = ctx.world.first(lambda: refit_removals(ctx, model, graph, widths),
                               "refit: importance on the original model")
    prune_channels(model, graph, removals, inplace=True)
    return ctx.world.sync(recalibrate(model, ctx.data.bn_batches, ctx.task.forward))
