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
         field: str | Any = "test_acc") -> tuple[float, float, int] | None:
    """Mean ± spread over seeds of `field` (a row key, or a function of the row)."""
    model, dataset, target = key
    value = field if callable(field) else (lambda row: row.get(field))
    return mean_spread(value(r) for r in accuracy.get("runs", [])
                       if r["model"] == model and r["dataset"] == dataset and abs(r["target"] - target) < 1e-9
                       and r["method"] == method and bool(r["recovery"]) == recovery)


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


def _bold_best(stats: Mapping[str, Any], method: str, best: Any = max) -> str:
    text = fmt_stat(stats[method])
    present = [s[0] for s in stats.values() if s is not None]
    return f"**{text}**" if stats[method] is not None and stats[method][0] == best(present) else text


def step_cost_table(accuracy: Mapping[str, Any]) -> list[str]:
    """Per (model, dataset, target): each method's mean accuracy cost of one pruning step (points)."""
    methods = [m for m in METHODS if any(r["method"] == m for r in accuracy.get("runs", []))]
    lines = [_row(["model", "dataset", "FLOPs target", *[METHOD_NAMES[m] for m in methods]]),
             _row(["---"] * 3 + ["---:"] * len(methods))]
    for key in settings_keys(accuracy):
        stats = {m: cell(accuracy, key, m, True, step_cost) for m in methods}
        if any(s is not None for s in stats.values()):
            lines.append(_row([key[0], key[1], f"-{key[2]:.0%}", *(_bold_best(stats, m, min) for m in methods)]))
    return lines


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


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)
# --------------------------------------------------------------------------------------------------

COLORS = {"rl": "tab:red", "uniform": "tab:blue", "global": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        for method in METHODS:
            points = [(cell(accuracy, k, method, recovery, "flops_reduction"), cell(accuracy, k, method, recovery))
                      for k in keys if k[:2] == (model, dataset)]
            points = [(x[0], y) for x, y in points if x is not None and y is not None]
            if not points:
                continue
            xs = [0.0] + [100 * x for x, _ in points] if base is not None else [100 * x for x, _ in points]
            ys = ([100 * base] if base is not None else []) + [100 * y[0] for _, y in points]
            errs = ([0.0] if base is not None else []) + [100 * y[1] for _, y in points]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=COLORS[method], label=METHOD_NAMES[method])
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
                label = METHOD_NAMES.get(value, value) if by == "method" else f"round_to={value}" if value > 1 else "no rounding"
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


def _save(fig: Any, path: Path) -> Path:
    import io

    from rlpruner.io import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------------

PARTS = ("suite", "accuracy", "latency", "sensitivity", "engine_speed")
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
        for other, v in verdicts(accuracy, recovery).items():
            status = "met" if v["wins"] == v["total"] else "**missed**"
            text = (f"- RL-Pruner ≥ {METHOD_NAMES[other]} ({what}): {v['wins']}/{v['total']} settings — target "
                    f"{status}.")
            if v["losses"]:
                text += " Behind in: " + "; ".join(
                    f"{l['model']} · {l['dataset']} -{l['target']:.0%} ({100 * l['gap']:+.1f} points"
                    f"{', within the seed spread' if l['within_spread'] else ''})" for l in v["losses"]) + "."
            lines.append(text)
    for series, title in (("compressed", "models of the accuracy benchmark"), ("round_to", "one-shot, larger inputs")):
        rows = [] if latency is None else [r for r in latency.get(series, []) if latency_ratio(r, "64") is not None]
        if rows:
            ratios = [latency_ratio(r, "64") for r in rows]
            ok = sum(x >= LATENCY_GOAL for x in ratios)
            status = "met" if ok == len(rows) else "**missed**"
            lines.append(f"- Latency reduction ≥ {LATENCY_GOAL} × FLOPs reduction at batch 64 ({title}): "
                         f"{ok}/{len(rows)} models (median ratio {float(np.median(ratios)):.2f}) — target {status}.")
    return lines or ["- No results yet."]


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
             f"torch {machine.get('torch', '?')}; commit {machine.get('commit') or '?'}; {machine.get('date', '?')}."]
    if suite or accuracy:
        lines.append(f"- Mode `{suite.get('mode', '?')}`. Time: {time_summary(accuracy, suite)}.")
    if accuracy:
        s = accuracy["settings"]
        models = ", ".join(f"{m['label']} ({m['family']}: `{m['name']}` {m['options'] or ''})".replace(" )", ")")
                           for m in s["models"])
        datasets = ", ".join(f"{d['label']} (`{d['name']}` {d['options'] or ''})".replace(" )", ")") for d in s["datasets"])
        lines += [f"- Models: {models}. Inputs {s['image_size']}×{s['image_size']}.",
                  f"- Datasets: {datasets}; fixed train/val/test splits. Candidates and model choices use validation; "
                  "the tables report the test split.",
                  f"- Base models: trained once per (model, dataset) for {s['train_epochs']} epochs (SGD, cosine); every "
                  "method and seed starts from that same model.",
                  f"- Same loop and budget for every method: {s['prune_filter_ratio']:.0%} of the prunable channels per "
                  f"step until the FLOPs target (the last step trimmed to it), {s['kd_epochs']} KD epoch(s) after each "
                  f"step and {s['final_epochs']} final KD epochs at lr {s.get('kd_lr', 1e-3):g} (the library's "
                  "other KD defaults; the teacher starts as the base model). RL-Pruner samples "
                  f"{s['lr_epoch']} rounds × {s['sample_num']} candidates per step (the paper: 10 × 10 at 1% per step).",
                  f"- Seeds {', '.join(map(str, seeds_run(accuracy)))} (pruning search and KD shuffling; the base model "
                  "is fixed). Cells are mean ± sample standard deviation over seeds."]
    return lines


def seeds_run(accuracy: Mapping[str, Any]) -> list[int]:
    return sorted({int(r["seed"]) for r in accuracy.get("runs", [])})


def complete_seeds(accuracy: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """The results restricted to the seeds that have every run (so each cell averages the same seeds),
    and the seeds left out. A suite stopped part-way through a seed leaves such a partial seed."""
    runs = accuracy.get("runs", [])
    configurations = {(r["model"], r["dataset"], r["method"], round(r["target"], 4), bool(r["recovery"])) for r in runs}
    by_seed: dict[int, set] = {}
    for r in runs:
        by_seed.setdefault(int(r["seed"]), set()).add((r["model"], r["dataset"], r["method"], round(r["target"], 4),
                                                       bool(r["recovery"])))
    partial = sorted(s for s, have in by_seed.items() if have != configurations)
    kept = [r for r in runs if int(r["seed"]) not in partial] if len(partial) < len(by_seed) else runs
    return {**accuracy, "runs": kept}, partial if kept is not runs else []


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
    out = ["# Benchmarks: RL-Pruner vs uniform vs global magnitude", "",
           f"> Generated by `benchmarks/render.py` from `{source}/*.json` — do not edit by hand. "
           "Every number below comes from those files.", "",
           "## How to reproduce", "", "```bash",
           "make bench                              # = python benchmarks/run_all.py --quick: CI smoke run, a few minutes",
           "python benchmarks/run_all.py --full     # the runs behind this page (resumable: rerun to continue)",
           "python benchmarks/render.py             # regenerate this page from benchmarks/results/", "```", "",
           "## Setup", "", *setup_lines(results),
           *([f"- Seed(s) {', '.join(map(str, partial))} left out: not every run finished."] if partial else []), "",
           "## Verdict against the targets", "", *verdict_lines(accuracy, latency), ""]
    out += _accuracy_section(accuracy, plots_dir, rel)
    out += _latency_section(latency, plots_dir, rel)
    out += ["## Engine speed: trace + prune vs Torch-Pruning", ""]
    out += (["50% of the channels of every prunable layer by L2 magnitude, classifier excluded "
             f"({engine['threads']} threads, median of {engine['repeats']} run(s)).", "", *engine_table(engine), ""]
            if engine else ["Not run (no engine_speed.json).", ""])
    out += _sensitivity_section(sensitivity, plots_dir, rel)
    if READING.exists() and (results.get("suite") or {}).get("mode") == "full":
        out += ["## Reading", "", READING.read_text().strip(), ""]
    return "\n".join(out) + "\n"


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
            "Test top-1 (%); the best mean of each row in bold; *RL − best baseline* in points.", "",
            *accuracy_table(accuracy, True), "",
            *_figure(plot_accuracy(accuracy, plots_dir / "accuracy_kd.png", True), rel, "accuracy after recovery"),
            "## Accuracy right after pruning (before recovery)", "",
            "The same loop with every KD epoch removed (test top-1, %): the direct measure of each pruning "
            "distribution over the whole way down. Near chance level (10% digits, 5% synthetic-hard), this mostly "
            "says that none of the distributions survives that much pruning without recovery.", "",
            *accuracy_table(accuracy, False), "",
            *_figure(plot_accuracy(accuracy, plots_dir / "accuracy_no_kd.png", False), rel, "accuracy before recovery"),
            "Accuracy cost of ONE pruning step before its recovery, in the KD runs above: validation points lost "
            "between the recovered model of the previous step and the pruned model of this step, averaged over the "
            "steps (every step removes the same number of channels; lower is better). RL-Pruner chooses its step "
            "on this same validation split, so its numbers here are optimistic; the test columns above are not.", "",
            *step_cost_table(accuracy), ""]


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
