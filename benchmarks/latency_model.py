"""Latency you can bank on: the latency table's error, and the speed-up each method's model gets.

    python benchmarks/latency_model.py                      # writes benchmarks/results/latency_model.{json,md}
    python benchmarks/latency_model.py --models resnet56    # only some models (the others' rows are kept)
    python benchmarks/latency_model.py --quick              # a smoke run under runs/bench-quick/
    python benchmarks/latency_model.py --bounds             # add the table bound (and its timing) where missing

Models at realistic sizes, random weights (latency does not depend on them): ResNet-18, ResNet-50
and MobileNetV2 with their ImageNet strides at 224x224, and the CIFAR ResNet-56 at 32x32.

1. **The table's error.** For every runtime (PyTorch eager on the CPU at 1 and 2 threads, ONNX
   Runtime CPU at 1 thread) a latency table at batch 1 is built (`rlpruner.latency.build_table`)
   and checked on random pruned models (every group keeps its own random share in [0.25, 1]), timed
   in turns with the original: median and worst relative error of predicted against measured
   latency, and of latency as a share of the original's (what a reduction rests on).
2. **The speed-up.** Each method prunes the model to -50% FLOPs, and the result is timed on every
   runtime at batch 1 and 32, in turns with the original and the other methods' models
   (`Runtime.time_turns_ms`), so a machine slowing down for a while slows them all alike.
   RL-Pruner runs three ways: with a FLOPs target (`rl-flops`); with a latency target, -50%
   predicted latency at batch 1 (`rl-latency`); and with the FLOPs target and the latency reward
   (`rl-flops-fast`: equal FLOPs per step, the candidate that the table predicts fastest wins; its
   latency weight is 100, since random weights make the accuracy term noise).
   HALP's latency-aware ranking runs in the same loop with the latency target (`halp-latency`:
   importance, by the rows' L2 criterion, per millisecond the table predicts a unit's removal
   saves, `rlpruner.allocation.walk`). The latency-aware rows run once per table, each with that table and
   its own measured `round_to` (the `-2t` rows use PyTorch's table measured at 2 threads, the `-ort`
   rows ONNX Runtime's): a user deploying at 2 threads measures the table there. The ratio of latency
   reduction to FLOPs reduction is the issue's measure (goal: >= 0.8 for a latency-aware or rounded
   configuration); a column counts uniform-r8 and the rows built with its own runtime's table at its
   thread count.

The tables built here are stored in the runs' latency cache, so the RL rows search with the very
table whose error the first part reports. Each table also gives a reference: the best allocation it
points to at the FLOPs target (`table_bound`, a greedy walk), built and timed beside the original
(`time_bound`). It tells a speed-up the search missed from one the runtime does not give; it is
timed because a greedy walk goes where the table extrapolates, so its prediction alone proves nothing.

RL-Pruner runs a cheap search here (3 sampling rounds of 4 candidates, 10 % steps, candidates scored
on 8 random images, no recovery), because the weights are random: its choices rest on the equal-cost
steps and on the latency table, not on accuracy, so only the latency side of these rows is evidence.
The accuracy side is the accuracy benchmark's.
"""
from __future__ import annotations

import argparse
import copy
import math
import shutil
import statistics
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import RESULTS, ROOT, WORK, machine, write_study  # noqa: E402

MODELS: dict[str, tuple[str, dict[str, Any], int, int]] = {  # label: (zoo name, options, input size, classes)
    "resnet18": ("resnet18", {"stem": "imagenet"}, 224, 1000),
    "resnet50": ("resnet50", {"stem": "imagenet"}, 224, 1000),
    "mobilenetv2": ("mobilenetv2", {"strides": "imagenet"}, 224, 1000),
    "resnet56": ("resnet56", {}, 32, 10),
}


@dataclass(frozen=True)
class RLRow:
    """How one search-loop row runs: its target's unit, its reward strategy, the runtime whose
    latency table it uses (None: it needs none), and its allocator (RL-Pruner, or HALP's ranking)."""

    target: str
    reward: str
    runtime: str | None = None
    latency_weight: float | None = None  # None: the reward's default
    threads: int = 1                     # the thread count its table was measured with
    method: str = "rl"                   # the search's allocator (rlpruner.allocation.ALLOCATORS)
    round_to: int | str = "auto"         # the run's --round-to


# The weights are random, so a candidate's accuracy on the 8 scoring images is noise (0 or 1/8): at the
# default weight (0.25) it outweighs the few points of latency that separate candidates of equal FLOPs,
# and the table would not decide. This weight lets it.
FAST_WEIGHT = 100.0
RL_ROWS = {
    "rl-flops": RLRow("flops", "accuracy"),
    "rl-latency": RLRow("latency", "latency", "torch-cpu"),
    "rl-flops-fast": RLRow("flops", "latency", "torch-cpu", FAST_WEIGHT),
    "rl-latency-2t": RLRow("latency", "latency", "torch-cpu", threads=2),
    "rl-flops-fast-2t": RLRow("flops", "latency", "torch-cpu", FAST_WEIGHT, threads=2),
    "rl-latency-ort": RLRow("latency", "latency", "onnxruntime-cpu"),
    "rl-flops-fast-ort": RLRow("flops", "latency", "onnxruntime-cpu", FAST_WEIGHT),
    "halp-latency": RLRow("latency", "latency", "torch-cpu", method="halp"),
    "halp-latency-2t": RLRow("latency", "latency", "torch-cpu", threads=2, method="halp"),
    "halp-latency-ort": RLRow("latency", "latency", "onnxruntime-cpu", method="halp"),
    # the FLOPs target, HALP's walk priced by the table's predicted latency (the latency reward makes the
    # run build it; HALP scores no candidates, so the reward's weight does not matter)
    "halp-flops-lat": RLRow("flops", "latency", "torch-cpu", method="halp"),
    "halp-flops-lat-2t": RLRow("flops", "latency", "torch-cpu", threads=2, method="halp"),
    "halp-flops-lat-ort": RLRow("flops", "latency", "onnxruntime-cpu", method="halp"),
    # widths in multiples of 8 where auto picks 1: the table predicts aligned widths best (uniform-r8's
    # error is the smallest), and an allocation searched on it measures what was predicted
    "halp-flops-lat-r8": RLRow("flops", "latency", "torch-cpu", method="halp", round_to=8),
}
GLIBC_DEFAULTS = "glibc malloc's adaptive defaults"  # the allocator state of rows timed before rlpruner.host_memory
VARIANT_SUFFIXES = ("-2t", "-ort")  # a row searched with another table than PyTorch's at 1 thread
METHODS = ("uniform", "global", "uniform-r8", *RL_ROWS)
ROUNDED = "uniform-r8"  # the rounded configuration of the goal; it needs no table


@dataclass(frozen=True)
class LatencyModelSettings:
    models: tuple[str, ...] = tuple(MODELS)
    runtimes: tuple[tuple[str, int], ...] = (("torch-cpu", 1), ("torch-cpu", 2), ("onnxruntime-cpu", 1))
    table_runtimes: tuple[tuple[str, int], ...] = (("torch-cpu", 1), ("torch-cpu", 2),
                                                   ("onnxruntime-cpu", 1))  # tables built
    batches: tuple[int, ...] = (1, 32)
    target: float = 0.5
    check_samples: int = 10
    points: int = 6
    methods: tuple[str, ...] = METHODS
    rl: dict[str, Any] = field(default_factory=lambda: {
        "lr_epoch": 3, "sample_num": 4, "prune_filter_ratio": 0.1, "score_samples": 8, "bn_samples": 8,
        "calibration_samples": 8, "importance": "l2", "guard_threshold": None})
    size_override: int | None = None  # --quick: smaller inputs


def quick() -> LatencyModelSettings:
    return LatencyModelSettings(models=("resnet56",), runtimes=(("torch-cpu", 1), ("onnxruntime-cpu", 1)),
                                table_runtimes=(("torch-cpu", 1),), batches=(1, 4), check_samples=2, points=3,
                                methods=tuple(m for m in METHODS if not m.endswith("-2t")), size_override=16)


def _table_watch() -> Any:
    """How each layer of a table is timed here: longer passes than the library's default."""
    from rlpruner.latency import Stopwatch

    return Stopwatch(warmup=2, repeats=5, rounds=3, per_round_s=0.3)


def _turns(batch: int) -> Any:
    """How the models of one timing column are timed against each other (`Runtime.time_turns_ms`):
    at batch 1 in turns of 5 calls for about 20 s, at larger batches (calls of a second or more) in 3
    turns of one call each."""
    from rlpruner.latency import Turns

    if batch == 1:
        return Turns(warmup=2, block=5, settle=1, seconds=20.0)
    return Turns(warmup=1, block=1, settle=0, rounds=3)


def _build(label: str, settings: LatencyModelSettings) -> tuple[Any, Any, int]:
    import torch

    from rlpruner.models import create_model

    name, options, size, classes = MODELS[label]
    size = settings.size_override or size
    torch.manual_seed(0)
    return create_model(name, num_classes=classes, **options).eval(), torch.randn(1, 3, size, size), classes


def _random_splits(example: Any, classes: int) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    size = example.shape[-1]

    def loader(n: int) -> Any:
        data = TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))
        return DataLoader(data, batch_size=8)

    return loader(16), loader(16)


def prune_with(method: str, model: Any, example: Any, classes: int, settings: LatencyModelSettings,
               work: Path, target: float | None = None) -> tuple[Any, dict[str, Any]]:
    """The model pruned by `method`, and what the method reports about its run."""
    from rlpruner.distill import DistillConfig
    from rlpruner.pruner import prune_to_flops
    from rlpruner.search import CompressConfig, Reward, RLConfig, Target, compress

    if method in ("uniform", "global", "uniform-r8"):
        allocation = "global" if method == "global" else "uniform"
        pruned = prune_to_flops(copy.deepcopy(model), example, settings.target, method=allocation,
                                round_to=8 if method == "uniform-r8" else 1)
        return pruned, {}
    row = RL_ROWS[method]
    config = CompressConfig(target=Target(row.target, target or settings.target), method=row.method,
                            reward=Reward(row.reward, latency_weight=row.latency_weight),
                            rl=RLConfig(**{**settings.rl, "round_to": row.round_to}), kd=DistillConfig(epochs=0),
                            final_epochs=0, report_batch=1,
                            latency_runtime=row.runtime or "auto", latency_threads=row.threads, latency_points=settings.points,
                            latency_cache=str(work / "cache"), progress=False, eval_batch_size=8)
    result = compress(model, _random_splits(example, classes), config, out_dir=work / method, overwrite=True,
                      evaluate_test=False, log=lambda line: None)  # a ConfigError (unreachable) is recorded
    info = {"steps": result.results["steps"], "round_to": result.results["latency"]["round_to"],
            "target": config.target.value, "target_kind": row.target, "reward": row.reward, "table": row.runtime,
            "allocator": row.method,
            "table_threads": row.threads,
            "search_s": result.results["timing"]["eval_s"] + result.results["timing"]["search_s"],
            "checks": [{k: c[k] for k in ("measured_reduction", "predicted_reduction", "next_goal_ms")}
                       for c in result.results.get("latency_checks", [])]}
    return result.model, info


def _removals_keeping(sizes: dict[str, int], kept: dict[str, int]) -> dict[str, Any]:
    """Removals that leave each group its first `kept[name]` channels (latency does not depend on which)."""
    import numpy as np

    return {n: np.arange(sizes[n] - k) for n, k in kept.items() if k < sizes[n]}


def table_bound(table: Any, graph: Any, target: float, chunk: int = 8) -> dict[str, Any]:
    """The best allocation the table itself points to at `target` FLOPs reduction: greedily remove
    `chunk` units (or the table's block, where its fit charges widths off a larger block: a step
    that leaves a width off it would be charged on its own, so a greedy walk would not take it)
    from the group whose removal saves the most predicted latency per FLOP (no group below the
    step). A reference for the RL rows, not a proven optimum; no timing."""
    chunk = math.lcm(chunk, table.fit.block)
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    kept = dict(sizes)
    full_flops, base_ms = graph.count()[1], table.predict(graph.shapes)

    def state(widths: dict[str, int]) -> tuple[float, int]:
        removals = _removals_keeping(sizes, widths)
        return table.predict(graph.new_shapes(removals)), graph.count(removals)[1]

    ms, flops = base_ms, full_flops
    while flops > (1 - target) * full_flops:
        best = None
        for name in (n for n in sizes if kept[n] - chunk >= chunk):
            trial_ms, trial_flops = state({**kept, name: kept[name] - chunk})
            saved = (ms - trial_ms) / max(flops - trial_flops, 1)
            if best is None or saved > best[0]:
                best = (saved, name, trial_ms, trial_flops)
        if best is None:
            break
        _, name, ms, flops = best
        kept[name] -= chunk
    return {"flops_reduction": 1 - flops / full_flops, "predicted_reduction": 1 - ms / base_ms, "kept": kept,
            "chunk": chunk}


def time_bound(model: Any, graph: Any, example: Any, bound: dict[str, Any], runtime_key: str,
               batches: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """The bound's allocation built (each group keeps its first channels: latency does not depend on
    which) and timed on the runtime of its table ("name/threads") beside the original, per batch:
    the check of what the table predicted for the allocation it points to."""
    from rlpruner.latency import get_runtime
    from rlpruner.metrics import _latency_inputs
    from rlpruner.surgery import prune_channels

    name, threads = runtime_key.split("/")
    runtime = get_runtime(name, int(threads))
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    pruned = prune_channels(model, graph, _removals_keeping(sizes, bound["kept"]), inplace=False)
    timed = {}
    for batch in batches:
        inputs = _latency_inputs(example, batch, runtime.device)
        base, ms = runtime.time_turns_ms([model, pruned], inputs, _turns(batch))
        timed[f"b{batch}"] = {"base_ms": base, "ms": ms, "ratio": (1 - ms / base) / bound["flops_reduction"],
                              "timing": "turns"}
    return timed


def narrowest(graph: Any, chunk: int = 8) -> dict[str, Any]:
    """Every group cut to `chunk` channels (or left narrower): about as far as channel pruning goes.
    Timed, it shows the latency that no allocation of channels removes (per-op overhead)."""
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    kept = {n: min(s, chunk) for n, s in sizes.items()}
    return {"flops_reduction": 1 - graph.count(_removals_keeping(sizes, kept))[1] / graph.count()[1], "kept": kept}


def _untimed(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: b for k, b in row.get("bounds", {}).items() if "measured" not in b}


def _narrowest_untimed(row: dict[str, Any]) -> list[str]:
    """The runtimes of the row's bounds on which its narrowest model has not been timed."""
    done = row.get("narrowest", {}).get("measured", {})
    return [k for k in row.get("bounds", {}) if k not in done]


def _timings_text(timings: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{b} {t['ms']:.2f} ms against {t['base_ms']:.2f} ({t['ratio']:.2f})" for b, t in timings.items())


def time_row_bounds(row: dict[str, Any], model: Any, graph: Any, example: Any, batches: tuple[int, ...],
                    log: Any) -> None:
    """`time_bound` for every bound of one row (of `model`) that has no timing yet, and for the
    narrowest model on each bound's runtime."""
    for key, bound in _untimed(row).items():
        bound["measured"] = time_bound(model, graph, example, bound, key, batches)
        log(f"{row['model']}: table bound {key} timed: {_timings_text(bound['measured'])}")
    keys = _narrowest_untimed(row)
    if keys:
        row["narrowest"] = {**(row.get("narrowest") or narrowest(graph)), "commit": machine()["commit"]}
    for key in keys:
        timings = time_bound(model, graph, example, row["narrowest"], key, batches)
        row["narrowest"].setdefault("measured", {})[key] = timings
        log(f"{row['model']}: the narrowest model timed on {key}: {_timings_text(timings)}")


def add_bound_timings(results: dict[str, Any], settings: LatencyModelSettings, log: Any) -> list[str]:
    """`time_row_bounds` for every row of the settings' models with an untimed bound or narrowest
    model (its model built again); the models whose bounds it timed (a narrowest model records its
    own commit)."""
    from rlpruner.graph import trace

    rows = [row for row in results["rows"]
            if (_untimed(row) or _narrowest_untimed(row)) and row["model"] in settings.models]
    bounds = [row["model"] for row in rows if _untimed(row)]
    for row in rows:
        model, example, _ = _build(row["model"], settings)
        time_row_bounds(row, model, trace(model, example), example, settings.batches, log)
    return bounds


def table_errors(model: Any, graph: Any, table: Any, runtime: Any, example: Any,
                 settings: LatencyModelSettings) -> tuple[Any, Any]:
    """The table's error on `check_samples` random pruned models at any widths (seed 0) and in
    multiples of 8 (seed 1): the same models in a run and in its `--recheck`."""
    from rlpruner.latency import prediction_error

    return tuple(prediction_error(model, graph, table, runtime, example, samples=settings.check_samples, seed=seed,
                                  multiple=multiple, turns=_turns(1)) for seed, multiple in ((0, 1), (1, 8)))


def run_model(label: str, settings: LatencyModelSettings, work: Path, log: Any) -> dict[str, Any]:
    import rlpruner
    from rlpruner import host_memory
    from rlpruner.errors import ConfigError
    from rlpruner.graph import trace
    from rlpruner.io import atomic_write_json
    from rlpruner.latency import build_table, get_runtime
    from rlpruner.latency.table import cache_path
    from rlpruner.metrics import _latency_inputs

    model, example, classes = _build(label, settings)
    cache = work / label / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # every run measures afresh: round_to and tables alike
    graph = trace(model, example)
    base = rlpruner.count(model, example)
    base_flops, base_params = base.flops, base.params
    row: dict[str, Any] = {"model": label, "input": list(example.shape[1:]), "flops": base_flops,
                           "params": base_params, "commit": machine()["commit"], "host_memory": host_memory.describe(),
                           "tables": [], "methods": [], "timing": "turns"}
    tables = {}
    for name, threads in settings.table_runtimes:
        runtime = get_runtime(name, threads)
        start = time.perf_counter()
        table = build_table(model, graph, example, runtime, batch=1, points=settings.points, watch=_table_watch())
        built = time.perf_counter() - start
        error, aligned = table_errors(model, graph, table, runtime, example, settings)
        tables[(name, threads)] = table
        atomic_write_json(cache_path(cache, table.key), table.to_dict())  # the RL rows search with this table
        row.setdefault("bounds", {})[f"{name}/{threads}"] = table_bound(table, graph, settings.target)
        row["tables"].append({"runtime": name, "threads": threads, "batch": 1, "build_s": built,
                              "layers": len(table.ops), "distinct": len(table.curves), "fit": asdict(table.fit),
                              **error.to_dict(), "aligned": aligned.to_dict()})
        shares = error.share_errors
        log(f"{label}: table {name}/{threads}t built in {built:.0f} s; error median {error.median:.1%}, "
            f"worst {error.worst:.1%}; widths in multiples of 8: median {aligned.median:.1%}, "
            f"worst {aligned.worst:.1%}; as a share of the original's: median {statistics.median(shares):.1%}, "
            f"worst {max(shares):.1%}")
    pruned_models = {"base": model}
    for method in settings.methods:
        start = time.perf_counter()
        try:
            pruned, info = prune_with(method, model, example, classes, settings, work / label)
        except ConfigError as exc:  # a latency target the runtime's overhead makes unreachable: half of it
            row.setdefault("refused", {})[method] = str(exc)
            log(f"{label}: {method} refused: {exc}; trying half the target")
            try:
                pruned, info = prune_with(method, model, example, classes, settings, work / label,
                                          target=settings.target / 2)
            except ConfigError as again:
                row["refused"][method] += f"; at half the target: {again}"
                continue
        counts = rlpruner.count(pruned, example)
        pruned_graph = trace(pruned, example)
        predicted = {f"{n}/{t}": tables[(n, t)].predict(pruned_graph.shapes) for (n, t) in tables}
        row["methods"].append({"method": method, "flops_reduction": 1 - counts.flops / base_flops,
                               "params_reduction": 1 - counts.params / base_params, "prune_s": time.perf_counter() - start,
                               "predicted_b1_ms": predicted, "latency": {}, **info})
        pruned_models[method] = pruned
        log(f"{label}: {method} FLOPs -{row['methods'][-1]['flops_reduction']:.1%}")
    row["base_ms"] = {}
    for name, threads in settings.runtimes:
        runtime = get_runtime(name, threads)
        for batch in settings.batches:
            inputs = _latency_inputs(example, batch, runtime.device)
            key = f"{name}/{threads}t/b{batch}"
            base_ms, *times = runtime.time_turns_ms([model, *(pruned_models[m["method"]] for m in row["methods"])],
                                                    inputs, _turns(batch))  # all of the column's models in turns
            row["base_ms"][key] = base_ms
            for m, ms in zip(row["methods"], times):
                m["latency"][key] = ms
                reduction = 1 - m["latency"][key] / row["base_ms"][key]
                m.setdefault("ratio", {})[key] = reduction / m["flops_reduction"]
            log(f"{label}: timed on {key}: base {row['base_ms'][key]:.2f} ms; " + ", ".join(
                f"{m['method']} {m['latency'][key]:.2f} ({m['ratio'][key]:.2f})" for m in row["methods"]))
    time_row_bounds(row, model, graph, example, settings.batches, log)  # the model and graph at hand
    return row


def add_bounds(results: dict[str, Any], settings: LatencyModelSettings, work: Path, log: Any) -> None:
    """`table_bound` for rows written before it existed, from the very tables their run built: those
    in the run's cache whose fit equals the fit the row recorded (anything else is refused)."""
    from rlpruner.graph import trace

    for row in results["rows"]:
        if "bounds" in row:
            continue
        model, example, _ = _build(row["model"], settings)
        graph = trace(model, example)
        bounds = {}
        for recorded, table in zip(row["tables"], recorded_tables(row, work)):
            key = f"{recorded['runtime']}/{recorded['threads']}"
            bounds[key] = table_bound(table, graph, settings.target)
            log(f"{row['model']}: table bound {key}: -{bounds[key]['predicted_reduction']:.1%} predicted latency at "
                f"-{bounds[key]['flops_reduction']:.1%} FLOPs")
        row["bounds"] = bounds


def recorded_tables(row: dict[str, Any], work: Path) -> list[Any]:
    """The very tables a row's run built and cached (the fit each recorded picks them), in its order."""
    import json

    from rlpruner.latency import LatencyTable

    cached = [LatencyTable.from_dict(json.loads(f.read_text())) for f in (work / row["model"] / "cache").glob("*.json")
              if not f.name.startswith("round-to-")]
    tables = []
    for recorded in row["tables"]:
        same = [t for t in cached if t.key["runtime"] == recorded["runtime"] and t.key["threads"] == recorded["threads"]
                and asdict(t.fit) == recorded["fit"]]
        if not same:
            raise SystemExit(f"{row['model']}: no cached table of {recorded['runtime']}/{recorded['threads']}t "
                             f"with the recorded fit under {work / row['model'] / 'cache'}; run the benchmark")
        tables.append(same[0])
    return tables


def recheck(results: dict[str, Any], settings: LatencyModelSettings, work: Path, log: Any) -> None:
    """`--recheck`: the error of each table of the settings' models measured again, on the same
    random pruned models (same seeds), in a process that only loads the tables and times: a second
    measurement, apart from the run's long process and at another time, of how far the table is off."""
    from rlpruner.graph import trace
    from rlpruner.latency import get_runtime

    stamp = {k: v for k, v in machine().items() if k in ("commit", "date")}
    for row in results["rows"]:
        if row["model"] not in settings.models:
            continue
        model, example, _ = _build(row["model"], settings)
        graph = trace(model, example)
        for recorded, table in zip(row["tables"], recorded_tables(row, work)):
            error, aligned = table_errors(model, graph, table, get_runtime(recorded["runtime"], recorded["threads"]),
                                          example, settings)
            recorded["recheck"] = {"median": error.median, "worst": error.worst, "aligned_median": aligned.median,
                                   "aligned_worst": aligned.worst, **stamp}
            log(f"{row['model']}: table {recorded['runtime']}/{recorded['threads']}t checked again: median "
                f"{error.median:.1%} (in its run {recorded['median']:.1%}); multiples of 8 {aligned.median:.1%} "
                f"(in its run {recorded['aligned']['median']:.1%})")


def recheck_lines(results: dict[str, Any]) -> list[str]:
    rechecked = [(row, t) for row in results["rows"] for t in row["tables"] if "recheck" in t]
    if not rechecked:
        return []
    commits = sorted({t["recheck"]["commit"] for _, t in rechecked})
    return ["", f"**The same check in a fresh process** (`--recheck` at commit {', '.join(commits)}: the same random "
            "pruned models, timed by a process that only loaded the run's tables), median error against the run's: "
            + "; ".join(f"{row['model']} {t['runtime']}/{t['threads']}t {t['recheck']['median']:.1%} (run "
                        f"{t['median']:.1%}), multiples of 8 {t['recheck']['aligned_median']:.1%} (run "
                        f"{t['aligned']['median']:.1%})" for row, t in rechecked) + "."]


def starting_results(earlier: dict[str, Any] | None, settings: LatencyModelSettings) -> dict[str, Any]:
    """The results a run starts from: the earlier file's rows (those of models it does not run are
    kept), this machine and these settings; a note that `--bounds` added or timed bounds later keeps
    only the models this run does not rewrite (a run computes and times its own)."""
    results = earlier or {"kind": "latency_model", "rows": []}
    if "machine" in results:  # rows kept from the earlier run keep its commit
        for row in results["rows"]:
            row.setdefault("commit", results["machine"]["commit"])
    results.update(machine=machine(), settings=asdict(settings))
    for stale in ("bounds_machine", "bound_timings_machine"):  # a rerun model computes and times its own
        if stale not in results:
            continue
        kept = {r["model"] for r in results["rows"]} - set(settings.models)
        named = results[stale].get("models")  # None: a stamp from before it named its models
        left = sorted(kept) if named is None else [m for m in named if m in kept]
        if left and named is not None:
            results[stale]["models"] = left
        elif not left:
            results.pop(stale)
    return results


def run(settings: LatencyModelSettings, out: Path, work: Path, log: Any = print) -> dict[str, Any]:
    import json

    from rlpruner.io import atomic_write_json

    path = out.with_suffix(".json")
    results = starting_results(json.loads(path.read_text()) if path.exists() else None, settings)
    for label in settings.models:
        start = time.perf_counter()
        row = run_model(label, settings, work, log)
        row["seconds"] = time.perf_counter() - start
        results["rows"] = [r for r in results["rows"] if r["model"] != label] + [row]
        atomic_write_json(path, results)  # an interrupted run keeps the models it finished
    return _rewrite(out, results)


def run_bounds(settings: LatencyModelSettings, out: Path, work: Path, log: Any = print) -> dict[str, Any]:
    """`--bounds`: the results file with `add_bounds` for rows that lack it, at the target and table
    points the file recorded, and `add_bound_timings` for bounds and narrowest models not yet timed
    (of the `--models` given)."""
    import json

    results = json.loads(out.with_suffix(".json").read_text())
    recorded = {k: v for k, v in results["settings"].items() if k in ("target", "points")}
    settings = LatencyModelSettings(**{**asdict(settings), **recorded,
                                       "batches": tuple(results["settings"]["batches"])})
    lacking = [row["model"] for row in results["rows"] if "bounds" not in row]
    if lacking:
        add_bounds(results, settings, work, log)
        results["bounds_machine"] = {**machine(), "models": lacking}
    timed = add_bound_timings(results, settings, log)
    if timed:
        results["bound_timings_machine"] = {**machine(), "models": timed}
    return _rewrite(out, results)


def run_recheck(settings: LatencyModelSettings, out: Path, work: Path, log: Any = print) -> dict[str, Any]:
    """`--recheck` on the results file (the settings' models), which is rewritten with it."""
    import json

    results = json.loads(out.with_suffix(".json").read_text())
    recorded = results["settings"]
    recheck(results, LatencyModelSettings(**{**asdict(settings), "check_samples": recorded["check_samples"]}),
            work, log)
    return _rewrite(out, results)


def _rewrite(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The results file and its page written again (atomically) from `results`."""
    write_study(out.with_suffix(".json"), out.with_suffix(".md"), results, render_markdown)
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The markdown tables of a results file (generated, never typed)."""
    bounds, timings = results.get("bounds_machine"), results.get("bound_timings_machine")
    lines = [f"Random weights; latency tables at batch 1; machine: {results['machine']['cpu']}, {_commits(results)}. "
             "Command: `python benchmarks/latency_model.py`"
             + (f" (the table bounds{_of(bounds)}: `--bounds` at commit {bounds['commit']}, from the tables that "
                "run cached)" if bounds else "")
             + (f" (the bounds' allocations{_of(timings)} timed by `--bounds` at commit {timings['commit']})"
                if timings else "")
             + f". CPU timings with {_host_memory(results)}. {_timing_text(results)}", "",
             f"**The table's error** (predicted against measured latency of "
             f"{results['settings']['check_samples']} random pruned models per column, none of them among the whole "
             "models the table's rest term was fitted on):", "",
             "| model | input | runtime | threads | layers (distinct) | build | rest term (leave-one-out error) | "
             "any widths: median | worst | widths in multiples of 8: median | worst | "
             "any widths, as a share of the original's: median | worst |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        for t in row["tables"]:
            a = t.get("aligned", {})
            shares = [f"{t[k]:.1%}" if t.get(k) is not None else "-" for k in ("share_median", "share_worst")]
            lines.append(f"| {row['model']} | {'x'.join(map(str, row['input']))} | {t['runtime']} | {t['threads']} | "
                         f"{t['layers']} ({t['distinct']}) | {t['build_s']:.0f} s | {_form(t['fit'])} | "
                         f"{t['median']:.1%} | {t['worst']:.1%} | "
                         f"{a.get('median', float('nan')):.1%} | {a.get('worst', float('nan')):.1%} | "
                         + " | ".join(shares) + " |")
    for kind, pick in (("any widths", lambda t: t["median"]), ("multiples of 8", lambda t: t["aligned"]["median"])):
        errors = [pick(t) for row in results["rows"] for t in row["tables"] if kind == "any widths" or "aligned" in t]
        if errors:
            lines += ["", f"Median of the tables' median errors, {kind}: {statistics.median(errors):.1%} (goal <= 10%)."]
    lines += recheck_lines(results)
    two = any(m["method"].endswith("-2t") for row in results["rows"] for m in row["methods"])
    halp = any(m["method"].startswith("halp") for row in results["rows"] for m in row["methods"])
    flops_halp = any(m["method"].startswith("halp-flops") for row in results["rows"] for m in row["methods"])
    lines += ["", "**The speed-up** at -50% FLOPs (rl-latency: -50% predicted latency at batch 1; rl-flops-fast: "
              "the FLOPs target with the latency reward; "
              + ("halp-latency: HALP's ranking, importance per millisecond saved, at the latency target; "
                 + ("halp-flops-lat: the same ranking at the FLOPs target; " if flops_halp else "")
                 + "each " if halp else "both ") + "with PyTorch CPU's table at 1 thread, "
              + ("their -2t rows with its table at 2 threads, " if two else "") + "their -ort rows "
              "with ONNX Runtime's); each cell: latency change against the original (latency reduction / FLOPs "
              "reduction; goal >= 0.8; a + is a model slower than the original):", ""]
    for row in results["rows"]:
        keys = list(row["base_ms"])
        lines += [f"*{row['model']}* at {'x'.join(map(str, row['input']))}: base "
                  + ", ".join(f"{k} {row['base_ms'][k]:.1f} ms" for k in keys), "",
                  "| method | FLOPs | params | " + " | ".join(keys) + " |",
                  "|---|---:|---:|" + "---:|" * len(keys)]
        for m in row["methods"]:
            cells = [f"{m['latency'][k] / row['base_ms'][k] - 1:+.0%} ({m['ratio'][k]:.2f})" for k in keys]
            name = m["method"] + (f" (round_to {m['round_to']})" if m.get("round_to", 1) != 1 else "")
            if m.get("target_kind", "latency" if m["method"] == "rl-latency" else None) == "latency":
                name += f", latency target -{m['target']:.0%}"
            lines.append(f"| {name} | -{m['flops_reduction']:.0%} | -{m['params_reduction']:.0%} | "
                         + " | ".join(cells) + " |")
        for method, why in row.get("refused", {}).items():
            lines.append(f"{method}: refused: {why}")
        lines += checks_lines(row["methods"])
        if row.get("bounds"):
            timed = any("measured" in b for b in row["bounds"].values())
            lines += ["", f"The best allocation each table points to at -{results['settings']['target']:.0%} FLOPs "
                      "(greedy: 8 channels at a time, or the table's block where larger, from the group that saves "
                      "the most predicted latency per FLOP; "
                      + ("predicted, then built and timed on the table's runtime" if timed else "predicted, not timed")
                      + "): " + "; ".join(_bound_text(runtime, b) for runtime, b in row["bounds"].items()) + "."]
        if row.get("narrowest", {}).get("measured"):
            n = row["narrowest"]
            lines += ["", f"The narrowest model (every group cut to 8 channels, -{n['flops_reduction']:.0%} FLOPs; "
                      f"timed at commit {n['commit']}): " + "; ".join(
                          f"{key} " + ", ".join(f"{b} {t['ms'] / t['base_ms'] - 1:+.0%}" for b, t in timings.items())
                          for key, timings in n["measured"].items())
                      + ". What it keeps is latency that no allocation of channels removes."]
        lines.append("")
    lines += goal_lines(results)
    return lines


def checks_lines(methods: list[dict[str, Any]]) -> list[str]:
    """What the timing of each latency target said (rlpruner/search/measured.py), in order."""
    checked = [m for m in methods if m.get("checks")]
    if not checked:
        return []
    from rlpruner.search import CompressConfig

    defaults = CompressConfig()
    return ["", "The latency targets, timed when the table said they were reached (batch 1, on the runtime of "
            f"the row's table; a miss by more than {defaults.latency_slack:.0%} of the original's latency sends the "
            f"search on, at most {defaults.latency_checks} times): "
            + "; ".join(f"{m['method']} " + ", then ".join(
                f"{-c['measured_reduction']:+.0%} (table {-c['predicted_reduction']:+.0%})"
                + (", pruned on" if c["next_goal_ms"] is not None else "") for c in m["checks"])
                for m in checked) + "."]


def _commits(results: dict[str, Any]) -> str:
    """The commit of the run that wrote the file, or, where models were rerun later (`--models`),
    each commit with its models: a model's rows and its base are always timed in one run."""
    models: dict[str, list[str]] = {}
    for row in results["rows"]:
        models.setdefault(row.get("commit", results["machine"]["commit"]), []).append(row["model"])
    if len(models) <= 1:
        return f"commit {next(iter(models), results['machine']['commit'])}"
    return "commits " + "; ".join(f"{c} ({', '.join(m)})" for c, m in models.items())


def _of(stamp: dict[str, Any]) -> str:
    """" of resnet18, resnet50" where a `--bounds` stamp names the models it added to (older ones do not)."""
    return f" of {', '.join(stamp['models'])}" if stamp.get("models") else ""


def _timing_text(results: dict[str, Any]) -> str:
    """How the rows' models were timed against each other."""
    turns = [row["model"] for row in results["rows"] if row.get("timing") == "turns"]
    alone = [row["model"] for row in results["rows"] if row.get("timing") != "turns"]
    text = ("The models of each timing column (the original and every method's) are timed in turns "
            "(`Runtime.time_turns_ms`: at batch 1, turns of one untimed and 5 timed calls each for about 20 s; at "
            "batch 32, 3 turns of one call; a model's latency is the median of its turns), as are the tables' checks "
            "(each random model in turns with the original) and the bounds' timings (with the original)")
    if not alone:
        return text + "."
    old = ("timed one after the other, the original before and after them (the faster of the two kept), each "
           "table check's model alone")
    if not turns:
        return f"The models of each timing column were {old}."
    return f"{text}: {', '.join(turns)}; the rows of {', '.join(alone)} were {old}."


def _host_memory(results: dict[str, Any]) -> str:
    """The allocator state the models were timed in (`rlpruner.host_memory`; rows older than it
    were timed with glibc's adaptive defaults), per model where they differ."""
    states: dict[str, list[str]] = {}
    for row in results["rows"]:
        states.setdefault(row.get("host_memory", GLIBC_DEFAULTS), []).append(row["model"])
    if len(states) <= 1:
        return next(iter(states), GLIBC_DEFAULTS)
    return "; ".join(f"{state} ({', '.join(models)})" for state, models in states.items())


def _bound_text(runtime: str, bound: dict[str, Any]) -> str:
    text = (f"{runtime} -{bound['predicted_reduction']:.0%} latency at -{bound['flops_reduction']:.0%} FLOPs "
            f"({bound['predicted_reduction'] / bound['flops_reduction']:.2f})")
    if "measured" in bound:
        text += ", measured " + ", ".join(f"{b} {t['ms'] / t['base_ms'] - 1:+.0%} ({t['ratio']:.2f})"
                                         for b, t in bound["measured"].items())
    return text


def _form(fit: dict[str, Any]) -> str:
    """Which terms the table's fit chose, and its leave-one-out error on the whole models it was fitted on."""
    scales = set(fit["scales"].values())
    text = "one scale" if len(scales) <= 1 else "a scale per op kind"
    if fit.get("block", 1) > 1:
        text += f", widths off multiples of {fit['block']}"
    return text + (f" ({fit['cv_error']:.1%})" if fit.get("cv_error") is not None else "")


def aware_for(column: str, present: Collection[str] = ()) -> tuple[str, ...]:
    """The latency-aware or rounded configurations of the goal for one timing column
    ("runtime/threads/batch"): uniform-r8, and the search rows (RL, HALP) run with that runtime's table at the
    column's thread count, or (results without such rows among `present`: those of earlier runs) with
    that runtime's table at 1 thread."""
    runtime, threads = column.split("/")[0], int(column.split("/")[1].removesuffix("t"))
    same = [m for m, row in RL_ROWS.items() if row.runtime == runtime]
    matched = [m for m in same if RL_ROWS[m].threads == threads]
    if present and not set(matched) & set(present):
        matched = [m for m in same if RL_ROWS[m].threads == 1]
    return (ROUNDED, *matched)


def goal_lines(results: dict[str, Any]) -> list[str]:
    """Per 224x224 model and CPU timing: does a latency-aware or rounded configuration reach >= 0.8?
    Also counted for each configuration alone, so that the best-of is not the only figure."""
    met, total, missed = 0, 0, []
    alone: dict[str, list[int]] = {}
    for row in results["rows"]:
        if row["input"][-1] < 224:
            continue
        present = [m["method"] for m in row["methods"]]
        for key in row["base_ms"]:
            if not key.startswith(("torch-cpu", "onnxruntime-cpu")):
                continue
            ratios = {m["method"]: m["ratio"][key] for m in row["methods"] if m["method"] in aware_for(key, present)}
            total += 1
            for method, ratio in ratios.items():
                counts = alone.setdefault(_family(method), [0, 0])
                counts[0] += ratio >= 0.8
                counts[1] += 1
            if ratios and max(ratios.values()) >= 0.8:
                met += 1
            else:
                missed.append(f"{row['model']} {key} (best {max(ratios.values(), default=float('nan')):.3f})")
    if not total:
        return []
    return [f"Goal (latency reduction >= 0.8 x FLOPs reduction with uniform-r8 or a latency-aware row searched "
            f"with the column's runtime's table at the column's thread count, or at 1 thread where the run built no "
            f"other, every 224x224 model, every CPU timing): met in {met} of {total}"
            + (f"; missed: {', '.join(missed)}." if missed else "."), "",
            "Each configuration alone: " + ", ".join(f"{m} {c[0]} of {c[1]}" for m, c in alone.items()) + ".", ""]


def _family(method: str) -> str:
    """A row's name without the suffix of the table it searched with (rl-latency-ort -> rl-latency)."""
    for suffix in VARIANT_SUFFIXES:
        method = method.removesuffix(suffix)
    return method


def render_markdown(results: dict[str, Any]) -> str:
    return "\n".join(table(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under runs/bench-quick/")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--bounds", action="store_true",
                        help="only add the table bound to rows that lack it, from the tables their run cached, "
                             "and time the bounds' allocations not yet timed")
    parser.add_argument("--recheck", action="store_true",
                        help="only measure each table's error again (the same random models) in this fresh "
                             "process, from the tables the run cached")
    args = parser.parse_args(argv)
    settings = quick() if args.quick else LatencyModelSettings()
    if args.models:
        settings = LatencyModelSettings(**{**asdict(settings), "models": tuple(args.models)})
    mode = "quick" if args.quick else "full"
    out = (ROOT / "runs" / "bench-quick" / "results" if args.quick else RESULTS) / "latency_model"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    if args.recheck:
        run_recheck(settings, out, WORK / mode / "latency_model", log)
    elif args.bounds:
        run_bounds(settings, out, WORK / mode / "latency_model", log)
    else:
        run(settings, out, WORK / mode / "latency_model", log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
