"""Layer sensitivity, like Figure 1 of the RL-Pruner paper: the accuracy drop when 10% of ONE group
is pruned (no recovery), for every group in turn, at the dense model and after some pruning.

The uneven and shifting drops are the method's motivation: a fixed rule cannot follow them. The
pruned model is the RL-Pruner model of the accuracy benchmark (seed 0, with recovery) at the
configured FLOPs target. Accuracies are on the test split; nothing here selects anything.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .settings import ALLOW_IMPORTS, DatasetSpec, SensitivitySettings, machine, resolve


def group_drops(model: nn.Module, batches: list, example: torch.Tensor, settings: SensitivitySettings
                ) -> tuple[float, list[dict[str, Any]]]:
    """(accuracy, per-group rows) with one group at a time losing `fraction` of its units."""
    import rlpruner
    from rlpruner.importance import get, lowest
    from rlpruner.train import evaluate

    model = model.eval()
    accuracy = evaluate(model, batches)["top1"]
    graph = rlpruner.trace(model, example)
    scores = get(settings.importance)(model, graph)
    rows = []
    for group in graph.prunable_groups():
        count = max(1, int(round(settings.fraction * group.size)))
        pruned = rlpruner.prune_channels(model, graph, {group.name: lowest(scores[group.name], count)}, inplace=False)
        acc = evaluate(pruned, batches)["top1"]
        rows.append({"group": group.name, "size": group.size, "removed": count, "acc": acc, "drop": accuracy - acc})
    return accuracy, rows


def run(settings: SensitivitySettings, accuracy: dict, datasets: tuple[DatasetSpec, ...], image_size: int,
        results_path: Path, log: Callable[[str], None] = print) -> dict:
    from rlpruner import io
    from rlpruner.io import atomic_write_json

    start = time.perf_counter()
    specs = {d.label: d for d in datasets}
    rl_runs = {(r["model"], r["dataset"]): r for r in accuracy.get("runs", [])
               if r["method"] == "rl" and r["recovery"] and abs(r["target"] - settings.target) < 1e-9
               and r["seed"] == min(x["seed"] for x in accuracy["runs"])}
    panels = []
    for base in accuracy.get("base", []):
        splits = specs[base["dataset"]].load(image_size)
        batches = list(torch.utils.data.DataLoader(splits.test, batch_size=256))
        example = splits.example_inputs()
        stages = [("dense", resolve(base["checkpoint"]), 0.0)]
        run_row = rl_runs.get((base["model"], base["dataset"]))
        if run_row is not None and (resolve(run_row["run_dir"]) / "model.rlp").exists():
            stages.append(("pruned", resolve(run_row["run_dir"]) / "model.rlp", run_row["flops_reduction"]))
        for stage, path, reduction in stages:
            model = io.load(path, allow_imports=ALLOW_IMPORTS)
            acc, rows = group_drops(model, batches, example, settings)
            panels.append({"model": base["model"], "dataset": base["dataset"], "stage": stage,
                           "flops_reduction": reduction, "acc": acc, "groups": rows})
            drops = np.array([r["drop"] for r in rows])
            log(f"sensitivity {base['model']:>12s} {base['dataset']:<14s} {stage:<6s}: {len(rows)} groups, drop "
                f"{drops.min():+.1%} .. {drops.max():+.1%}")
    results = {"kind": "sensitivity", "machine": machine(), "settings": asdict(settings), "panels": panels,
               "seconds": time.perf_counter() - start}
    atomic_write_json(results_path, results)
    return results
