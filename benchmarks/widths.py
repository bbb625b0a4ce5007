"""The allocation each method ends with: the share of every group's channels its final model keeps.

Loop methods (RL-Pruner, uniform, global) record the final width of every coupled group under the
name of the group's first layer; the Torch-Pruning peers record every layer's. A group's share is
read under its name in both (layers of one group share their width), so every method's allocation
is shown on the same axis: the groups of the model, in the order the trace met them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plots import pyplot, save

Key = tuple[str, str, float]


def group_names(accuracy: Mapping[str, Any], model: str) -> list[str]:
    """The model's groups, from a loop method's rows (they all record the same groups)."""
    for row in accuracy.get("runs", []):
        if row["model"] == model and row.get("widths") and not row["method"].startswith("tp-"):
            return list(row["widths"])
    return []


def kept_share(row: Mapping[str, Any], names: Sequence[str]) -> list[float | None]:
    """Final / original width of each named group in one run (None where the run did not record it)."""
    widths = row.get("widths") or {}
    return [widths[n][1] / widths[n][0] if n in widths and widths[n][0] else None for n in names]


def mean_shares(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[float | None]:
    """Per group, the mean share over the runs (seeds) that recorded it."""
    per_run = [kept_share(r, names) for r in rows]
    out = []
    for i in range(len(names)):
        values = [s[i] for s in per_run if s[i] is not None]
        out.append(float(np.mean(values)) if values else None)
    return out


def _rows(accuracy: Mapping[str, Any], key: Key, method: str) -> list[Mapping[str, Any]]:
    model, dataset, target = key
    return [r for r in accuracy.get("runs", []) if r["recovery"] and r["method"] == method and r["model"] == model
            and r["dataset"] == dataset and abs(r["target"] - target) < 1e-9]


def widths_tables(accuracy: Mapping[str, Any], keys: Sequence[Key], methods: Sequence[str],
                  name_of: Any) -> list[str]:
    """One markdown table per model: a row per (dataset, target, method), a column per group, each cell
    the kept share in percent (mean over seeds)."""
    out: list[str] = []
    for model in dict.fromkeys(k[0] for k in keys):
        names = group_names(accuracy, model)
        if not names:
            continue
        out += [f"**{model}** (groups in trace order; % of the channels kept, mean over seeds)", "",
                "| dataset | FLOPs target | method | " + " | ".join(f"`{n}`" for n in names) + " |",
                "|---|---|---|" + "---:|" * len(names)]
        for key in (k for k in keys if k[0] == model):
            for method in methods:
                rows = _rows(accuracy, key, method)
                if not rows:
                    continue
                shares = mean_shares(rows, names)
                cells = ["—" if s is None else f"{100 * s:.0f}" for s in shares]
                out.append(f"| {key[1]} | -{key[2]:.0%} | {name_of(method)} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def plot_widths(accuracy: Mapping[str, Any], keys: Sequence[Key], methods: Sequence[str], name_of: Any,
                colors: Mapping[str, str], path: Path) -> Path | None:
    """Kept share per group (x: the groups in trace order), a line per method, a panel per
    (model, dataset) and FLOPs target."""
    ran = [k for k in keys if any(_rows(accuracy, k, m) for m in methods)]
    pairs = [p for p in dict.fromkeys(k[:2] for k in ran) if group_names(accuracy, p[0])]
    targets = sorted({k[2] for k in ran})
    if not pairs or not targets:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(pairs), len(targets), figsize=(4.2 * len(targets), 2.6 * len(pairs)),
                             squeeze=False)
    for i, (model, dataset) in enumerate(pairs):
        names = group_names(accuracy, model)
        for j, target in enumerate(targets):
            ax = axes[i][j]
            if (model, dataset, target) not in ran:
                ax.axis("off")
                continue
            for method in methods:
                rows = _rows(accuracy, (model, dataset, target), method)
                if rows:
                    shares = [np.nan if s is None else 100 * s for s in mean_shares(rows, names)]
                    ax.plot(range(len(names)), shares, marker=".", color=colors.get(method), label=name_of(method))
            ax.set_title(f"{model} · {dataset} · FLOPs -{target:.0%}", fontsize=9)
            ax.set_ylim(0, 105)
            ax.set_xticks([])
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("% kept")
            if i == len(pairs) - 1:
                ax.set_xlabel("groups, input → output")
    axes[0][0].legend(fontsize=7)
    return save(fig, path)
