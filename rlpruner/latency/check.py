"""How far a latency table can be trusted, and which width multiple a runtime likes.

`prediction_error` times random pruned models (every group keeps its own random share, unlike the
uniform models the table was fitted on) in turns with the original and compares with the table's
prediction: of each latency, and of each latency as a share of the original's.
`rounding_costs` times the model's costliest layers at many widths; a width's penalty is how much
slower it runs than the fastest width at least as wide (1: no wider width is faster, so the width
is a fair choice). `choose_round_to` picks the smallest multiple whose widths have (almost) the
lowest mean penalty. `aligned_model_costs` asks the same of whole models, through a table: some
runtimes (ONNX Runtime's blocked layouts) pay for a width off their block *between* layers, which
a layer timed alone does not show and the table's block term does.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import DependencyGraph
from .runtimes import Runtime, Stopwatch, Turns
from .ops import Op, nearest_multiple, random_removals
from .table import WHOLE_TURNS, LatencyTable


@dataclass(frozen=True)
class PredictionError:
    """The table's error on random pruned models, timed in turns with the original: of their latency
    (`errors`), and of their latency as a share of the original's (`share_errors`: what a latency
    target or reduction rests on; a table whose every prediction is 10 % high has no error there)."""

    samples: list[dict[str, float]]  # keep range, predicted and measured ms of each random model
    original: dict[str, float] | None = None  # the original's predicted and measured ms (None: not timed)

    @property
    def errors(self) -> list[float]:
        return [abs(s["predicted_ms"] - s["measured_ms"]) / s["measured_ms"] for s in self.samples]

    @property
    def share_errors(self) -> list[float]:
        if self.original is None:
            return []
        p0, m0 = self.original["predicted_ms"], self.original["measured_ms"]
        return [abs((s["predicted_ms"] / p0) / (s["measured_ms"] / m0) - 1.0) for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.errors)

    @property
    def worst(self) -> float:
        return max(self.errors)

    def to_dict(self) -> dict[str, Any]:
        shares = self.share_errors
        return {"median": self.median, "worst": self.worst, "samples": self.samples, "original": self.original,
                "share_median": statistics.median(shares) if shares else None,
                "share_worst": max(shares) if shares else None}


def prediction_error(model: nn.Module, graph: DependencyGraph, table: LatencyTable, runtime: Runtime,
                     example: Any, *, samples: int = 8, seed: int = 0, multiple: int = 1,
                     turns: Turns = WHOLE_TURNS, log: Callable[[str], None] = lambda s: None) -> PredictionError:
    """Predicted against measured latency of `samples` random pruned models, timed in turns with
    the original (`Runtime.time_turns_ms`)."""
    return prediction_errors(model, graph, [table], runtime, example, samples=samples, seed=seed,
                             multiple=multiple, turns=turns, log=log)[0]


def prediction_errors(model: nn.Module, graph: DependencyGraph, tables: Sequence[LatencyTable], runtime: Runtime,
                      example: Any, *, samples: int = 8, seed: int = 0, multiple: int = 1,
                      turns: Turns = WHOLE_TURNS, log: Callable[[str], None] = lambda s: None) -> list[PredictionError]:
    """`prediction_error` of several tables of the same model and batch on one timing of the random
    models: tables built different ways, checked against the very same measurements."""
    from ..metrics import _latency_inputs
    from ..surgery import prune_channels

    rng = np.random.default_rng(seed)
    inputs = _latency_inputs(example, int(tables[0].key["batch"]), torch.device("cpu"))
    plans = [random_removals(graph, rng, multiple=multiple) for _ in range(samples)]
    measured = runtime.time_turns_ms([model, *(prune_channels(model, graph, r, inplace=False) for r in plans)],
                                     inputs, turns)
    full_flops = graph.count()[1]
    out = []
    for table in tables:
        rows = []
        for i, (removals, ms) in enumerate(zip(plans, measured[1:])):
            predicted = table.predict(graph.new_shapes(removals))
            rows.append({"predicted_ms": predicted, "measured_ms": ms,
                         "flops_kept": graph.count(removals)[1] / full_flops})
            log(f"latency check {i + 1}/{samples}: predicted {predicted:.3f} ms, measured {ms:.3f} ms "
                f"({(predicted - ms) / ms:+.1%})")
        out.append(PredictionError(rows, {"predicted_ms": table.predict(graph.shapes), "measured_ms": measured[0]}))
    return out


ROUNDING_CHOICES = (1, 2, 4, 8, 16, 32)
ROUNDING_TOLERANCE = 0.03  # a multiple is good enough within this share of the best cost per channel


def rounding_costs(ops: Sequence[Op], runtime: Runtime, batch: int, *, layers: int = 3, widths: int = 24,
                   largest: int | None = None,
                   watch: Stopwatch = Stopwatch(warmup=2, repeats=3, rounds=2, per_round_s=0.03)) -> dict[int, float]:
    """For each width multiple (at most `largest`), the mean penalty of its widths in [full/2, full)
    over the costliest `layers` ops (`widths` widths per op are timed)."""
    choices = [m for m in ROUNDING_CHOICES if largest is None or m <= largest]
    distinct = {op.signature: op for op in ops if op.out_axis and op.out >= 16}
    chosen = sorted(distinct.values(), key=lambda op: -op.out * op.inner * op.mult)[:layers]
    per_multiple: dict[int, list[float]] = {m: [] for m in choices}
    for op in chosen:
        candidates = sorted({w for m in choices for w in range(op.out // 2, op.out + 1) if w % m == 0} | {op.out})
        picks = sorted(set(np.linspace(0, len(candidates) - 1, min(widths, len(candidates))).round().astype(int)))
        timed = {}
        for w in (candidates[i] for i in picks):
            module, inputs = op.build(w, op.inner, batch)
            timed[w] = runtime.time_ms(module, inputs, watch)
        order = sorted(timed)
        penalty = {w: timed[w] / min(timed[v] for v in order if v >= w) for w in order if w < op.out}
        for m in choices:
            costs = [c for w, c in penalty.items() if w % m == 0]
            if costs:
                per_multiple[m].append(float(np.mean(costs)))
    return {m: float(np.mean(v)) for m, v in per_multiple.items() if v}


def choose_round_to(costs: dict[int, float], tolerance: float = ROUNDING_TOLERANCE) -> int:
    """The smallest multiple whose mean penalty is within `tolerance` of the lowest."""
    if not costs:
        return 1
    best = min(costs.values())
    return min(m for m, c in costs.items() if c <= best * (1.0 + tolerance))


def aligned_model_costs(table: LatencyTable, graph: DependencyGraph, *, largest: int, samples: int = 16,
                        seed: int = 0) -> dict[int, float]:
    """For each multiple up to `largest`, the mean predicted latency of random pruned models whose
    every width is rounded to the nearest multiple of it (at least one multiple, at most the group),
    relative to the same models unrounded (1 for multiple 1). Rounding to the nearest keeps as many
    channels on average, so a cost clearly below 1 means the runtime runs aligned widths faster:
    the whole-model counterpart of `rounding_costs`, for `choose_round_to`."""
    rng = np.random.default_rng(seed)
    groups = {g.name: g.size for g in graph.prunable_groups()}
    models = [random_removals(graph, rng) for _ in range(samples)]
    base = [table.predict(graph.new_shapes(removals)) for removals in models]
    costs = {1: 1.0}
    for multiple in (m for m in ROUNDING_CHOICES if 1 < m <= largest):
        ratios = []
        for removals, unrounded in zip(models, base):
            rounded = {}
            for name, removed in removals.items():
                kept = nearest_multiple(groups[name] - len(removed), groups[name], multiple)
                if kept < groups[name]:  # a group rounded up keeps some of the units removed, down drops more
                    rounded[name] = _resize(removed, groups[name], groups[name] - kept)
            ratios.append(table.predict(graph.new_shapes(rounded)) / unrounded)
        costs[multiple] = float(np.mean(ratios))
    return costs


def _resize(removed: np.ndarray, size: int, count: int) -> np.ndarray:
    """`count` units of a group of `size` to remove: those of `removed` first, then the next kept ones."""
    if count <= len(removed):
        return removed[:count]
    kept = np.setdiff1d(np.arange(size), removed)
    return np.sort(np.concatenate([removed, kept[:count - len(removed)]]))
