"""Results files -> markdown tables, PNG plots and docs/benchmarks.md. Nothing here is typed by hand:
every number comes from benchmarks/results/*.json.

    python benchmarks/render.py                    # regenerate docs/benchmarks.md from the results
    python benchmarks/render.py --results DIR --doc OUT.md

Accuracies are shown in percent as mean ± sample standard deviation over seeds (just the mean when
there is one seed); a missing run shows as "—"; † marks a cell with a run whose per-step KD alone
exceeded the KD budget (it used more KD epochs than the budget, never fewer).
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

from benchmarks import widths  # noqa: E402
from benchmarks.plots import pyplot as _pyplot, save as _save  # noqa: E402
from benchmarks.settings import METHODS, PEERS, RESULTS, ROOT, RUN_OPTIONS  # noqa: E402

METHOD_NAMES = {"rl": "RL-Pruner", "uniform": "uniform", "global": "global magnitude",
                "tp-l2": "TP global L2", "tp-taylor": "TP global Taylor"}
OVER_BUDGET = "†"
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


def methods_run(accuracy: Mapping[str, Any]) -> list[str]:
    """The methods with rows: the loop methods, then the peers, then anything else, in that order."""
    present = list(dict.fromkeys(r["method"] for r in accuracy.get("runs", [])))
    return [m for m in (*METHODS, *PEERS) if m in present] + [m for m in present if m not in METHODS + PEERS]


def method_name(method: str) -> str:
    """A method's column title; `rl@NAME` is the RL-Pruner of study NAME, shown for reference."""
    return f"RL-Pruner ({method[3:]})" if method.startswith("rl@") else METHOD_NAMES.get(method, method)


def is_baseline(method: str) -> bool:
    """What RL-Pruner is judged against: every method but RL-Pruner itself, in any study's version."""
    return method != "rl" and not method.startswith("rl@")


def rows_of(accuracy: Mapping[str, Any], key: tuple[str, str, float], method: str, recovery: bool) -> list[dict]:
    model, dataset, target = key
    return [r for r in accuracy.get("runs", [])
            if r["model"] == model and r["dataset"] == dataset and abs(r["target"] - target) < 1e-9
            and r["method"] == method and bool(r["recovery"]) == recovery]


def cell(accuracy: Mapping[str, Any], key: tuple[str, str, float], method: str, recovery: bool,
         field: str | Any = "test_acc") -> tuple[float, float, int] | None:
    """Mean ± spread over seeds of `field` (a row key, or a function of the row)."""
    value = field if callable(field) else (lambda row: row.get(field))
    return mean_spread(value(r) for r in rows_of(accuracy, key, method, recovery))


def over_budget(row: Mapping[str, Any], budget: int | None = None) -> bool:
    """Whether a run used more KD epochs than the budget (its steps' KD alone exceeded it). Rows record
    it; for rows that do not, `budget` (the settings' kd_budget) decides."""
    if "over_budget" in row:
        return bool(row["over_budget"])
    return bool(row.get("recovery")) and budget is not None and row.get("kd_epochs", 0) > budget


def flagged(accuracy: Mapping[str, Any], key: tuple[str, str, float], method: str, recovery: bool) -> bool:
    budget = accuracy.get("settings", {}).get("kd_budget")
    return any(over_budget(r, budget) for r in rows_of(accuracy, key, method, recovery))


def step_cost(row: Mapping[str, Any]) -> float | None:
    """Mean validation accuracy lost by a pruning step before its recovery: over the steps of a run,
    (accuracy after the previous step's recovery, or the base model's) - (accuracy right after pruning)."""
    steps = row.get("trajectory")
    if not steps:
        return None
    before = [row["base_val_acc"]] + [s[2] for s in steps[:-1]]
    return float(np.mean([b - s[1] for b, s in zip(before, steps)]))


def base_acc(accuracy: Mapping[str, Any], model: str, dataset: str) -> float | None:
    for b in accuracy.get("base", []):
        if b["model"] == model and b["dataset"] == dataset:
            return b["test_acc"]
    return None


def accuracy_table(accuracy: Mapping[str, Any], recovery: bool) -> list[str]:
    """One row per (model, dataset, FLOPs target): base and each method's test top-1 (%), RL-Pruner's
    margin over the best other method, what RL-Pruner reached, and the KD epochs the runs used."""
    methods = methods_run(accuracy)
    header = ["model", "dataset", "FLOPs target", "base"] + [method_name(m) for m in methods] + \
             ["RL − best other", "FLOPs / params reached (RL)", "KD epochs"]
    lines = [_row(header), _row(["---"] * 3 + ["---:"] * (len(header) - 3))]
    for key in settings_keys(accuracy):
        stats = {m: cell(accuracy, key, m, recovery) for m in methods}
        if all(s is None for s in stats.values()):
            continue
        base = base_acc(accuracy, key[0], key[1])
        marks = {m: f" {OVER_BUDGET}" if flagged(accuracy, key, m, recovery) else "" for m in methods}
        lines.append(_row([key[0], key[1], f"-{key[2]:.0%}", MISSING if base is None else f"{100 * base:.1f}",
                           *(_bold_best(stats, m) + marks[m] for m in methods), _margin(stats),
                           _reached(accuracy, key, "rl", recovery), _kd_epochs(accuracy, key, methods, recovery)]))
    return lines


def _reached(accuracy: Mapping[str, Any], key: tuple[str, str, float], method: str, recovery: bool) -> str:
    flops = cell(accuracy, key, method, recovery, "flops_reduction")
    params = cell(accuracy, key, method, recovery, "params_reduction")
    if flops is None:
        return MISSING
    return f"-{100 * flops[0]:.1f}%" + ("" if params is None else f" / -{100 * params[0]:.1f}%")


def selection_gap_table(accuracy: Mapping[str, Any]) -> list[str]:
    """Per (model, dataset) and method: mean validation − test top-1 (points) of the recovered
    models, and RL-Pruner's gap minus uniform's."""
    methods = methods_run(accuracy)
    lines = [_row(["model", "dataset", *[method_name(m) for m in methods], "RL − uniform"]),
             _row(["---"] * 2 + ["---:"] * (len(methods) + 1))]
    for model, dataset in dict.fromkeys((k[0], k[1]) for k in settings_keys(accuracy)):
        gaps = {m: mean_spread(r["val_acc"] - r["test_acc"] for r in accuracy["runs"]
                               if r["model"] == model and r["dataset"] == dataset and r["method"] == m
                               and r["recovery"] and r.get("val_acc") is not None and r.get("test_acc") is not None)
                for m in methods}
        if all(g is None for g in gaps.values()):
            continue
        both = gaps.get("rl") and gaps.get("uniform")
        lines.append(_row([model, dataset, *(MISSING if gaps[m] is None else f"{100 * gaps[m][0]:+.1f}" for m in methods),
                           f"{100 * (gaps['rl'][0] - gaps['uniform'][0]):+.1f}" if both else MISSING]))
    return lines


def _kd_epochs(accuracy: Mapping[str, Any], key: tuple[str, str, float], methods: Sequence[str],
               recovery: bool) -> str:
    """The KD epochs of the row's runs: one number when every method and seed used the same."""
    used = sorted({int(r["kd_epochs"]) for m in methods for r in rows_of(accuracy, key, m, recovery)
                   if r.get("kd_epochs") is not None})
    if not used:
        return MISSING
    text = str(used[0]) if len(used) == 1 else f"{used[0]}–{used[-1]}"
    return text + (f" {OVER_BUDGET}" if any(flagged(accuracy, key, m, recovery) for m in methods) else "")


def reached_table(accuracy: Mapping[str, Any], recovery: bool = True) -> list[str]:
    """Per (model, dataset, target) and method: the FLOPs / params reduction reached and the KD epochs
    used (means over seeds)."""
    methods = methods_run(accuracy)
    lines = [_row(["model", "dataset", "FLOPs target", *[method_name(m) for m in methods]]),
             _row(["---"] * 3 + ["---:"] * len(methods))]
    for key in settings_keys(accuracy):
        cells = []
        for m in methods:
            kd = cell(accuracy, key, m, recovery, "kd_epochs")
            reached = _reached(accuracy, key, m, recovery)
            mark = f" {OVER_BUDGET}" if flagged(accuracy, key, m, recovery) else ""
            cells.append(reached if reached == MISSING or kd is None else f"{reached} · {kd[0]:.0f} ep{mark}")
        if any(c != MISSING for c in cells):
            lines.append(_row([key[0], key[1], f"-{key[2]:.0%}", *cells]))
    return lines


def _bold_best(stats: Mapping[str, Any], method: str, best: Any = max) -> str:
    text = fmt_stat(stats[method])
    present = [s[0] for s in stats.values() if s is not None]
    return f"**{text}**" if stats[method] is not None and stats[method][0] == best(present) else text


def recovered_accuracy(row: Mapping[str, Any]) -> float | None:
    """Mean validation accuracy of a run's models after each step's recovery: the path measured on
    models that no choice was made on (a step's candidate is chosen on validation right after pruning)."""
    steps = row.get("trajectory")
    return float(np.mean([s[2] for s in steps])) if steps else None


def step_cost_table(accuracy: Mapping[str, Any], measure: Any = step_cost, best: Any = min) -> list[str]:
    """Per (model, dataset, target): each method's mean of `measure` over its runs (in points), the
    best in bold; by default the accuracy cost of one pruning step."""
    methods = methods_run(accuracy)
    lines = [_row(["model", "dataset", "FLOPs target", *[method_name(m) for m in methods]]),
             _row(["---"] * 3 + ["---:"] * len(methods))]
    for key in settings_keys(accuracy):
        stats = {m: cell(accuracy, key, m, True, measure) for m in methods}
        if any(s is not None for s in stats.values()):
            lines.append(_row([key[0], key[1], f"-{key[2]:.0%}", *(_bold_best(stats, m, best) for m in methods)]))
    return lines


def _margin(stats: Mapping[str, Any]) -> str:
    others = [s[0] for m, s in stats.items() if is_baseline(m) and s is not None]
    if stats.get("rl") is None or not others:
        return MISSING
    return f"{100 * (stats['rl'][0] - max(others)):+.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _fair(accuracy: Mapping[str, Any], key: tuple[str, str, float], methods: Sequence[str], recovery: bool) -> bool:
    """A comparison counts only when no run in it used more KD than the budget."""
    return not any(flagged(accuracy, key, m, recovery) for m in methods)


def verdicts(accuracy: Mapping[str, Any], recovery: bool = True) -> dict[str, dict[str, Any]]:
    """Per other method: in how many (model, dataset, target) settings RL-Pruner's mean is >= its mean,
    the settings where it is not (with the gap in points), and those left out because a run in them
    went over the KD budget."""
    out: dict[str, dict[str, Any]] = {}
    for other in (m for m in methods_run(accuracy) if m != "rl"):
        wins, losses, over = 0, [], []
        for key in settings_keys(accuracy):
            rl, base = cell(accuracy, key, "rl", recovery), cell(accuracy, key, other, recovery)
            if rl is None or base is None:
                continue
            if not _fair(accuracy, key, ("rl", other), recovery):
                over.append(_where(key))
            elif rl[0] >= base[0]:
                wins += 1
            else:
                losses.append({**_where(key), "gap": rl[0] - base[0],
                               "within_spread": abs(rl[0] - base[0]) <= max(rl[1], base[1])})
        out[other] = {"wins": wins, "total": wins + len(losses), "losses": losses, "over_budget": over}
    return out


def best_verdict(accuracy: Mapping[str, Any], recovery: bool = True) -> dict[str, Any]:
    """RL-Pruner against the best of ALL the other methods (peers included), setting by setting.

    wins: settings where RL-Pruner's mean >= the best other mean; clear: wins by more than the seed
    spread (larger sample standard deviation of the two; needs >= 2 seeds on both sides); settings
    with a run over the KD budget are left out of the counts and listed."""
    wins, clear, seeded, losses, over = 0, 0, 0, [], []
    for key in settings_keys(accuracy):
        rl = cell(accuracy, key, "rl", recovery)
        others = {m: cell(accuracy, key, m, recovery) for m in methods_run(accuracy) if is_baseline(m)}
        others = {m: s for m, s in others.items() if s is not None}
        if rl is None or not others:
            continue
        if not _fair(accuracy, key, ["rl", *others], recovery):
            over.append(_where(key))
            continue
        best = max(others, key=lambda m: others[m][0])
        gap, spread = rl[0] - others[best][0], max(rl[1], others[best][1])
        has_spread = min(rl[2], others[best][2]) >= 2
        seeded += has_spread
        if gap >= 0:
            wins += 1
            clear += gap > spread and has_spread
        else:
            losses.append({**_where(key), "best": best, "gap": gap, "within_spread": -gap <= spread})
    return {"wins": wins, "clear": clear, "total": wins + len(losses), "with_spread": seeded, "losses": losses,
            "over_budget": over}


def _where(key: tuple[str, str, float]) -> dict[str, Any]:
    return {"model": key[0], "dataset": key[1], "target": key[2]}


BEST = "best"  # `gaps`' stand-in for "the best other method of each setting"


def gaps(accuracy: Mapping[str, Any], other: str, recovery: bool = True,
         keys: Sequence[tuple[str, str, float]] | None = None) -> list[float]:
    """RL-Pruner's mean minus `other`'s (or, for BEST, minus the best other mean of the setting), one
    value per setting where both ran and no run went over the KD budget."""
    out = []
    for key in keys if keys is not None else settings_keys(accuracy):
        rl = cell(accuracy, key, "rl", recovery)
        names = [m for m in methods_run(accuracy) if is_baseline(m)] if other == BEST else [other]
        stats = {m: cell(accuracy, key, m, recovery) for m in names}
        stats = {m: s for m, s in stats.items() if s is not None}
        if rl is None or not stats or not _fair(accuracy, key, ["rl", *stats], recovery):
            continue
        out.append(rl[0] - max(s[0] for s in stats.values()))
    return out


def pooled(values: Sequence[float], resamples: int = 10000, seed: int = 0) -> dict[str, Any] | None:
    """What many settings say together that three seeds per setting cannot: the mean gap, its 95%
    bootstrap interval over settings (seeded: the page renders the same every time), the settings
    ahead / behind, and the two-sided exact sign test of ahead against behind (ties left out)."""
    if not values:
        return None
    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    ahead, behind = int((x > 0).sum()), int((x < 0).sum())
    return {"n": len(x), "mean": float(x.mean()), "median": float(np.median(x)), "low": float(np.quantile(means, 0.025)),
            "high": float(np.quantile(means, 0.975)), "ahead": ahead, "behind": behind,
            "p_sign": sign_test(ahead, behind)}


def sign_test(ahead: int, behind: int) -> float:
    """Two-sided exact binomial test of `ahead` successes in `ahead + behind` fair coin flips."""
    n = ahead + behind
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(ahead, behind) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def pooled_line(stat: Mapping[str, Any], against: str, what: str) -> str:
    return (f"- Pooled over the {stat['n']} settings ({what}): RL-Pruner − {against} = "
            f"{100 * stat['mean']:+.1f} points on average (95% bootstrap interval {100 * stat['low']:+.1f} to "
            f"{100 * stat['high']:+.1f}; median {100 * stat['median']:+.1f}); ahead in {stat['ahead']}, behind in {stat['behind']} "
            f"(sign test p = {stat['p_sign']:.2f}).")


def pooled_table(accuracy: Mapping[str, Any], recovery: bool = True) -> list[str]:
    """Per (model, dataset): RL-Pruner's mean gap (points, over its targets) to each other method and to
    the best other method of each setting."""
    others = [m for m in methods_run(accuracy) if m != "rl"]
    lines = [_row(["model", "dataset", "settings", *(f"RL − {method_name(m)}" for m in others), "RL − best other"]),
             _row(["---"] * 2 + ["---:"] * (len(others) + 2))]
    keys = settings_keys(accuracy)
    for pair in dict.fromkeys(k[:2] for k in keys):
        mine = [k for k in keys if k[:2] == pair]
        columns = [gaps(accuracy, m, recovery, mine) for m in [*others, BEST]]
        if not columns[-1]:
            continue
        lines.append(_row([*pair, str(len(columns[-1])),
                           *(f"{100 * float(np.mean(g)):+.1f}" if g else MISSING for g in columns)]))
    return lines


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
        cells.append(MISSING if t is None else f"{t['base_ms']:.2f} → {t['pruned_ms']:.2f} ({-100 * t['reduction']:+.0f}%)")
    ratio = latency_ratio(row, "64")
    cells.append(MISSING if ratio is None else (f"{ratio:.2f}" if ratio >= LATENCY_GOAL else f"**{ratio:.2f}** ✗"))
    return cells


def compressed_latency_table(latency: Mapping[str, Any]) -> list[str]:
    rows = latency.get("compressed", [])
    batches = _batches(rows)
    lines = [_row(["model", "dataset", "method", "FLOPs", *[f"batch {b} ms" for b in batches], "latency/FLOPs (b64)"]),
             _row(["---"] * 3 + ["---:"] * (len(batches) + 2))]
    for r in rows:
        lines.append(_row([r["model"], r["dataset"], method_name(r["method"]),
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


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# --------------------------------------------------------------------------------------------------

COLORS = {"rl": "tab:red", "uniform": "tab:blue", "global": "tab:green", "tp-l2": "tab:orange",
          "tp-taylor": "tab:purple"}


def plot_accuracy(accuracy: Mapping[str, Any], path: Path, recovery: bool) -> Path | None:
    """Test top-1 vs FLOPs reduction per (dataset, model), one line per method from the base model."""
    keys = settings_keys(accuracy)
    models = list(dict.fromkeys(k[0] for k in keys))
    datasets = list(dict.fromkeys(k[1] for k in keys))
    if not accuracy.get("runs"):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(datasets), len(models), figsize=(4 * len(models), 3.2 * len(datasets)),
                             squeeze=False)
    for (i, dataset), (j, model) in ((a, b) for a in enumerate(datasets) for b in enumerate(models)):
        ax = axes[i][j]
        base = base_acc(accuracy, model, dataset)
        for method in methods_run(accuracy):
            points = [(cell(accuracy, k, method, recovery, "flops_reduction"), cell(accuracy, k, method, recovery))
                      for k in keys if k[:2] == (model, dataset)]
            points = [(x[0], y) for x, y in points if x is not None and y is not None]
            if not points:
                continue
            xs = [0.0] + [100 * x for x, _ in points] if base is not None else [100 * x for x, _ in points]
            ys = ([100 * base] if base is not None else []) + [100 * y[0] for _, y in points]
            errs = ([0.0] if base is not None else []) + [100 * y[1] for _, y in points]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=COLORS.get(method), label=method_name(method))
        ax.set_title(f"{model} · {dataset}", fontsize=10)
        ax.set_xlabel("FLOPs reduction (%)")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("accuracy vs FLOPs reduction " + ("after KD recovery" if recovery else "right after pruning (no recovery)"))
    return _save(fig, path)


def plot_latency(latency: Mapping[str, Any], path: Path) -> Path | None:
    series = [("models of the accuracy benchmark", latency.get("compressed", []), "method"),
              ("one-shot uniform, with / without round_to=8", latency.get("round_to", []), "round_to")]
    series = [s for s in series if s[1]]
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.5), squeeze=False)
    for ax, (title, rows, by) in zip(axes[0], series):
        for b, marker in (("1", "o"), ("64", "s")):
            for value in dict.fromkeys(r[by] for r in rows):
                picked = [r for r in rows if r[by] == value and b in r["batch"]]
                label = method_name(value) if by == "method" else f"round_to={value}" if value > 1 else "no rounding"
                ax.scatter([100 * r["flops_reduction"] for r in picked],
                           [100 * r["batch"][b]["reduction"] for r in picked], marker=marker,
                           color=COLORS.get(value) if by == "method" else ("tab:purple" if value > 1 else "tab:gray"),
                           facecolors="none" if b == "1" else None, label=f"{label}, batch {b}")
        ax.plot([0, 100], [0, 100], "k--", lw=0.8, label="latency = FLOPs")
        ax.plot([0, 100], [0, 100 * LATENCY_GOAL], "k:", lw=0.8, label=f"{LATENCY_GOAL} × FLOPs (target)")
        ax.set_xlim(0, 100)
        ax.set_xlabel("FLOPs reduction (%)")
        ax.set_ylabel("latency reduction (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_sensitivity(sensitivity: Mapping[str, Any], path: Path) -> Path | None:
    panels = sensitivity.get("panels", [])
    pairs = list(dict.fromkeys((p["model"], p["dataset"]) for p in panels))
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 2.6 * len(pairs)), squeeze=False)
    for ax, pair in zip(axes[:, 0], pairs):
        stages = [p for p in panels if (p["model"], p["dataset"]) == pair]
        names = list(dict.fromkeys(g["group"] for p in stages for g in p["groups"]))
        width = 0.8 / len(stages)
        for k, p in enumerate(stages):
            drops = {g["group"]: 100 * g["drop"] for g in p["groups"]}
            label = "dense" if p["stage"] == "dense" else f"after pruning (FLOPs -{100 * p['flops_reduction']:.0f}%)"
            ax.bar(np.arange(len(names)) + k * width, [drops.get(n, np.nan) for n in names], width, label=label)
        ax.set_title(f"{pair[0]} · {pair[1]}: accuracy drop when 10% of one group is pruned", fontsize=10)
        ax.set_ylabel("drop (points)")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------------

PARTS = ("suite", "accuracy", "latency", "sensitivity", "engine_speed", "search_cost")
JUDGE_STUDIES = (("judges.json", "candidates spread widely (noise 0.3)"),
                 ("judges-close/judges.json", "close candidates, as the search draws them (noise 0.05)"),
                 ("judges-heldout/judges.json", "close candidates at equal FLOPs, judged against a truth no judge "
                  "sees (the hard set with 10,000 images)"))
READING = Path(__file__).resolve().parent / "reading.md"


def load_results(results_dir: Path) -> dict[str, dict | None]:
    import json

    out: dict[str, dict | None] = {}
    for part in PARTS:
        path = results_dir / f"{part}.json"
        out[part] = json.loads(path.read_text()) if path.exists() else None
    return out


def verdict_lines(accuracy: Mapping[str, Any] | None, latency: Mapping[str, Any] | None) -> list[str]:
    """The issue's targets, checked against the results, one bullet each."""
    lines = []
    for recovery, what in ((True, "after KD recovery"), (False, "right after pruning, no recovery")):
        if accuracy is None or not any(bool(r["recovery"]) == recovery for r in accuracy.get("runs", [])):
            continue
        lines.append(best_verdict_line(best_verdict(accuracy, recovery), what))
        for other in (BEST, *(m for m in methods_run(accuracy) if is_baseline(m))):
            stat = pooled(gaps(accuracy, other, recovery))
            if stat:
                lines.append(pooled_line(stat, "the best other method" if other == BEST else method_name(other), what))
        for other, v in verdicts(accuracy, recovery).items():
            status = "met" if v["wins"] == v["total"] else "**missed**"
            text = (f"- RL-Pruner ≥ {method_name(other)} ({what}): {v['wins']}/{v['total']} settings — target "
                    f"{status}.")
            if v["losses"]:
                text += " Behind in: " + "; ".join(
                    f"{l['model']} · {l['dataset']} -{l['target']:.0%} ({100 * l['gap']:+.1f} points"
                    f"{', within the seed spread' if l['within_spread'] else ''})" for l in v["losses"]) + "."
            lines.append(text + _over_budget_note(v["over_budget"]))
    for series, title in (("compressed", "models of the accuracy benchmark"), ("round_to", "one-shot, larger inputs")):
        rows = [] if latency is None else [r for r in latency.get(series, []) if latency_ratio(r, "64") is not None]
        if rows:
            ratios = [latency_ratio(r, "64") for r in rows]
            ok = sum(x >= LATENCY_GOAL for x in ratios)
            status = "met" if ok == len(rows) else "**missed**"
            lines.append(f"- Latency reduction ≥ {LATENCY_GOAL} × FLOPs reduction at batch 64 ({title}): "
                         f"{ok}/{len(rows)} models (median ratio {float(np.median(ratios)):.2f}) — target {status}.")
    return lines or ["- No results yet."]


def best_verdict_line(v: Mapping[str, Any], what: str) -> str:
    """The headline: RL-Pruner against the best other method of each setting."""
    spread = "" if v["with_spread"] == v["total"] else f" of the {v['with_spread']} settings with ≥ 2 seeds"
    text = (f"- **RL-Pruner ≥ best baseline ({what}) in {v['wins']} of {v['total']} settings; wins by more than "
            f"the seed spread in {v['clear']}{spread}.** (Best baseline: the best mean of all other methods, "
            "Torch-Pruning included, per setting.)")
    if v["losses"]:
        text += " Behind in: " + "; ".join(
            f"{l['model']} · {l['dataset']} -{l['target']:.0%} (best: {method_name(l['best'])}, "
            f"{100 * l['gap']:+.1f} points{', within the seed spread' if l['within_spread'] else ''})"
            for l in v["losses"]) + "."
    return text + _over_budget_note(v["over_budget"])


def _over_budget_note(settings: Sequence[Mapping[str, Any]]) -> str:
    if not settings:
        return ""
    return (f" Not counted ({OVER_BUDGET}: a run's per-step KD exceeded the KD budget): "
            + "; ".join(f"{o['model']} · {o['dataset']} -{o['target']:.0%}" for o in settings) + ".")


def time_summary(accuracy: Mapping[str, Any] | None, suite: Mapping[str, Any]) -> str:
    """Accuracy: the summed run times (runs go in parallel and a suite may be resumed); the other
    parts: wall time of their last run."""
    parts = []
    if accuracy and accuracy.get("runs"):
        runs = sum(r["seconds"] for r in accuracy["runs"]) + sum(b.get("train_seconds", 0) for b in accuracy["base"])
        workers = accuracy.get("settings", {}).get("workers", 1)
        parts.append(f"accuracy {len(accuracy['runs'])} runs, {runs / 60:.0f} min of run time "
                     f"({workers} worker process{'es' if workers > 1 else ''})")
    parts += [f"{k} {v / 60:.1f} min" for k, v in suite.get("wall_seconds", {}).items() if k != "accuracy"]
    return "; ".join(parts) or "not recorded"


def setup_lines(results: Mapping[str, Any]) -> list[str]:
    accuracy, suite = results.get("accuracy"), results.get("suite") or {}
    machine = (accuracy or results.get("latency") or results.get("sensitivity") or {}).get("machine", {})
    lines = [f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; Python {machine.get('python', '?')}, "
             f"torch {machine.get('torch', '?')}; commit {machine.get('commit') or '?'}; {machine.get('date', '?')}.",
             *other_machine_lines(accuracy)]
    if suite or accuracy:
        lines.append(f"- Mode `{suite.get('mode', '?')}`. Time: {time_summary(accuracy, suite)}.")
    commands = suite.get("commands") or ({"all parts": suite["command"]} if suite.get("command") else {})
    for part, command in commands.items():
        history = [command] if isinstance(command, str) else command
        lines.append(f"- Command ({part}): `{history[0]}`." if len(history) == 1 else
                     f"- Commands ({part}, each adding its cells to the same results file): "
                     + "; ".join(f"`{c}`" for c in history) + ".")
    if accuracy:
        s = accuracy["settings"]
        models = ", ".join(f"{m['label']} ({m['family']}: `{m['name']}` {m['options'] or ''})".replace(" )", ")")
                           for m in s["models"])
        datasets = ", ".join(_dataset_text(d, s) for d in s["datasets"])
        lines += [f"- Models: {models}.",
                  f"- Datasets: {datasets}; fixed train/val/test splits. Candidates and model choices use validation; "
                  "the tables report the test split.",
                  f"- Base models: trained once per (model, dataset) for {s['train_epochs']} epochs (SGD, cosine); every "
                  "method and seed starts from that same model.",
                  f"- Same loop and budget for every method: steps of equal FLOPs cost (what "
                  f"{s['prune_filter_ratio']:.0%} of the prunable channels cost) until the FLOPs target (the last step "
                  f"trimmed to it), {s['kd_epochs']} KD epoch(s) after each step, {_kd_budget_text(s)}. KD at lr "
                  f"{s.get('kd_lr', 1e-3):g} (the library's other KD defaults). RL-Pruner: "
                  f"{_rl_text(s)}.",
                  *_peer_lines(s),
                  f"- Seeds {', '.join(map(str, seeds_run(accuracy)))} (pruning search and KD shuffling; the base model "
                  "is fixed). Cells are mean ± sample standard deviation over seeds."]
    return lines


def other_machine_lines(accuracy: Mapping[str, Any] | None) -> list[str]:
    """The cells whose base model (and so whose runs) came from another machine than the file's first
    run: a grid resumed elsewhere. Compare methods within such a cell, not its numbers with others'."""
    if not accuracy:
        return []
    first = accuracy.get("machine", {}).get("cpu")
    lines = []
    for b in accuracy.get("base", []):
        where = b.get("trained_on") or {}
        if where.get("cpu") and where["cpu"] != first:
            lines.append(f"- {b['model']} · {b['dataset']}: base model and runs on {where['cpu']}, commit "
                         f"{where.get('commit', '?')}, {where.get('date', '?')} (every method of the cell starts from it).")
    return lines


def _rl_text(s: Mapping[str, Any]) -> str:
    """How RL-Pruner was configured: its defaults, or the rounds and candidates the settings forced."""
    if s.get("lr_epoch") is None and s.get("sample_num") is None:
        from rlpruner.search import RLConfig

        return (f"the library's defaults (`RLConfig()`) except the step size, {s['prune_filter_ratio']:.0%} instead "
                f"of {RLConfig().prune_filter_ratio:.0%}, so that one KD epoch per step fits the KD budget")
    return (f"{s.get('lr_epoch')} rounds × {s.get('sample_num')} candidates per step (the paper: 10 × 10 at 1% "
            "per step)")


def _dataset_text(dataset: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """'label (`name` options, size×size)'; results written before sizes were per dataset have one for all."""
    size = dataset.get("image_size", settings.get("image_size", "?"))
    options = f" {dataset['options']}" if dataset.get("options") else ""
    return f"{dataset['label']} (`{dataset['name']}`{options}, {size}×{size} inputs)"


def _kd_budget_text(s: Mapping[str, Any]) -> str:
    if "kd_budget" not in s:  # results written before the budget was counted over the whole run
        return f"{s.get('final_epochs', '?')} final KD epochs"
    return (f"and the rest of a budget of **{s['kd_budget']} KD epochs per run** as one final KD fine-tune against "
            "the base model (the per-step teacher starts as the base model); a run whose steps alone exceed the "
            f"budget is marked {OVER_BUDGET} and left out of the verdicts")


def _peer_lines(s: Mapping[str, Any]) -> list[str]:
    peers = [m for m in s.get("methods", []) if m in PEERS]
    if not peers:
        return []
    names = ", ".join(method_name(m) for m in peers)
    return [f"- Peers: {names} — Torch-Pruning's `MetaPruner(global_pruning=True)` with "
            "`GroupMagnitudeImportance(p=2)` / `GroupTaylorImportance` (gradients of a fixed, seeded batch of "
            "training images), classifier output layer ignored. They follow the loop's schedule (its planned number "
            "of equal-FLOPs steps; each step's pruning ratio is the smallest that reaches the step's FLOPs goal), "
            "with the same BatchNorm re-estimation, per-step KD and KD budget (benchmarks/peers.py)."]


def seeds_run(accuracy: Mapping[str, Any]) -> list[int]:
    return sorted({int(r["seed"]) for r in accuracy.get("runs", [])})


def complete_seeds(accuracy: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The results restricted, series by series (with KD recovery / without), to the seeds that have
    every run of that series (so each cell averages the same seeds), and the seeds left out of the
    recovery series (or, when it has none left out, of the other). A suite stopped part-way through a
    seed leaves such a partial seed; a series run for fewer seeds than the other keeps its own."""
    runs = accuracy.get("runs", [])
    kept_runs: list[dict] = []
    left_out: dict[bool, list[int]] = {}
    for recovery in (True, False):
        series = [r for r in runs if bool(r["recovery"]) == recovery]
        kept, partial = _complete(series)
        kept_runs += kept
        left_out[recovery] = partial
    kept_runs = [r for r in runs if any(r is k for k in kept_runs)]  # in the original order
    return {**accuracy, "runs": kept_runs}, left_out[True] or left_out[False]


def _complete(runs: list[dict]) -> tuple[list[dict], list[int]]:
    def config(r: Mapping[str, Any]) -> tuple:
        return r["model"], r["dataset"], r["method"], round(r["target"], 4)

    configurations = {config(r) for r in runs}
    by_seed: dict[int, set] = {}
    for r in runs:
        by_seed.setdefault(int(r["seed"]), set()).add(config(r))
    partial = sorted(s for s, have in by_seed.items() if have != configurations)
    if not partial or len(partial) == len(by_seed):
        return runs, []
    return [r for r in runs if int(r["seed"]) not in partial], partial


def render_doc(results: Mapping[str, Any], doc_path: Path, plots_dir: Path) -> str:
    """The whole markdown page; writes the plots it references into `plots_dir` (next to the results)."""
    accuracy, latency = results.get("accuracy"), results.get("latency")
    sensitivity, engine = results.get("sensitivity"), results.get("engine_speed")
    partial: list[int] = []
    if accuracy:
        accuracy, partial = complete_seeds(accuracy)
        results = {**results, "accuracy": accuracy}
    rel = lambda p: os.path.relpath(p, doc_path.parent).replace(os.sep, "/")  # noqa: E731
    source = _display_path(plots_dir.parent)
    out = ["# Benchmarks: RL-Pruner vs uniform vs global magnitude vs Torch-Pruning", "",
           f"> Generated by `benchmarks/render.py` from `{source}/*.json` — do not edit by hand. "
           "Every number below comes from those files.", "",
           "## How to reproduce", "", "```bash",
           "make bench                              # = python benchmarks/run_all.py --quick: CI smoke run, a few minutes",
           "python benchmarks/run_all.py --full     # the runs behind this page (resumable: rerun to continue)",
           "python benchmarks/render.py             # regenerate this page from benchmarks/results/", "```", "",
           "## Setup", "", *setup_lines(results),
           *([f"- Seed(s) {', '.join(map(str, partial))} left out: not every run finished."] if partial else []), "",
           "## Verdict against the targets", "", *verdict_lines(accuracy, latency), ""]
    out += _judges_section(results_dir_of(plots_dir))
    out += _search_cost_section(results.get("search_cost"))
    out += _accuracy_section(accuracy, plots_dir, rel)
    out += _headroom_section(results_dir_of(plots_dir))
    out += _variants_section(results_dir_of(plots_dir))
    out += _latency_section(latency, plots_dir, rel)
    out += _study_section(results_dir_of(plots_dir), "latency_model",
                          "Latency model: the table's error and the speed-up per method")
    out += _study_section(results_dir_of(plots_dir), "timing_turns",
                          "Timing in turns: one reduction measured two ways")
    out += _study_section(results_dir_of(plots_dir), "table_layers",
                          "A latency table's layers: timed one width after the other or in turns")
    out += _study_section(results_dir_of(plots_dir), "fresh_process",
                          "Where a reduction is timed: the pruning process or a fresh one")
    out += _study_section(results_dir_of(plots_dir), "check_noise",
                          "A latency target's check: how far one timing can be believed")
    out += _study_section(results_dir_of(plots_dir), "latency_target",
                          "Accuracy at equal latency: RL-Pruner with a latency target")
    out += ["## Engine speed: trace + prune vs Torch-Pruning", ""]
    out += (["50% of the channels of every prunable layer by L2 magnitude, classifier excluded "
             f"({engine['threads']} threads, median of {engine['repeats']} run(s)).", "", *engine_table(engine), ""]
            if engine else ["Not run (no engine_speed.json).", ""])
    out += _sensitivity_section(sensitivity, plots_dir, rel)
    out += _scale_section(results_dir_of(plots_dir))
    if READING.exists() and (results.get("suite") or {}).get("mode") == "full":
        out += ["## Reading", "", READING.read_text().strip(), ""]
    return "\n".join(out) + "\n"


def results_dir_of(plots_dir: Path) -> Path:
    return plots_dir.parent


def _judges_section(results_dir: Path) -> list[str]:
    """The judge study (benchmarks/judges.py): which score of a candidate predicts its accuracy after
    recovery; the search's defaults follow it."""
    import json

    from benchmarks.judges import render_markdown

    out = ["## Which judge ranks candidates (benchmarks/judges.py)", ""]
    found = False
    for name, what in JUDGE_STUDIES:
        path = results_dir / name
        if not path.exists():
            continue
        found = True
        page = render_markdown(json.loads(path.read_text())).splitlines()
        body = [line for line in page[1:] if not line.startswith("# ")]
        out += [f"### {what[0].upper()}{what[1:]}", "", *(body[1:] if body and not body[0] else body), ""]
    return out if found else out + ["Not run (no judges.json).", ""]


def _study_section(results_dir: Path, name: str, title: str) -> list[str]:
    """A study script's page (benchmarks/NAME.py, from NAME.json) as a section of this one."""
    import importlib
    import json

    path = results_dir / f"{name}.json"
    out = [f"## {title} (benchmarks/{name}.py)", ""]
    if not path.exists():
        return out + [f"Not run (no {name}.json).", ""]
    render_markdown = importlib.import_module(f"benchmarks.{name}").render_markdown
    page = render_markdown(json.loads(path.read_text())).splitlines()
    return out + [line for line in page if not line.startswith("# ")] + [""]


def _headroom_section(results_dir: Path) -> list[str]:
    """The headroom study: how far apart architectures of equal FLOPs end after the same recovery,
    and where each method's own architecture lands."""
    return _study_section(results_dir, "headroom", "How much the allocation can matter after recovery")


def _variants_section(results_dir: Path) -> list[str]:
    """Variant studies (run_all.py --rl FIELD=VALUE --results benchmarks/results/variants/NAME): RL-Pruner
    with some RLConfig fields changed, beside the methods run with it on the same base models. The
    base models are trained on the machine that ran the variant, so compare within a table."""
    import json

    folders = sorted(p.parent for p in (results_dir / "variants").glob("*/accuracy.json"))
    if not folders:
        return []
    studies = {folder.name: json.loads((folder / "accuracy.json").read_text()) for folder in folders}
    main = results_dir / "accuracy.json"
    lenders = {**studies, **({"main tables": json.loads(main.read_text())} if main.exists() else {})}
    out = ["## Variant studies: RL-Pruner with options changed", "",
           "Each table is one `python benchmarks/run_all.py --full --only accuracy --rl FIELD=VALUE ... --results "
           "benchmarks/results/variants/NAME` (same budget and protocol as above). Its RL-Pruner column is the "
           "variant. A study that ran RL-Pruner alone is shown, cell by cell, beside the runs of another study "
           "that started from the same base model (same accuracies, params and FLOPs) under the same settings: "
           "its baselines, and its RL-Pruner as a reference column \"RL-Pruner (NAME)\" that the verdict does "
           "not count as a baseline.", ""]
    for name, study in studies.items():
        study, lender = with_peer_baselines(study, {k: v for k, v in lenders.items() if k != name})
        accuracy, partial = complete_seeds(study)
        options = ", ".join(f"`{k}={v}`" for k, v in accuracy["settings"].get("rl_options", [])) or "none"
        m = accuracy.get("machine", {})
        out += [f"### {name}: {options}", "",
                f"{m.get('cpu', '?')}, commit {m.get('commit', '?')}, {m.get('date', '?')}; seeds "
                f"{', '.join(map(str, seeds_run(accuracy)))}"
                + (f" (left out, unfinished: {', '.join(map(str, partial))})" if partial else "") + "."
                + (f" Baselines from study {lender}." if lender else ""), "",
                *accuracy_table(accuracy, True), ""]
        if len(methods_run(accuracy)) > 1:
            out += [best_verdict_line(best_verdict(accuracy, True), "after KD recovery"), ""]
    return out


def with_peer_baselines(study: Mapping[str, Any], others: Mapping[str, Mapping[str, Any]]
                        ) -> tuple[dict[str, Any], str | None]:
    """A study that ran RL-Pruner alone, with, cell by cell (model, dataset), the runs of the first other
    study that started from the same base model under the same loop settings: its baselines as they
    are, and its RL-Pruner as a reference column (`rl@NAME`, not a baseline). The same base model
    means the same figures (accuracies, params, FLOPs): base training is seeded, so a retrained
    base that agrees on all of them is that model. Only the study's targets and seeds are taken, and
    the series without recovery only if the study ran it too."""
    if methods_run(study) != ["rl"]:
        return dict(study), None
    targets = {float(t) for t in study["settings"].get("targets", [])}
    seeds = set(study["settings"].get("seeds", []))
    runs, lenders = list(study["runs"]), []
    for cell, base in _base_figures(study).items():
        for name, other in others.items():
            if _base_figures(other).get(cell) != base or _protocol(other) != _protocol(study):
                continue
            taken = [dict(r, method=r["method"] if r["method"] != "rl" else f"rl@{name}") for r in other["runs"]
                     if (r["model"], r["dataset"]) == cell and float(r["target"]) in targets and r["seed"] in seeds
                     and (r["recovery"] or study["settings"].get("no_recovery"))]
            if any(r["method"] in (*METHODS, *PEERS) for r in taken):
                runs += taken
                lenders.append(name)
                break
    return {**study, "runs": runs}, ", ".join(dict.fromkeys(lenders)) or None


def _base_figures(accuracy: Mapping[str, Any]) -> dict[tuple[str, str], tuple]:
    return {(b["model"], b["dataset"]): (b.get("val_acc"), b.get("test_acc"), b.get("params"), b.get("flops"))
            for b in accuracy.get("base", [])}


def _protocol(accuracy: Mapping[str, Any]) -> dict[str, Any]:
    """The loop settings two studies must share for their runs to sit in one table: the RLConfig
    fields of a variant are RL-Pruner's alone, but its run options (RUN_OPTIONS: refit, recovery after
    every step or none) change how every method of the study spends its KD budget."""
    settings = accuracy["settings"]
    run = {k: v for k, v in settings.get("rl_options", []) if k in RUN_OPTIONS}
    return {"run_options": run, **{k: v for k, v in settings.items() if k not in (
        "methods", "rl_options", "workers", "models", "datasets", "targets", "seeds", "no_recovery")}}


def _scale_section(results_dir: Path) -> list[str]:
    """The scale study: host memory and per-step cost as the data grows (a streamed folder of 224x224
    JPEGs, a CIFAR-size set in memory), with one process and with two."""
    return _study_section(results_dir, "scale", "Scale: what a run costs as the data grows, in one process and in two")


def _search_cost_section(cost: Mapping[str, Any] | None) -> list[str]:
    from benchmarks.search_cost import table

    out = ["## What the search costs (benchmarks/search_cost.py)", ""]
    return out + ([*table(cost), ""] if cost else ["Not run (no search_cost.json).", ""])


def _display_path(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _figure(path: Path | None, rel: Any, caption: str) -> list[str]:
    return [f"![{caption}]({rel(path)})", ""] if path else []


def _accuracy_section(accuracy: Mapping[str, Any] | None, plots_dir: Path, rel: Any) -> list[str]:
    if not accuracy:
        return ["## Accuracy at equal FLOPs", "", "Not run (no accuracy.json).", ""]
    return ["## Accuracy at equal FLOPs (after KD recovery)", "",
            "Test top-1 (%); the best mean of each row in bold; *RL − best other* in points against the best other "
            f"method of the row; FLOPs / params reductions reached by RL-Pruner; the KD epochs the runs used "
            f"({OVER_BUDGET}: over the budget).", "",
            *accuracy_table(accuracy, True), "",
            "RL-Pruner's gap to each method per model and dataset (points, RL-Pruner's mean minus the method's, "
            "averaged over the FLOPs targets): where a learned allocation pays off and where it does not.", "",
            *pooled_table(accuracy, True), "",
            "FLOPs / params reduction reached and KD epochs used, per method (means over seeds):", "",
            *reached_table(accuracy, True), "",
            *_figure(plot_accuracy(accuracy, plots_dir / "accuracy_kd.png", True), rel, "accuracy after recovery"),
            *_widths_section(accuracy, plots_dir, rel),
            "How optimistic the validation split is, per method: validation minus test top-1 of the final model "
            "(points, mean over targets and seeds, after recovery). Every method picks its KD epoch and teacher "
            "on validation; RL-Pruner also picks each step's candidate on a subset of it, so a larger gap than "
            "the others' is the price of that selection (scores it won by noise), not a better model.", "",
            *selection_gap_table(accuracy), "",
            *_no_recovery_section(accuracy, plots_dir, rel),
            "Accuracy cost of ONE pruning step before its recovery, in the KD runs above: validation points lost "
            "between the recovered model of the previous step and the pruned model of this step, averaged over the "
            "steps (every step removes the same FLOPs; lower is better). RL-Pruner chooses its step on this same "
            "validation split, so its numbers here are optimistic; the test columns above are not.", "",
            *step_cost_table(accuracy), "",
            "The same paths after each step's recovery: validation top-1 of the recovered model of every step, "
            "averaged over the steps (higher is better). No candidate was chosen on these models, so this is the "
            "fair view of the path: where RL-Pruner's cheaper steps above do not show here, the score it chose them "
            "by was partly luck on the scoring subset, or recovery evened the candidates out.", "",
            *step_cost_table(accuracy, recovered_accuracy, max), ""]


def _widths_section(accuracy: Mapping[str, Any], plots_dir: Path, rel: Any) -> list[str]:
    keys, methods = settings_keys(accuracy), methods_run(accuracy)
    tables = widths.widths_tables(accuracy, keys, methods, method_name)
    if not tables:
        return []
    figure = widths.plot_widths(accuracy, keys, methods, method_name, COLORS, plots_dir / "widths.png")
    return ["Final widths: the share of every coupled group's channels each method keeps (after recovery, mean "
            "over seeds). The groups run from the input (left) to the output (right).", "",
            *_figure(figure, rel, "final widths"),
            "<details><summary>The widths as numbers, per model</summary>", "", *tables, "</details>", ""]


def _no_recovery_section(accuracy: Mapping[str, Any], plots_dir: Path, rel: Any) -> list[str]:
    head = ["## Accuracy right after pruning (before recovery)", ""]
    if not any(not r["recovery"] for r in accuracy.get("runs", [])):
        return head + ["Not run this time (the series without KD was skipped: `--no-recovery-series`).", ""]
    return head + [
        "The same loop with every KD epoch removed (test top-1, %): the direct measure of each pruning "
        "distribution over the whole way down. Near chance level (10% digits, 5% synthetic-hard), this mostly "
        "says that none of the distributions survives that much pruning without recovery.", "",
        *accuracy_table(accuracy, False), "",
        *_figure(plot_accuracy(accuracy, plots_dir / "accuracy_no_kd.png", False), rel, "accuracy before recovery")]


def _latency_section(latency: Mapping[str, Any] | None, plots_dir: Path, rel: Any) -> list[str]:
    if not latency:
        return ["## Real speed-up (CPU latency)", "", "Not run (no latency.json).", ""]
    s = latency["settings"]
    return ["## Real speed-up (CPU latency)", "",
            f"Forward time, {s['threads']} thread(s): base and pruned timed in alternating chunks, best chunk median; "
            f"✗ marks a latency reduction below {LATENCY_GOAL} × the FLOPs reduction at batch 64.", "",
            "Models of the accuracy benchmark (seed 0, after recovery):", "", *compressed_latency_table(latency), "",
            f"One-shot uniform pruning (`rlpruner.pruner.prune_to_flops`, L2) of freshly initialised models at {s['size']}×{s['size']}, "
            "without and with `round_to=8`:", "", *round_to_table(latency), "",
            *_figure(plot_latency(latency, plots_dir / "latency.png"), rel, "latency vs FLOPs")]


def _sensitivity_section(sensitivity: Mapping[str, Any] | None, plots_dir: Path, rel: Any) -> list[str]:
    title = "## Layer sensitivity (the paper's Figure 1)"
    if not sensitivity:
        return [title, "", "Not run (no sensitivity.json).", ""]
    s = sensitivity["settings"]
    return [title, "",
            f"Test-accuracy drop when {s['fraction']:.0%} of ONE group's channels ({s['importance']} ranking) is "
            "pruned, no recovery, for every group in turn: at the dense model and at the RL-Pruner model with "
            f"FLOPs -{s['target']:.0%} (seed 0). ρ: Spearman correlation of the per-group drops with the dense "
            "model's — how much the sensitivity ranking moves as pruning goes on.", "",
            *sensitivity_table(sensitivity), "",
            *_figure(plot_sensitivity(sensitivity, plots_dir / "sensitivity.png"), rel, "sensitivity")]


def write_doc(results_dir: Path, doc_path: Path) -> Path:
    from rlpruner.io import atomic_write_text

    text = render_doc(load_results(results_dir), doc_path, results_dir / "plots")
    atomic_write_text(doc_path, text)
    return doc_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="page to write")
    args = parser.parse_args(argv)
    print(f"wrote {write_doc(args.results, args.doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
