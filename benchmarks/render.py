"""Results files -> markdown tables, PNG plots and docs/benchmarks.md. Nothing here is typed by hand:
every number comes from benchmarks/results/*.json.

    python benchmarks/render.py                    # regenerate docs/benchmarks.md from the results
    python benchmarks/render.py --results DIR --doc OUT.md

Accuracies are shown in percent as mean ± sample standard deviation over seeds (just the mean when
there is one seed); a missing run shows as "—".
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import METHODS, RESULTS, ROOT  # noqa: E402

METHOD_NAMES = {"rl": "RL-Pruner", "uniform": "uniform", "global": "global magnitude"}
LATENCY_GOAL = 0.8   # the target: latency reduction >= 0.8 x FLOPs reduction at batch 64
MISSING = "—"


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------

def mean_spread(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample standard deviation, n) of the values that are present; spread 0 for n = 1."""
    present = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not present:
        return None
    spread = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return float(np.mean(present)), spread, len(present)


def fmt_stat(stat: tuple[float, float, int] | None, scale: float = 100.0, digits: int = 1) -> str:
    if stat is None:
        return MISSING
    mean, spread, n = stat
    if n == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {spread * scale:.{digits}f}"


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Rank correlation (average ranks for ties); None when undefined."""
    if len(a) < 3 or len(a) != len(b):
        return None
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):  # ties share their average rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


# --------------------------------------------------------------------------------------------------
# Accuracy tables
# --------------------------------------------------------------------------------------------------

def settings_keys(accuracy: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(model, dataset, target) in the order the runs were configured, else as they appear."""
    s = accuracy.get("settings", {})
    keys = [(m["label"], d["label"], float(t)) for m in s.get("models", []) for d in s.get("datasets", [])
            for t in s.get("targets", [])]
    for r in accuracy.get("runs", []):
        key = (r["model"], r["dataset"], float(r["target"]))
        if key not in keys:
            keys.append(key)
    return keys


def cell(accuracy: Mapping[str, Any], key: tuple[str, str, float], method: str, recovery: bool,
         field: str = "test_acc") -> tuple[float, float, int] | None:
    model, dataset, target = key
    return mean_spread(r.get(field) for r in accuracy.get("runs", [])
                       if r["model"] == model and r["dataset"] == dataset and abs(r["target"] - target) < 1e-9
                       and r["method"] == method and bool(r["recovery"]) == recovery)


def base_acc(accuracy: Mapping[str, Any], model: str, dataset: str) -> float | None:
    for b in accuracy.get("base", []):
        if b["model"] == model and b["dataset"] == dataset:
            return b["test_acc"]
    return None


def accuracy_table(accuracy: Mapping[str, Any], recovery: bool) -> list[str]:
    """One row per (model, dataset, FLOPs target): base and each method's test top-1 (%)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in accuracy.get("runs", []))]
    header = ["model", "dataset", "FLOPs target", "base"] + [METHOD_NAMES[m] for m in methods] + \
             ["RL − best baseline", "FLOPs reached (RL)"]
    lines = [_row(header), _row(["---"] * 3 + ["---:"] * (len(header) - 3))]
    for key in settings_keys(accuracy):
        stats = {m: cell(accuracy, key, m, recovery) for m in methods}
        if all(s is None for s in stats.values()):
            continue
        base = base_acc(accuracy, key[0], key[1])
        reached = cell(accuracy, key, "rl", recovery, "flops_reduction")
        lines.append(_row([key[0], key[1], f"-{key[2]:.0%}", MISSING if base is None else f"{100 * base:.1f}",
                           *(_bold_best(stats, m) for m in methods), _margin(stats),
                           MISSING if reached is None else f"-{100 * reached[0]:.1f}%"]))
    return lines


def _bold_best(stats: Mapping[str, Any], method: str) -> str:
    text = fmt_stat(stats[method])
    present = [s[0] for s in stats.values() if s is not None]
    return f"**{text}**" if stats[method] is not None and stats[method][0] == max(present) else text


def _margin(stats: Mapping[str, Any]) -> str:
    others = [s[0] for m, s in stats.items() if m != "rl" and s is not None]
    if stats.get("rl") is None or not others:
        return MISSING
    return f"{100 * (stats['rl'][0] - max(others)):+.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def verdicts(accuracy: Mapping[str, Any], recovery: bool = True) -> dict[str, dict[str, Any]]:
    """Per baseline: in how many (model, dataset, target) settings RL-Pruner's mean is >= the baseline's,
    and the settings where it is not (with the gap in points)."""
    out: dict[str, dict[str, Any]] = {}
    for other in (m for m in METHODS if m != "rl"):
        wins, losses = 0, []
        for key in settings_keys(accuracy):
            rl, base = cell(accuracy, key, "rl", recovery), cell(accuracy, key, other, recovery)
            if rl is None or base is None:
                continue
            if rl[0] >= base[0]:
                wins += 1
            else:
                losses.append({"model": key[0], "dataset": key[1], "target": key[2], "gap": rl[0] - base[0],
                               "within_spread": abs(rl[0] - base[0]) <= max(rl[1], base[1])})
        out[other] = {"wins": wins, "total": wins + len(losses), "losses": losses}
    return out


# --------------------------------------------------------------------------------------------------
# Latency, sensitivity and engine tables
# --------------------------------------------------------------------------------------------------

def latency_ratio(row: Mapping[str, Any], batch: str) -> float | None:
    timing = row["batch"].get(batch)
    if timing is None or row["flops_reduction"] <= 0:
        return None
    return timing["reduction"] / row["flops_reduction"]


def _latency_cells(row: Mapping[str, Any], batches: Sequence[str]) -> list[str]:
    cells = []
    for b in batches:
        t = row["batch"].get(b)
        cells.append(MISSING if t is None else f"{t['base_ms']:.2f} → {t['pruned_ms']:.2f} (-{100 * t['reduction']:.0f}%)")
    ratio = latency_ratio(row, "64")
    cells.append(MISSING if ratio is None else (f"{ratio:.2f}" if ratio >= LATENCY_GOAL else f"**{ratio:.2f}** ✗"))
    return cells


def compressed_latency_table(latency: Mapping[str, Any]) -> list[str]:
    rows = latency.get("compressed", [])
    batches = _batches(rows)
    lines = [_row(["model", "dataset", "method", "FLOPs", *[f"batch {b} ms" for b in batches], "latency/FLOPs (b64)"]),
             _row(["---"] * 3 + ["---:"] * (len(batches) + 2))]
    for r in rows:
        lines.append(_row([r["model"], r["dataset"], METHOD_NAMES.get(r["method"], r["method"]),
                           f"-{100 * r['flops_reduction']:.0f}%", *_latency_cells(r, batches)]))
    return lines


def round_to_table(latency: Mapping[str, Any]) -> list[str]:
    rows = latency.get("round_to", [])
    batches = _batches(rows)
    lines = [_row(["model", "input", "round_to", "FLOPs", *[f"batch {b} ms" for b in batches], "latency/FLOPs (b64)"]),
             _row(["---"] * 3 + ["---:"] * (len(batches) + 2))]
    for r in rows:
        lines.append(_row([r["model"], f"{r['size']}²", str(r["round_to"]) if r["round_to"] > 1 else "off",
                           f"-{100 * r['flops_reduction']:.0f}%", *_latency_cells(r, batches)]))
    return lines


def _batches(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({b for r in rows for b in r["batch"]}, key=int)


def sensitivity_table(sensitivity: Mapping[str, Any]) -> list[str]:
    """Spread of the per-group drops, and how far the dense ranking survives pruning (Spearman ρ)."""
    panels = sensitivity.get("panels", [])
    lines = [_row(["model", "dataset", "stage", "top-1", "groups", "drop min / median / max (points)",
                   "ρ vs dense"]), _row(["---"] * 3 + ["---:"] * 4)]
    dense = {(p["model"], p["dataset"]): p for p in panels if p["stage"] == "dense"}
    for p in panels:
        drops = [100 * g["drop"] for g in p["groups"]]
        rho = _rho(dense.get((p["model"], p["dataset"])), p) if p["stage"] != "dense" else None
        stage = p["stage"] if p["stage"] == "dense" else f"{p['stage']} (FLOPs -{100 * p['flops_reduction']:.0f}%)"
        lines.append(_row([p["model"], p["dataset"], stage, f"{100 * p['acc']:.1f}", str(len(drops)),
                           f"{min(drops):.1f} / {float(np.median(drops)):.1f} / {max(drops):.1f}" if drops else MISSING,
                           MISSING if rho is None else f"{rho:.2f}"]))
    return lines


def _rho(dense: Mapping[str, Any] | None, other: Mapping[str, Any]) -> float | None:
    if dense is None:
        return None
    a = {g["group"]: g["drop"] for g in dense["groups"]}
    b = {g["group"]: g["drop"] for g in other["groups"]}
    common = [n for n in a if n in b]
    return spearman([a[n] for n in common], [b[n] for n in common])


def engine_table(engine: Mapping[str, Any]) -> list[str]:
    from benchmarks.engine_speed import table

    return table(engine)
