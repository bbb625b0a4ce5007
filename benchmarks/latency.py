"""Real speed-up on CPU: latency at batch 1 and batch 64 before and after pruning, against FLOPs.

Two series:
- *compressed*: the models the accuracy benchmark produced (seed 0, with recovery), at its input
  size; the speed-up that comes with the accuracies in the tables.
- *round_to*: larger inputs, one-shot uniform pruning (`rlpruner.pruner.prune_to_flops`) to each
  FLOPs target, with and without removing channels in multiples of 8 (`round_to=8`, so widths stay
  multiples of 8), to show what hardware-friendly widths buy.

Base and pruned models are timed in alternating chunks, so drift in the machine's load (other
processes, frequency scaling) falls on both alike; each number is the best of the chunk medians.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .settings import ALLOW_IMPORTS, LatencySettings, machine, resolve

CHUNKS = 5


def paired_latency(base: nn.Module, pruned: nn.Module, example: torch.Tensor, batch: int, repeats: int,
                   threads: int) -> tuple[float, float]:
    """(base ms, pruned ms), timed in alternating chunks: the best chunk median of each. On a shared
    machine a burst of outside load slows whole chunks; the best chunk is the model's own cost."""
    from rlpruner.metrics import measure_latency

    per_chunk = max(1, repeats // CHUNKS)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(CHUNKS):
        for model, out in ((base, times[0]), (pruned, times[1])):
            out.append(measure_latency(model, example, batch_size=batch, warmup=1, repeats=per_chunk,
                                       threads=threads).median_ms)
    return min(times[0]), min(times[1])


def repeats_for(batch: int, settings: LatencySettings) -> int:
    """Large batches take long and vary little: fewer repeats."""
    return settings.repeats if batch == 1 else max(CHUNKS, settings.repeats // 4)


def _timings(base: nn.Module, pruned: nn.Module, example: torch.Tensor, settings: LatencySettings) -> dict:
    out = {}
    for batch in settings.batches:
        base_ms, pruned_ms = paired_latency(base, pruned, example, batch, repeats_for(batch, settings),
                                            settings.threads)
        out[str(batch)] = {"base_ms": base_ms, "pruned_ms": pruned_ms, "reduction": 1.0 - pruned_ms / base_ms}
    return out


def compressed_series(accuracy: dict, settings: LatencySettings, log: Callable[[str], None]) -> list[dict]:
    """Latency of every seed-0, recovered model of the accuracy results against its base model."""
    from rlpruner import io

    rows = []
    bases = {(b["model"], b["dataset"]): b for b in accuracy.get("base", [])}
    for run in accuracy.get("runs", []):
        if run["seed"] != min(r["seed"] for r in accuracy["runs"]) or not run["recovery"]:
            continue
        base_row, model_path = bases.get((run["model"], run["dataset"])), resolve(run["run_dir"]) / "model.rlp"
        if base_row is None or not model_path.exists():
            log(f"latency: skipping {run['model']} {run['dataset']} {run['method']} (no saved model)")
            continue
        base = io.load(resolve(base_row["checkpoint"]), allow_imports=ALLOW_IMPORTS)
        pruned, meta = io.load_checkpoint(model_path, allow_imports=ALLOW_IMPORTS)
        example = torch.rand(1, *meta["input_shape"])
        rows.append({"model": run["model"], "dataset": run["dataset"], "method": run["method"],
                     "target": run["target"], "flops_reduction": run["flops_reduction"],
                     "input": list(meta["input_shape"]), "batch": _timings(base, pruned, example, settings)})
        log(_line(rows[-1]))
    return rows


def round_to_series(settings: LatencySettings, log: Callable[[str], None]) -> list[dict]:
    """Uniform one-shot pruning to each FLOPs target; `round_to` removes channels in multiples of it, so
    widths that were multiples of 8 stay so (the same option as `rlpruner compress --round-to`)."""
    import rlpruner
    from rlpruner.pruner import prune_to_flops

    rows = []
    for spec in settings.models:
        torch.manual_seed(0)
        base = spec.create(10, 3).eval()
        example = torch.rand(1, 3, settings.size, settings.size)
        flops = rlpruner.count(base, example).flops
        for target in settings.targets:
            for multiple in settings.round_to:
                pruned = prune_to_flops(_copy(base), example, target, method="uniform", round_to=multiple)
                rows.append({"model": spec.label, "size": settings.size, "target": target, "round_to": multiple,
                             "flops_reduction": 1.0 - rlpruner.count(pruned, example).flops / flops,
                             "batch": _timings(base, pruned, example, settings)})
                log(_line(rows[-1]))
    return rows


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _line(row: dict) -> str:
    parts = [f"batch {b}: {t['base_ms']:.2f} -> {t['pruned_ms']:.2f} ms (-{t['reduction']:.0%})"
             for b, t in row["batch"].items()]
    what = row.get("method") or f"round_to={row['round_to']}"
    return f"latency {row['model']:>12s} {what:<10s} FLOPs -{row['flops_reduction']:.0%}: " + "; ".join(parts)


def run(settings: LatencySettings, accuracy: dict, results_path: Path, log: Callable[[str], None] = print) -> dict:
    from dataclasses import asdict

    from rlpruner.io import atomic_write_json

    start = time.perf_counter()
    results = {"kind": "latency", "machine": machine(), "settings": asdict(settings),
               "compressed": compressed_series(accuracy, settings, log),
               "round_to": round_to_series(settings, log)}
    results["seconds"] = time.perf_counter() - start
    atomic_write_json(results_path, results)
    return results
