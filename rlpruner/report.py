"""What a compression run leaves behind: results JSON, per-step logs, plots and a markdown summary.

Every file is rewritten whole and atomically from the in-memory records, so the logs on disk always
match the last checkpoint (a resumed run never duplicates or loses a line).

    write_logs(out_dir, records)                      steps.jsonl + steps.csv
    write_report(out_dir, results, records, widths)   results.json, plots/*.png, summary.md, report.html
"""
from __future__ import annotations

import csv
import io as _stdio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_bytes, atomic_write_json, atomic_write_text
from .report_html import comparison_rows, metric_format, render_html


@dataclass(frozen=True)
class StepRecord:
    """One pruning step, as logged. Reductions are cumulative, relative to the original model."""

    step: int
    removed: int                   # units removed in this step
    removed_total: int
    sparsity: float                # removed_total / prunable units of the original model
    flops: int
    params: int
    flops_reduction: float
    params_reduction: float
    val_acc_pruned: float          # the step's model right after pruning (BN recalibrated), before recovery
    val_acc: float                 # after recovery, whole validation split
    reward: float
    epsilon: float
    explored: bool                 # the epsilon-greedy choice took a random buffer entry
    guard_resets: int              # times the accuracy guard reset the distribution in this step
    teacher: str                   # "original" or "step N"
    latency_ms: float | None = None
    guard_reason: str = ""         # why the guard reset the distribution (empty: it did not)
    anchored: bool = False         # no sampled candidate cleared the anchor margin: the step kept the
                                   # allocation along the distribution itself
    candidates: int = 0            # candidates the allocator scored in this step (the trim's rescore excluded)
    scored_by: list[int] = field(default_factory=list)  # of those, how many each rank scored (torchrun)
    judge: str = ""                # what scored the candidates (rlpruner.search.judges), on how many images
    score_samples: int = 0
    score_split: str = ""          # and from which split: "val" or "train"
    bn_samples: int = 0            # training images that re-estimated BatchNorm statistics of each candidate
    probe_steps: int = 0           # KD steps each candidate took on those images before it was scored
    widths: dict[str, int] = field(default_factory=dict)
    pd: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)  # eval_s, search_s, recovery_s, checkpoint_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepRecord":
        return cls(**data)


_SCALARS = ("step", "removed", "removed_total", "sparsity", "flops", "params", "flops_reduction",
            "params_reduction", "latency_ms", "val_acc_pruned", "val_acc", "reward", "epsilon",
            "explored", "anchored", "guard_resets", "teacher", "guard_reason", "candidates", "judge", "score_samples", "score_split", "bn_samples",
            "probe_steps")


def write_logs(out_dir: str | Path, records: Sequence[StepRecord]) -> tuple[Path, Path]:
    """steps.jsonl (everything) and steps.csv (scalars, times, and one width column per group)."""
    out_dir = Path(out_dir)
    jsonl = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in records)
    atomic_write_text(out_dir / "steps.jsonl", jsonl)
    atomic_write_text(out_dir / "steps.csv", _csv_text(records))
    return out_dir / "steps.jsonl", out_dir / "steps.csv"


def read_logs(out_dir: str | Path) -> list[StepRecord]:
    path = Path(out_dir) / "steps.jsonl"
    if not path.exists():
        return []
    return [StepRecord.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line]


def _csv_text(records: Sequence[StepRecord]) -> str:
    groups = list(records[0].widths) if records else []
    time_keys = sorted({k for r in records for k in r.times})
    header = list(_SCALARS) + [f"time_{k}" for k in time_keys] + [f"width:{g}" for g in groups]
    buffer = _stdio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in records:
        row = [getattr(r, k) for k in _SCALARS]
        row += [r.times.get(k, "") for k in time_keys] + [r.widths.get(g, "") for g in groups]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on the Agg canvas: no pyplot, no global backend switch)
# --------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buffer = _stdio.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def sparsity_matrix(records: Sequence[StepRecord], original: Mapping[str, int]) -> np.ndarray:
    """(groups, steps + 1) fraction of each group's original units removed, step 0 first."""
    names = list(original)
    columns = [np.zeros(len(names))]
    for r in records:
        columns.append(np.array([1.0 - r.widths.get(n, original[n]) / original[n] for n in names]))
    return np.stack(columns, axis=1)


def plot_sparsity(records: Sequence[StepRecord], original: Mapping[str, int]) -> bytes:
    """Per-group sparsity across steps as a heat map (the paper's Figure 3)."""
    matrix = sparsity_matrix(records, original)
    fig = _figure(max(6.0, 0.12 * matrix.shape[1] + 4), max(3.0, 0.22 * matrix.shape[0] + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(len(original)), labels=list(original), fontsize=7)
    ax.set_xlabel("pruning step")
    ax.set_title("Fraction of each group's channels removed")
    fig.colorbar(image, ax=ax, label="sparsity")
    return _png(fig)


def plot_accuracy_vs_flops(records: Sequence[StepRecord], base: Mapping[str, float],
                           metric: Mapping[str, Any] | None = None) -> bytes:
    """The validation metric (pruned and recovered) against the FLOPs left, one point per step."""
    metric = metric or {"name": "top-1", "percent": True}
    scale = 100.0 if metric["percent"] else 1.0
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    flops = [base["flops"]] + [r.flops for r in records]
    left = 100.0 * np.asarray(flops, dtype=float) / base["flops"]
    ax.plot(left, [scale * base["val_acc"]] + [scale * r.val_acc for r in records], "o-", label="after recovery")
    ax.plot(left[1:], [scale * r.val_acc_pruned for r in records], "x--", alpha=0.7, label="pruned, before recovery")
    ax.invert_xaxis()
    ax.set_xlabel("FLOPs left (% of original)")
    ax.set_ylabel(f"validation {metric['name']}" + (" (%)" if metric["percent"] else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def plot_widths(original: Mapping[str, int], final: Mapping[str, int]) -> bytes:
    """Final width of every group next to its original width."""
    names = list(original)
    x = np.arange(len(names))
    fig = _figure(max(6.0, 0.3 * len(names) + 2), 4.0)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [original[n] for n in names], width=0.4, label="original", color="#bbbbbb")
    ax.bar(x + 0.2, [final.get(n, original[n]) for n in names], width=0.4, label="pruned", color="#1f77b4")
    ax.set_xticks(x, labels=names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    return _png(fig)


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------

def summary_markdown(results: Mapping[str, Any], records: Sequence[StepRecord]) -> str:
    """A short human summary; `results` holds 'base' and 'final' dicts (params, flops, val_acc,
    optional latency_ms and test_acc) plus 'target', 'steps', 'time_s' and 'timing'."""
    lines = [f"# RL-Pruner compression: {results.get('model', 'model')} on {results.get('dataset', 'data')}", "",
             f"Target: {results['target']['kind']} reduction {results['target']['value']:.1%}, reached in "
             f"{results['steps']} steps ({results['time_s']:.0f} s).", "",
             "| | original | compressed | change |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {before} | {after} | {change} |" for label, before, after, change
              in comparison_rows(results, short=True)]
    timing = results.get("timing", {})
    if timing.get("eval_s"):
        lines += ["", f"Search overhead: {timing['search_s']:.1f} s besides {timing['eval_s']:.1f} s of "
                      f"candidate evaluation ({timing['search_s'] / timing['eval_s']:.1%})."]
    checks = results.get("latency_checks") or []
    if checks:
        timed = "; ".join(f"after step {c['step']} {c['measured_reduction']:.1%} ({_interval(c)}table "
                          f"{c['predicted_reduction']:.1%}{', pruned on' if c['next_goal_ms'] is not None else ''})"
                          for c in checks)
        lines += ["", f"Latency target timed when the table said it was reached: {timed}."]
    refit = results.get("refit")
    if refit:
        shown = metric_format(results.get("metric", {}).get("percent", True))
        lines += ["", f"Refit: the final fine-tune started from the original model cut to the searched widths "
                      f"(validation {shown.format(refit['refit_val'])} before it; the searched model: "
                      f"{shown.format(refit['searched_val'])})."]
    if records:
        guard = sum(r.guard_resets for r in records)
        lines += ["", f"Accuracy-guard resets: {guard}. Everything on one page: `report.html`. Plots: "
                      "`plots/sparsity.png`, `plots/accuracy_vs_flops.png`, `plots/widths.png`; per-step log: "
                      "`steps.csv`."]
    return "\n".join(lines) + "\n"


PLOT_FILES = {"sparsity": "sparsity.png", "accuracy": "accuracy_vs_flops.png", "widths": "widths.png"}


def _interval(check: Mapping[str, Any]) -> str:
    """A latency check's 95 % interval, as the opening of its parenthesis (checks saved before it was
    recorded have none)."""
    if "measured_low" not in check:
        return ""
    return f"95% interval {check['measured_low']:.1%} to {check['measured_high']:.1%} in {check['turns']} turns; "


def write_report(out_dir: str | Path, results: Mapping[str, Any], records: Sequence[StepRecord],
                 original_widths: Mapping[str, int]) -> dict[str, Path]:
    """results.json, steps logs, the three plots, summary.md and report.html; returns their paths by name."""
    out_dir = Path(out_dir)
    paths = dict(zip(("steps_jsonl", "steps_csv"), write_logs(out_dir, records)))
    atomic_write_json(out_dir / "results.json", dict(results))
    paths["results"] = out_dir / "results.json"
    images: dict[str, bytes] = {}
    if records:
        images = {"sparsity": plot_sparsity(records, original_widths),
                  "accuracy": plot_accuracy_vs_flops(records, results["base"], results.get("metric")),
                  "widths": plot_widths(original_widths, records[-1].widths)}
    for name, data in images.items():
        paths[f"{name}_plot"] = out_dir / "plots" / PLOT_FILES[name]
        atomic_write_bytes(paths[f"{name}_plot"], data)
    atomic_write_text(out_dir / "summary.md", summary_markdown(results, records))
    paths["summary"] = out_dir / "summary.md"
    atomic_write_text(out_dir / "report.html", render_html(results, records, original_widths, images))
    paths["html"] = out_dir / "report.html"
    return paths
