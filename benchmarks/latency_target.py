"""Accuracy at equal latency: RL-Pruner and HALP with a latency target against uniform and RL with a FLOPs target.

    python benchmarks/latency_target.py            # ResNet-20 on the hard synthetic set, -50/-75/-90 % FLOPs, 3 seeds
    python benchmarks/latency_target.py --models resnet20 vgg11 --datasets synthetic-hard
    python benchmarks/latency_target.py --quick    # a smoke run under runs/bench-quick/

For each FLOPs target, uniform pruning to that target sets the latency the latency run must reach:
RL-Pruner runs with a latency target equal to the uniform model's *predicted* latency reduction on
the run's latency table (PyTorch CPU, 1 thread, batch `batch`; built once in the main process before
any run), so every step removes equal predicted latency and no candidate is timed. HALP's ranking
(`halp-latency`: the run's importance criterion per millisecond of predicted latency saved, the
published latency-aware method) runs in the same loop with the same latency target, once as published
and once with a floor per group (`halp-latency-r0.8`: no group loses more than 80 % of its original
width, `--max-group-ratio 0.8`). A cell whose
uniform model is not predicted faster than the base (odd widths can be slower) gets no latency run,
and the page says so. Uniform and RL with a FLOPs target run the accuracy
benchmark's loop at the FLOPs target (benchmarks/accuracy.py: same base model, one KD epoch per
step, the same total KD budget, then one test evaluation). Once every run is done, the final models
of each model and dataset are timed in turns with their base model (`Runtime.time_turns_ms`, PyTorch
CPU, 1 thread) at `timing_batches`, in the main process with nothing else running: a machine that
slows down for a while slows them all alike, so their reductions compare. Predicted and measured latency differ, so the
page also reads every method's accuracy at the uniform models' *measured* latencies off its own
measured accuracy-latency curve (linear between its FLOPs targets, never extrapolated): the
comparison at equal measured latency that the issue asks for.
Rows are written as runs finish; an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import (ALLOW_IMPORTS, RESULTS, ROOT, WORK,  # noqa: E402
                                 AccuracySettings, full, machine, portable, resolve)

LATENCY = "rl-latency"
HALP = "halp-latency"
HALP_FLOOR = "halp-latency-r0.8"


@dataclass(frozen=True)
class LatencyRun:
    """A run with the matched latency target: its allocator and the search options it changes."""

    allocator: str
    rl: tuple[tuple[str, Any], ...] = ()


# HALP-r0.8: the same ranking, no group losing more than 80 % of its original width (--max-group-ratio;
# one value, set before its runs: without a floor HALP took ResNet-20's second stage to width 1)
LATENCY_RUNS = {LATENCY: LatencyRun("rl"), HALP: LatencyRun("halp"),
                HALP_FLOOR: LatencyRun("halp", (("max_group_ratio", 0.8),))}
METHODS = ("uniform", "rl", LATENCY, HALP, HALP_FLOOR)
CORE = METHODS[:3]  # what a cell's verdict needs (results written before HALP's row have no HALP)
MIN_TARGET = 0.005  # a uniform model predicted less than this much faster gets no latency run


@dataclass(frozen=True)
class StudySettings:
    accuracy: AccuracySettings  # models, datasets, FLOPs targets, seeds, KD budget (its methods are ignored)
    batch: int = 1                        # the latency table's batch (what the latency run optimises)
    timing_batches: tuple[int, ...] = (1, 64)
    pair_seconds: float = 5.0             # how long each final model is timed against its base per timing batch


TIMING = ("timing_batches", "pair_seconds")  # settings that change how rows are timed, not the runs


@dataclass(frozen=True)
class StudyJob:
    run: Any                    # accuracy.RunJob
    batch: int
    cache: Path                 # latency tables, shared by the runs of one model
    latency_target: float | None = None  # the latency run's target (matched_latency_targets)


def default_settings(models: tuple[str, ...] = ("resnet20",), datasets: tuple[str, ...] = ("synthetic-hard",),
                     targets: tuple[float, ...] = (0.5, 0.75, 0.9), seeds: tuple[int, ...] = (0, 1, 2)) -> StudySettings:
    grid = full().accuracy
    pick = {m.label: m for m in grid.models}
    data = {d.label: d for d in grid.datasets}
    unknown = [m for m in models if m not in pick] + [d for d in datasets if d not in data]
    if unknown:
        raise SystemExit(f"latency_target: unknown model or dataset {', '.join(unknown)}; models: "
                         f"{', '.join(pick)}; datasets: {', '.join(data)}")
    return StudySettings(replace(grid, models=tuple(pick[m] for m in models), datasets=tuple(data[d] for d in datasets),
                                 targets=tuple(targets), seeds=tuple(seeds), methods=METHODS[:2], no_recovery=False))


def quick() -> StudySettings:
    """A few minutes: the quick suite's model and dataset, one seed, the -50 % target, 2-epoch KD budget."""
    from benchmarks.settings import quick as quick_suite

    return StudySettings(replace(quick_suite().accuracy, targets=(0.5,), methods=METHODS[:2], no_recovery=False,
                                 kd_budget=2), timing_batches=(1, 4), pair_seconds=0.5)


# --------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------

def run_job(job: StudyJob) -> dict[str, Any]:
    """Uniform and RL (FLOPs target) as in the accuracy benchmark; RL and HALP (with and without a
    floor per group) with the latency target matched to the uniform model's predicted latency."""
    from benchmarks.accuracy import compress_config, run_compress

    run = job.run
    if run.method not in LATENCY_RUNS:
        return run_compress(run)
    from rlpruner.search import Target

    how = LATENCY_RUNS[run.method]
    config = compress_config(run.base.settings, how.allocator, run.target, run.seed, run.recovery)
    config = replace(config, rl=replace(config.rl, **dict(how.rl)), target=Target("latency", job.latency_target),
                     latency_runtime="torch-cpu", latency_threads=1, latency_batch=job.batch,
                     latency_cache=str(job.cache))
    return {**run_compress(run, config), "latency_target": job.latency_target, "checks": checks_of(run.out_dir)}


def checks_of(run_dir: Path) -> list[dict[str, Any]] | None:
    """What a latency run's target checks found (results.json's `latency_checks`, in short): each
    timing's reduction with its interval, the table's prediction, and whether the search went on.
    None where the run left no results (or ran before they were kept)."""
    import json

    try:
        checks = json.loads((run_dir / "results.json").read_text())["latency_checks"]
    except (OSError, ValueError, KeyError):
        return None
    return [{"step": c["step"], "measured": c["measured_reduction"], "low": c.get("measured_low"),
             "high": c.get("measured_high"), "predicted": c["predicted_reduction"],
             "pruned_on": c["next_goal_ms"] is not None, "process": c.get("process")} for c in checks]


def matched_latency_targets(base_job: Any, targets: tuple[float, ...], batch: int, cache: Path) -> dict[float, float]:
    """Per FLOPs target, the predicted latency reduction of the base model pruned uniformly to it
    (the latency table is built, or reused, here)."""
    import torch

    from rlpruner import io
    from rlpruner.graph import trace
    from rlpruner.latency import cached_table, get_runtime
    from rlpruner.pruner import prune_to_flops

    torch.set_num_threads(1)
    base = io.load(base_job.path, allow_imports=ALLOW_IMPORTS).eval()
    example = base_job.dataset.load().example_inputs()
    graph = trace(base, example)
    table = cached_table(base, graph, example, get_runtime("torch-cpu", 1), batch=batch, cache_dir=cache)
    original = table.predict(graph.shapes)
    return {target: 1.0 - table.predict(trace(prune_to_flops(copy.deepcopy(base), example, target, method="uniform"),
                                              example).shapes) / original for target in targets}


# --------------------------------------------------------------------------------------------------
# Main process
# --------------------------------------------------------------------------------------------------

def jobs(settings: StudySettings, bases: list[Any], work: Path,
         matched: dict[tuple[str, str, float], float]) -> list[StudyJob]:
    """Every run of the study; a latency run only where its matched target is a reduction."""
    from benchmarks.accuracy import RunJob, run_name

    folder, out = study_folder(work), []
    for seed in settings.accuracy.seeds:
        for target in settings.accuracy.targets:
            for base in bases:
                goal = matched.get((base.model.label, base.dataset.label, target))
                for method in METHODS:
                    if method in LATENCY_RUNS and (goal is None or goal <= MIN_TARGET):
                        continue
                    out.append(StudyJob(RunJob(base, method, target, seed, True,
                                               folder / run_name(base, method, target, seed)),
                                        settings.batch, folder / "cache", goal if method in LATENCY_RUNS else None))
    return out


def study_folder(work: Path) -> Path:
    """Where the study's runs and latency tables live under the benchmark's work folder."""
    return work / "latency-target"


def turns(batch: int, seconds: float) -> Any:
    """How a final model and its base are timed against each other at `batch`: turns of one untimed
    and 5 timed calls at batch 1, of one timed call at larger batches, for about `seconds`."""
    from rlpruner.latency import Turns

    if batch == 1:
        return Turns(warmup=2, block=5, settle=1, seconds=seconds)
    return Turns(warmup=1, block=1, settle=0, seconds=seconds)


def time_rows(rows: list[dict[str, Any]], bases: dict[tuple[str, str], Any], settings: StudySettings,
              log: Callable[[str], None]) -> None:
    """The final models of the rows not timed yet, each in turns with its base model alone
    (`Runtime.time_ratio`, `pair_seconds` per timing batch), in the main process with nothing else
    running; rows timed before are kept. A pair, not all models of a cell together: in one session of
    46 ResNet-20 models the three uniform models of a level, one architecture, measured up to 6 points
    apart, and a second session moved models by 3 points (median) and up to 10; pairs timed again
    agreed within about 2 (benchmarks/reading.md)."""
    from rlpruner import io
    from rlpruner.latency import get_runtime
    from rlpruner.metrics import _latency_inputs

    runtime = get_runtime("torch-cpu", 1)
    pending: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if "latency" not in row:
            pending.setdefault((row["model"], row["dataset"]), []).append(row)
    for key, group in pending.items():
        base = io.load(bases[key].path, allow_imports=ALLOW_IMPORTS).eval()
        example = bases[key].dataset.load().example_inputs()
        log(f"timing {len(group)} models of {key[0]} on {key[1]}, each in turns with their base")
        for row in group:
            model = io.load(resolve(row["run_dir"]) / "model.rlp", allow_imports=ALLOW_IMPORTS).eval()
            latency = {}
            for batch in settings.timing_batches:
                inputs = _latency_inputs(example, batch, runtime.device)
                ratio = runtime.time_ratio(base, model, inputs, turns(batch, settings.pair_seconds))
                reduction, low, high = ratio.reductions
                latency[str(batch)] = {"base_ms": ratio.first_ms, "pruned_ms": ratio.second_ms,
                                       "reduction": reduction, "low": low, "high": high, "turns": ratio.turns}
            row["latency"], row["timing"] = latency, "pairs"
            log(f"timed {row['model']} {row['method']} -{row['target']:.0%} s{row['seed']}: " + ", ".join(
                f"batch {b} {-v['reduction']:+.1%} (95% interval {-v['high']:+.1%} to {-v['low']:+.1%})"
                for b, v in latency.items()))


def run(settings: StudySettings, out: Path, work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    import json

    from rlpruner.io import atomic_write_json, atomic_write_text

    from benchmarks.accuracy import _gather, _pool, base_jobs, row_key, train_base

    path = out.with_suffix(".json")
    wanted = json.loads(json.dumps(asdict(settings)))
    results = json.loads(path.read_text()) if path.exists() else None
    if results is None or _runs_part(results.get("settings", {})) != _runs_part(wanted):
        results = {"kind": "latency_target", "settings": wanted, "runs": []}
    elif {k: results["settings"].get(k) for k in TIMING} != {k: wanted[k] for k in TIMING}:
        log("latency_target: the timing settings changed: the runs are kept, their final models timed again")
        for row in results["runs"]:
            row.pop("latency", None)
            row.pop("timing", None)
        results["settings"] = {**results["settings"], **{k: wanted[k] for k in TIMING}}
        results["settings"].pop("seconds", None)  # the earlier timing's setting
    seeds = sorted(set(results["settings"]["accuracy"]["seeds"]) | set(wanted["accuracy"]["seeds"]))
    results["settings"]["accuracy"]["seeds"] = seeds  # more seeds add rows; other settings start afresh
    for row in results["runs"]:  # rows kept from an earlier run: the commit that run recorded
        row.setdefault("commit", results.get("machine", {}).get("commit"))
    results["machine"] = machine()
    bases = base_jobs(settings.accuracy, work)
    with _pool(settings.accuracy.workers) as pool:
        for row in _gather(pool, train_base, bases, lambda row: None):
            log(f"base {row['model']} on {row['dataset']}: test {row['test_acc']:.2%}")
        matched = {}
        for base in bases:
            for target, goal in matched_latency_targets(base, settings.accuracy.targets, settings.batch,
                                                        study_folder(work) / "cache").items():
                matched[(base.model.label, base.dataset.label, target)] = goal
                log(f"{base.model.label} {base.dataset.label} uniform at -{target:.0%} FLOPs: predicted latency "
                    f"{-goal:+.1%} at batch {settings.batch}" + ("" if goal > MIN_TARGET else "; no latency run"))
        results["matched"] = [[*key, goal] for key, goal in matched.items()]
        for row in results["runs"]:  # rows written before the checks were kept: read from their runs
            if row["method"] in LATENCY_RUNS and row.get("checks") is None:
                row["checks"] = checks_of(resolve(row["run_dir"]))
        done = {row_key(r) for r in results["runs"]}
        todo = [j for j in jobs(settings, bases, work, matched) if j.run.key not in done]
        log(f"latency_target: {len(done)} runs in {path.name}, {len(todo)} to go")
        start = time.perf_counter()

        def keep(row: dict[str, Any]) -> None:
            row["run_dir"] = portable(Path(row["run_dir"]))
            row["commit"] = results["machine"]["commit"]
            results["runs"].append(row)
            atomic_write_json(path, results)
            extra = f" (latency target -{row['latency_target']:.1%})" if row["method"] in LATENCY_RUNS else ""
            log(f"{row['model']} {row['dataset']} {row['method']}{extra} -{row['target']:.0%} s{row['seed']}: test "
                f"{row['test_acc']:.2%}, FLOPs -{row['flops_reduction']:.1%} ({time.perf_counter() - start:.0f} s)")

        _gather(pool, run_job, todo, keep)
    time_rows(results["runs"], {(b.model.label, b.dataset.label): b for b in bases}, settings, log)
    atomic_write_json(path, results)
    atomic_write_text(out.with_suffix(".md"), render_markdown(results) + "\n")
    return results


def _commits(results: dict[str, Any]) -> str:
    """The commit of the run that wrote the file, or, where runs of several commits share it (a
    method added later, a resumed study), each commit with its number of runs."""
    counts: dict[str, int] = {}
    for row in results["runs"]:
        commit = row.get("commit", results["machine"]["commit"])
        counts[commit] = counts.get(commit, 0) + 1
    if len(counts) <= 1:
        return f"commit {results['machine']['commit']}"
    return "runs of commits " + ", ".join(f"{c} ({n})" for c, n in counts.items())


def _runs_part(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings the runs depend on: all but the seeds (more seeds add rows) and how the final
    models are timed (`TIMING`, and the earlier timing's `seconds`)."""
    kept = {k: v for k, v in settings.items() if k not in (*TIMING, "seconds")}
    return {**kept, "accuracy": {k: v for k, v in settings.get("accuracy", {}).items() if k != "seeds"}}


def _mean(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * sd:.1f}"


TIMINGS = {"pairs": "each timed in turns with its base alone", "turns": "timed in turns with the base and the other "
             "final models of the same model and data", None: "timed in alternating chunks with the base"}


def _timing_text(rows: list[dict[str, Any]], seconds: float | None) -> str:
    """How the rows' final models were timed against their base (rows written before the turns say
    nothing: they were timed in alternating chunks), and, for pairs, how precisely."""
    counts: dict[Any, int] = {}
    for row in rows:
        counts[row.get("timing")] = counts.get(row.get("timing"), 0) + 1
    if len(counts) > 1:
        return "; ".join(f"{n} of the {len(rows)} models {TIMINGS[way]}" for way, n in counts.items())
    way = next(iter(counts), "pairs")
    if way != "pairs":
        return TIMINGS[way]
    widths = sorted(v["high"] - v["low"] for row in rows for v in row.get("latency", {}).values() if "low" in v)
    width = f"; the 95 % intervals of the reductions are {100 * statistics.median(widths):.1f} points wide (median)" \
        if widths else ""
    length = f"about {seconds:g} s per batch size" if seconds else "each batch size"
    return f"{TIMINGS[way]} ({length}{width})"


def render_markdown(results: dict[str, Any]) -> str:
    """The page of a results file (generated, never typed)."""
    s = results["settings"]
    batch, timed = str(s["batch"]), [str(b) for b in s["timing_batches"]]
    lines = [f"Machine: {results['machine']['cpu']}, {_commits(results)}. Command: "
             "`python benchmarks/latency_target.py`. Test top-1 (mean ± sd over seeds) after the same "
             f"{s['accuracy']['kd_budget']} KD epochs; latency change of the final model against its base, "
             f"PyTorch CPU, 1 thread, {_timing_text(results['runs'], s.get('pair_seconds'))} after all runs (mean over "
             "seeds). The latency "
             f"run's target is the uniform model's predicted latency reduction at batch {batch}.", ""]
    cells: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for row in results["runs"]:
        cells.setdefault((row["model"], row["dataset"], row["target"]), {}).setdefault(row["method"], []).append(row)
    lines += ["| model / data | FLOPs target | method | test top-1 | FLOPs | params | "
              + " | ".join(f"latency b{b}" for b in timed) + " | seeds |",
              "|---|---:|---|---:|---:|---:|" + "---:|" * len(timed) + "---:|"]
    verdicts = []
    for (model, dataset, target), methods in sorted(cells.items()):
        for method in METHODS:
            rows = methods.get(method, [])
            if not rows:
                continue
            name = method + (f" (target -{statistics.mean(r['latency_target'] for r in rows):.0%} latency)"
                             if method in LATENCY_RUNS else "")
            lat = [[r["latency"][b]["reduction"] for r in rows if "latency" in r] for b in timed]
            lat_cells = [f"{-statistics.mean(v):+.0%}" if v else "—" for v in lat]
            lines.append(f"| {model} / {dataset} | -{target:.0%} | {name} | {_mean([r['test_acc'] for r in rows])} | "
                         f"-{statistics.mean(r['flops_reduction'] for r in rows):.0%} | "
                         f"-{statistics.mean(r['params_reduction'] for r in rows):.0%} | {' | '.join(lat_cells)} | "
                         f"{len(rows)} |")
        verdicts.append(_verdict(model, dataset, target, methods, batch))
    skipped = [f"- {m} / {d} at -{t:.0%} FLOPs: the uniform model is predicted {-g:+.1%} at batch {batch} "
               "(not faster than the base), so there is no latency to match: no latency run."
               for m, d, t, g in results.get("matched", []) if g <= MIN_TARGET]
    return "\n".join(lines + [""] + [v for v in verdicts if v] + skipped + check_lines(results["runs"])
                     + equal_latency_lines(cells, timed))


PROCESSES = {"fresh": "a fresh process", "run": "the run's process"}


def check_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per latency method: how often its check sent the search on, and how the first timing compared
    with the table's prediction (rows that kept their checks only)."""
    out = []
    for method in LATENCY_RUNS:
        kept = [r["checks"] for r in rows if r["method"] == method and r.get("checks")]
        if not kept:
            continue
        sent = sum(any(c["pruned_on"] for c in checks) for checks in kept)
        gaps = [100 * (checks[0]["measured"] - checks[0]["predicted"]) for checks in kept]
        places = sorted({c.get("process") or "run" for checks in kept for c in checks})
        out.append(f"- {method}: its check (timed when the table said the target was reached, in "
                   f"{' and '.join(PROCESSES[p] for p in places)}) sent the search on in {sent} of {len(kept)} runs; "
                   f"the first timing measured {statistics.median(gaps):+.1f} points of reduction against the table's "
                   f"prediction (median; from {min(gaps):+.1f} to {max(gaps):+.1f}).")
    return [""] + out if out else []


def curve(rows_by_target: dict[float, list[dict[str, Any]]], batch: str) -> list[tuple[float, float]]:
    """One method's (mean measured latency reduction at `batch`, mean test top-1) per FLOPs target,
    sorted by latency reduction; targets without timings are left out."""
    points = []
    for rows in rows_by_target.values():
        reductions = [r["latency"][batch]["reduction"] for r in rows if batch in r.get("latency", {})]
        if reductions:
            points.append((statistics.mean(reductions), statistics.mean(r["test_acc"] for r in rows)))
    return sorted(points)


def at_latency(points: list[tuple[float, float]], reduction: float) -> float | None:
    """Top-1 interpolated linearly along a method's measured curve at this latency reduction; None
    outside the range its models measured (no extrapolation)."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= reduction <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (reduction - x0) / (x1 - x0)
    if points and points[0][0] == reduction:
        return points[0][1]
    return None


def equal_latency_lines(cells: dict[tuple, dict[str, list[dict[str, Any]]]], timed: list[str]) -> list[str]:
    """Every method's accuracy at the uniform models' *measured* latencies, read off its own measured
    accuracy-latency curve (the FLOPs targets are its points): the comparison at equal latency that
    the matched targets only approximate, since predicted and measured latency differ."""
    by_pair: dict[tuple[str, str], dict[str, dict[float, list[dict[str, Any]]]]] = {}
    for (model, dataset, target), methods in cells.items():
        for method, rows in methods.items():
            by_pair.setdefault((model, dataset), {}).setdefault(method, {})[target] = rows
    present = {m for methods in cells.values() for m in methods}
    others = [m for m in METHODS[1:] if m in present]
    lines = ["", "**At equal measured latency.** Each method's top-1 at the uniform models' measured latency, "
             "interpolated linearly between its own models (its FLOPs targets) on the measured latency axis; "
             "'—' where the uniform model's latency lies outside the range that method's models measured:", "",
             "| model / data | batch | uniform model | its latency | uniform top-1 | "
             + " | ".join(f"{m} at that latency" for m in others) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(others)]
    rows_out = 0
    for (model, dataset), methods in sorted(by_pair.items()):
        if "uniform" not in methods:
            continue
        for batch in timed:
            curves = {m: curve(methods.get(m, {}), batch) for m in others}
            for target, rows in sorted(methods["uniform"].items()):
                point = curve({target: rows}, batch)
                if not point:
                    continue
                reduction, accuracy = point[0]
                cells_out = []
                for m in others:
                    value = at_latency(curves[m], reduction)
                    cells_out.append("—" if value is None else
                                     f"{100 * value:.1f} ({100 * (value - accuracy):+.1f})")
                lines.append(f"| {model} / {dataset} | {batch} | -{target:.0%} FLOPs | {-reduction:+.0%} | "
                             f"{100 * accuracy:.1f} | " + " | ".join(cells_out) + " |")
                rows_out += 1
    return lines if rows_out else []


def _verdict(model: str, dataset: str, target: float, methods: dict[str, list[dict[str, Any]]], batch: str) -> str:
    """RL with the latency target against uniform, RL with the FLOPs target and (where it ran) HALP:
    accuracy, and measured latency at the batch the latency run optimised."""
    if not all(m in methods for m in CORE):
        return ""
    acc = {m: statistics.mean(r["test_acc"] for r in rows) for m, rows in methods.items()}
    lat = {m: [r["latency"][batch]["reduction"] for r in rows if "latency" in r and batch in r["latency"]]
           for m, rows in methods.items()}
    change = {m: -statistics.mean(v) for m, v in lat.items() if v}
    parts = [f"{m} {100 * (acc[LATENCY] - acc[m]):+.1f} pts" for m in METHODS if m in acc and m != LATENCY]
    speed = ", ".join(f"{m} {change[m]:+.0%}" for m in METHODS if m in change)
    return (f"- {model} / {dataset} at -{target:.0%} FLOPs: {LATENCY} against " + ", ".join(parts)
            + (f"; measured latency at batch {batch}: {speed}" if speed else "") + ".")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under runs/bench-quick/")
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--datasets", nargs="+", default=["synthetic-hard"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=None, help="folder of latency_target.{json,md}")
    parser.add_argument("--work", type=Path, default=None, help="folder of base models and runs (runs/bench/MODE)")
    args = parser.parse_args(argv)
    settings = quick() if args.quick else default_settings(tuple(args.models), tuple(args.datasets),
                                                           tuple(args.targets), tuple(args.seeds))
    mode = "quick" if args.quick else "full"
    folder = args.results or (ROOT / "runs" / "bench-quick" / "results" if args.quick else RESULTS)
    out = folder / "latency_target"
    out.parent.mkdir(parents=True, exist_ok=True)
    run(settings, out, args.work or WORK / mode, lambda line: print(line, flush=True))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
