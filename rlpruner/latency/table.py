"""A measured latency model of one model on one runtime: a lookup table, built once, cached on disk.

Every conv/linear layer the dependency graph counts is an *op*. Each distinct op (same layer type,
kernel, stride, input size, widths) is timed alone on the runtime at the user's batch size: at full
width, along a grid of output widths and along a grid of input widths, one width after the other
(or, with `layers`, in turns with each other and a reference layer that scales them; not the default:
it measured worse, benchmarks/table_layers.py). An op's latency at any widths is the product form

    T(out, in) = c + (T_full - c) * g(out) * f(in)    (g, f: the measured ratios above c, interpolated)

where c, the op's cost at no width (call overhead), is where the measured widths extrapolate to.
This is exact for a cost that is a constant plus a bilinear term in the two widths, and keeps what
the runtime does at each measured width (kernels that change with the width, odd widths). What the ops do not cover
(normalisation, activations, pooling, additions, framework overhead, layout changes between layers)
is fitted on timed whole models, pruned uniformly and at random widths, half of them in multiples of
8 and half not:

    latency(model) = scale * sum_ops T + constant + per_element * (output elements / original's)
                     [+ misaligned * (output elements of layers whose width is off a block / original's)]

with non-negative coefficients. The last term is for runtimes that lay tensors out in blocks of 4, 8
or 16 channels (ONNX Runtime's blocked layout): a layer alone does not show the cost of converting
layouts between layers, a whole model does. Which terms the fit uses (one scale for every op kind
or one per kind; which block, if any) is chosen by leave-one-out error over the timed whole models,
so a term enters only where it predicts models the fit did not see. `check.prediction_error`
reports how well this predicts random pruned models (the table's honest error). A table is keyed by
the model's structure, the runtime (name, threads, library versions, processor), batch, input size
and grid, and stored as JSON under the cache directory, so a later run on the same machine reuses it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..graph import DependencyGraph
from ..io import atomic_write_json
from .fit import Fit, Shapes, fit_rest
from .ops import Op, find_ops, random_removals, uniform_removals
from .layers import Reference, reference_call, time_widths
from .runtimes import Runtime, Stopwatch, Turns

TABLE_VERSION = 6  # 6: whole models timed in turns
CALIBRATION_KEEP = (0.75, 0.5, 0.3)       # besides the original, whole models the rest term is fitted on: uniform,
CALIBRATION_RANDOM = 10                   # this many with random widths per group (what a search makes),
CALIBRATION_ALIGNED = 8                   # each set once at the table's multiple and once in multiples of 8
CALIBRATION_SEED = 12345                  # not the error check's seed: the check uses unseen models
TABLE_WATCH = Stopwatch(warmup=2, repeats=3, rounds=3, per_round_s=0.05)  # each latency of a layer
WHOLE_TURNS = Turns(warmup=2, block=3, settle=1, seconds=8.0)  # whole models, timed in turns against each other


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/rlpruner/latency, else ~/.cache/rlpruner/latency."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "rlpruner" / "latency"


@dataclass
class Curve:
    """Measured latency of one op: at full width and along each axis (the other at full)."""

    full_ms: float
    out_grid: list[int] = field(default_factory=list)
    out_ms: list[float] = field(default_factory=list)
    in_grid: list[int] = field(default_factory=list)
    in_ms: list[float] = field(default_factory=list)
    fixed_ms: float = 0.0  # the part that does not shrink with the widths (call overhead)
    block: int = 1         # widths that are not multiples of this run on the `odd` curves
    out_odd_grid: list[int] = field(default_factory=list)
    out_odd_ms: list[float] = field(default_factory=list)
    in_odd_grid: list[int] = field(default_factory=list)
    in_odd_ms: list[float] = field(default_factory=list)

    def ms(self, out: int, inner: int) -> float:
        scaled = self.full_ms - self.fixed_ms
        return self.fixed_ms + scaled * self._along(out, self.out_grid, self.out_ms, self.out_odd_grid,
                                                    self.out_odd_ms) * \
            self._along(inner, self.in_grid, self.in_ms, self.in_odd_grid, self.in_odd_ms)

    def _along(self, width: int, grid: list[int], times: list[float], odd_grid: list[int],
               odd_times: list[float]) -> float:
        if odd_grid and width % self.block:
            return _ratio(odd_grid, odd_times, self, width)
        return _ratio(grid, times, self, width)

    def with_fixed_part(self) -> "Curve":
        """This curve with `fixed_ms` estimated: the smallest intercept at width 0 of a straight
        line through each axis's measurements, kept within [0, 0.9 x the fastest measurement]."""
        intercepts = [float(np.polyfit(grid, times, 1)[1]) for grid, times in
                      ((self.out_grid, self.out_ms), (self.in_grid, self.in_ms)) if len(grid) >= 2]
        if not intercepts:
            return self
        fastest = min([self.full_ms, *self.out_ms, *self.in_ms, *self.out_odd_ms, *self.in_odd_ms])
        return replace(self, fixed_ms=min(max(min(intercepts), 0.0), 0.9 * fastest))


def _ratio(grid: list[int], times: list[float], curve: Curve, width: int) -> float:
    """The width-dependent part of the latency at `width` over that at full width, along one axis
    (1 when the axis is fixed)."""
    if not grid:
        return 1.0
    scaled = np.asarray(times) - curve.fixed_ms
    full = max(curve.full_ms - curve.fixed_ms, 1e-12)
    if width < grid[0]:  # below the smallest measured width: proportional to the width
        return float(scaled[0]) / full * width / grid[0]
    return float(np.interp(width, grid, scaled)) / full


@dataclass
class LatencyTable:
    key: dict[str, Any]
    ops: list[Op]
    curves: dict[str, Curve]     # op signature -> measurements
    fit: Fit
    calibration: list[dict[str, float]] = field(default_factory=list)  # the whole models timed for the fit

    def op_ms(self, shapes: Shapes) -> float:
        """Sum of the op latencies (alone) of a model whose weights have `shapes` (a pruned one's)."""
        return sum(self.op_ms_by_kind(shapes, self.kinds()))

    def kinds(self) -> list[str]:
        return sorted({op.family for op in self.ops})

    def op_ms_by_kind(self, shapes: Shapes, kinds: Sequence[str]) -> list[float]:
        totals = dict.fromkeys(kinds, 0.0)
        for op in self.ops:
            out, inner = op.widths(shapes[op.weight])
            totals[op.family] += self.curves[op.signature].ms(out, inner)
        return [totals[k] for k in kinds]

    def elements(self, shapes: Shapes) -> float:
        """Output elements of the ops, relative to the original model's."""
        return sum(int(shapes[op.weight][0]) * op.mult for op in self.ops) / self._original_elements()

    def misaligned(self, shapes: Shapes, block: int) -> float:
        """Output elements of the prunable layers whose width is not a multiple of `block`, relative
        to the original model's output elements."""
        return sum(int(shapes[op.weight][0]) * op.mult for op in self.ops
                   if op.out_axis and int(shapes[op.weight][0]) % block) / self._original_elements()

    def _original_elements(self) -> int:
        return sum(op.out * op.mult for op in self.ops) or 1

    def features(self, shapes: Shapes, kinds: Sequence[str | tuple[str, ...]], block: int) -> list[float]:
        """What the fit weighs: op latencies summed per group of `kinds` (a tuple of kinds sums them
        together), 1, relative elements and (block > 1) relative misaligned elements."""
        by_kind = dict(zip(self.kinds(), self.op_ms_by_kind(shapes, self.kinds())))
        row = [sum(by_kind[k] for k in (group if isinstance(group, tuple) else (group,))) for group in kinds]
        row += [1.0, self.elements(shapes)]
        return row + [self.misaligned(shapes, block)] if block > 1 else row

    def predict(self, shapes: Shapes) -> float:
        """Predicted latency in ms of the model with these weight shapes (`graph.new_shapes(...)`)."""
        f = self.fit
        kinds = list(f.scales)
        ops = sum(f.scales[k] * t for k, t in zip(kinds, self.op_ms_by_kind(shapes, kinds)))
        rest = f.constant_ms + f.per_element_ms * self.elements(shapes)
        if f.block > 1:
            rest += f.misaligned_ms * self.misaligned(shapes, f.block)
        return max(ops + rest, 1e-6)

    def predict_removal(self, graph: DependencyGraph, removals: Mapping[str, Sequence[int]]) -> float:
        return self.predict(graph.new_shapes(removals))

    def to_dict(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, "key": self.key, "ops": [asdict(op) for op in self.ops],
                "curves": {s: asdict(c) for s, c in self.curves.items()}, "fit": asdict(self.fit),
                "calibration": self.calibration}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatencyTable":
        ops = [Op(**{**o, "sample_shape": tuple(o["sample_shape"]),
                     "options": tuple((k, _tuple(v)) for k, v in o["options"])}) for o in data["ops"]]
        return cls(key=dict(data["key"]), ops=ops, curves={s: Curve(**c) for s, c in data["curves"].items()},
                   fit=Fit(**data["fit"]), calibration=list(data.get("calibration", [])))


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# --------------------------------------------------------------------------------------------------
# Building, fitting, caching
# --------------------------------------------------------------------------------------------------

def grid(full: int, points: int, multiple: int = 1) -> list[int]:
    """`points` widths from about full/points to full (multiples of `multiple`), ascending, full included."""
    if points < 2:
        raise ConfigError(f"latency table: points must be >= 2, got {points}")
    widths = {full}
    for k in range(1, points):
        w = int(round(full * k / points / multiple)) * multiple
        if 1 <= w < full:
            widths.add(w)
    return sorted(widths)


def measure_curve(op: Op, runtime: Runtime, batch: int, points: int, multiple: int, watch: Stopwatch,
                  block: int = 1, turns: Turns | None = None, reference: Reference | None = None) -> Curve:
    """An op's latency at full width and along each axis (in turns with `turns`, see `time_widths`).
    With a `block` the runtime favours (and widths that need not be multiples of it), the grid is in
    multiples of the block and a second grid, one channel short of each, times the widths that are not."""
    odd = block > 1 and multiple % block != 0
    curve = Curve(full_ms=0.0, block=block if odd else 1)
    if op.out_axis and op.out > 1:
        step = _step(op.out, max(multiple, block) if odd and op.groups == 1 else multiple, op.groups)
        curve.out_grid = grid(op.out, points, step)
        if odd and op.groups == 1:
            curve.out_odd_grid = [w - 1 for w in curve.out_grid if w > 1]
    if op.in_axis and op.inner > 1:
        curve.in_grid = grid(op.inner, points, _step(op.inner, max(multiple, block) if odd else multiple))
        if odd:
            curve.in_odd_grid = [w - 1 for w in curve.in_grid if w > 1]
    outs = [(w, op.inner) for w in curve.out_grid + curve.out_odd_grid]
    ins = [(op.out, w) for w in curve.in_grid + curve.in_odd_grid]
    times = time_widths(op, [(op.out, op.inner), *outs, *ins], runtime, batch, watch, turns, reference)
    curve.full_ms = times[op.out, op.inner]
    curve.out_ms = [times[w, op.inner] for w in curve.out_grid]
    curve.out_odd_ms = [times[w, op.inner] for w in curve.out_odd_grid]
    curve.in_ms = [times[op.out, w] for w in curve.in_grid]
    curve.in_odd_ms = [times[op.out, w] for w in curve.in_odd_grid]
    return curve.with_fixed_part()


BLOCKS = (2, 4, 8, 16)
BLOCK_PENALTY = 1.1  # widths off the block must be this much slower per channel for a block to count


def detect_block(ops: Sequence[Op], runtime: Runtime, batch: int, watch: Stopwatch, span: int = 32,
                 turns: Turns | None = None) -> int:
    """The channel block the runtime favours: on the costliest layer, `span` consecutive output
    widths below three quarters of its width are timed (in turns with `turns`, else one after the
    other); the block is the one whose non-multiples are slowest per channel against its multiples
    (1 when none is `BLOCK_PENALTY` slower)."""
    dense = [op for op in ops if op.out_axis and op.groups == 1 and op.out >= 2 * span]
    if not dense:
        return 1
    op = max(dense, key=lambda o: o.out * o.inner * o.mult)
    start = (3 * op.out // 4 - span) // 16 * 16 + 1
    widths = [(w, op.inner) for w in range(max(start, 1), max(start, 1) + span)]
    per_channel = {w: ms / w for (w, _), ms in time_widths(op, widths, runtime, batch, watch, turns).items()}
    penalties = {b: float(np.median([c for w, c in per_channel.items() if w % b]) /
                          np.median([c for w, c in per_channel.items() if w % b == 0])) for b in BLOCKS}
    best = max(penalties, key=lambda b: penalties[b])
    return best if penalties[best] >= BLOCK_PENALTY else 1


def _step(full: int, multiple: int, groups: int = 1) -> int:
    """The grid's spacing: the rounding multiple where the width allows it; grouped convs in whole groups."""
    step = multiple if full >= 2 * multiple else 1
    if groups > 1:
        step = max(step, full // groups) if full % groups == 0 else step
    return step


def calibration_plans(graph: DependencyGraph, multiple: int = 1) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The whole models the rest term is fitted on: the original, then uniformly pruned at
    `CALIBRATION_KEEP` and `CALIBRATION_RANDOM` with random widths, at the table's multiple and (unless
    that is the same) in multiples of `CALIBRATION_ALIGNED`, so the fit sees aligned and odd widths
    (output elements are relative to the original's). Seeded."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    plans: list[tuple[str, dict[str, np.ndarray]]] = [("original", {})]
    for m in dict.fromkeys((multiple, CALIBRATION_ALIGNED if multiple % CALIBRATION_ALIGNED else multiple)):
        suffix = f" (multiples of {m})" if m > 1 else ""
        plans += [(f"uniform {keep:g}{suffix}", uniform_removals(graph, keep, m)) for keep in CALIBRATION_KEEP]
        plans += [(f"random {i}{suffix}", random_removals(graph, rng, multiple=m)) for i in range(CALIBRATION_RANDOM)]
    return plans


def structure_key(model: nn.Module, graph: DependencyGraph) -> str:
    """A digest of what latency depends on: module types, tensor shapes and the prunable groups."""
    digest = hashlib.sha256()
    digest.update(json.dumps([(n, type(m).__qualname__) for n, m in model.named_modules()]).encode())
    digest.update(json.dumps(sorted((k, list(v)) for k, v in graph.shapes.items())).encode())
    digest.update(json.dumps([(g.name, g.size) for g in graph.prunable_groups()]).encode())
    return digest.hexdigest()[:20]


def table_key(model: nn.Module, graph: DependencyGraph, example: Any, runtime: Runtime, batch: int,
              points: int, multiple: int) -> dict[str, Any]:
    inputs = example if isinstance(example, tuple) else (example,)
    return {"version": TABLE_VERSION, "structure": structure_key(model, graph), **runtime.key(), "batch": batch,
            "input": [list(t.shape[1:]) for t in inputs], "points": points, "round_to": multiple}


def build_table(model: nn.Module, graph: DependencyGraph, example: Any, runtime: Runtime, *, batch: int = 1,
                points: int = 6, multiple: int = 1, watch: Stopwatch = TABLE_WATCH, turns: Turns = WHOLE_TURNS,
                layers: Turns | None = None, log: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """Time every distinct op along its widths and fit the rest on whole models (`calibration_plans`),
    timed in turns against each other (`turns`). Each op's widths are timed one after the other with
    `watch`, or (`layers`) in turns with each other and with a reference layer that scales them; the
    second made MobileNetV2's tables worse on this VM (benchmarks/table_layers.py), so it is not the
    default."""
    from ..metrics import _latency_inputs
    from ..surgery import prune_channels

    ops = find_ops(model, graph, example)
    block = detect_block(ops, runtime, batch, watch, turns=layers)
    if block > 1:
        log(f"latency table: {runtime!r} runs widths in multiples of {block} faster per channel; widths off "
            "that block are timed on their own grid")
    curves: dict[str, Curve] = {}
    distinct = list(dict.fromkeys(op.signature for op in ops))
    by_signature = {op.signature: op for op in ops}
    reference = None if layers is None else reference_call(_middle(ops), runtime, batch, layers)
    for i, signature in enumerate(distinct):
        curves[signature] = measure_curve(by_signature[signature], runtime, batch, points, multiple, watch, block,
                                          layers, reference)
        if (i + 1) % 10 == 0 or i + 1 == len(distinct):
            log(f"latency table: {i + 1}/{len(distinct)} distinct layers timed on {runtime!r} at batch {batch}")
    table = LatencyTable(key=table_key(model, graph, example, runtime, batch, points, multiple), ops=ops,
                         curves=curves, fit=Fit({}, 0.0, 0.0))
    inputs = _latency_inputs(example if isinstance(example, (tuple, torch.Tensor)) else tuple(example), batch,
                             torch.device("cpu"))
    plans = calibration_plans(graph, multiple)
    shapes = [graph.new_shapes(removals) for _, removals in plans]
    measured = runtime.time_turns_ms([prune_channels(model, graph, removals, inplace=False) if removals else model
                                      for _, removals in plans], inputs, turns)
    table.fit = fit_rest(table, shapes, measured)
    table.calibration = [{"model": name, "measured_ms": m, "predicted_ms": table.predict(s)}
                         for (name, _), s, m in zip(plans, shapes, measured)]
    log(f"latency table: fit on {len(plans)} whole models: {table.fit.describe()}; the original model measures "
        f"{measured[0]:.3f} ms, predicted {table.calibration[0]['predicted_ms']:.3f} ms")
    return table


def _middle(ops: Sequence[Op]) -> Op:
    """The op of median size (output x input width x output positions): the reference layer."""
    ranked = sorted(ops, key=lambda op: (op.out * op.inner * op.mult, op.signature))
    return ranked[len(ranked) // 2]


def cache_path(directory: Path, key: Mapping[str, Any], prefix: str = "") -> Path:
    """The file under `directory` that holds what was measured for `key` (a digest of it names it)."""
    return directory / f"{prefix}{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.json"


def cached_table(model: nn.Module, graph: DependencyGraph, example: Any, runtime: Runtime, *, batch: int = 1,
                 points: int = 6, multiple: int = 1, cache_dir: Path | None = None, watch: Stopwatch = TABLE_WATCH,
                 turns: Turns = WHOLE_TURNS, layers: Turns | None = None,
                 log: Callable[[str], None] = lambda s: None) -> LatencyTable:
    """The table for this model, runtime and batch from `cache_dir` when one was built before, else
    built now and stored there. An unreadable cache file is rebuilt (it is a cache, not an input)."""
    key = table_key(model, graph, example, runtime, batch, points, multiple)
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = cache_path(directory, key)
    if path.exists():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if table.key == key:
                log(f"latency table: reusing {path}")
                return table
            log(f"latency table: {path} was built for another setting; rebuilding it")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(f"latency table: {path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it")
    table = build_table(model, graph, example, runtime, batch=batch, points=points, multiple=multiple,
                        watch=watch, turns=turns, layers=layers, log=log)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, table.to_dict())
        log(f"latency table: stored {path}")
    except OSError as exc:
        log(f"latency table: cannot store it in {directory} ({exc.strerror or exc}); it is used for this run only")
    return table
