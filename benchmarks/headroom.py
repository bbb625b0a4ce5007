"""How much can the allocation matter once the model is recovered? A headroom study.

    python benchmarks/headroom.py             # the study: benchmarks/results/headroom.{json,md}
    python benchmarks/headroom.py --quick     # smoke run (one small cell, 3 architectures, 2 KD epochs)
    python benchmarks/headroom.py --render    # regenerate headroom.md from headroom.json only
    python benchmarks/headroom.py --cells vgg11:synthetic-hard:0.9    # add a cell of the grid to the study

The accuracy benchmark compares allocators after the same KD budget. When every method ends within
the seed spread, either the allocators are equally good or the allocation cannot matter much on that
model and data. This study tells the two apart. For a cell of the accuracy grid (model, dataset,
FLOPs target) it trains many final architectures **at the same FLOPs** in exactly the same way, from
the accuracy benchmark's base model:

- one-shot pruning to the architecture's widths (the lowest-Taylor units of every group, scored on
  256 stratified training images), BatchNorm re-estimated on 256 training images;
- the search judge's score of it right after that (top-1 on the 128-image stratified validation
  subset) and its whole-validation top-1;
- then the accuracy benchmark's whole KD budget (20 epochs at lr 0.01 against the base model) for
  every seed, and the test top-1.

The architectures: uniform (every group the same share), the widths each method reached in the
accuracy benchmark's seed-0 run of the cell (when that run is in accuracy.json, so the architecture
a method chose is judged apart from the path it took), and random allocations drawn widely around
the channel density. Every allocation except the recorded ones is scaled to the target by bisection
on its channel budget.

Per cell the page reports the headroom (the best architecture's and the best random one's mean test
top-1 minus uniform's) against the seed spread, and the Spearman correlation of post-recovery
accuracy with the judge's score and with the parameters kept. Cells already in the results file
(same settings) are kept, architecture by architecture, so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import (ALLOW_IMPORTS, DIGITS, ROOT, SYNTHETIC, METHODS, full,  # noqa: E402
                                 machine, portable, render_only, study_files)

DATASETS = {d.label: d for d in (DIGITS, SYNTHETIC)}
RANDOM_SEED = 23  # mixed into the generator of the random allocations


@dataclass(frozen=True)
class HeadroomSettings:
    mode: str
    cells: tuple[tuple[str, str, float], ...]   # (model label, dataset label, FLOPs reduction)
    random: int = 6                             # random allocations per cell
    noise: float = 0.3                          # policy.sample spread around the channel density
    seeds: tuple[int, ...] = (0, 1)             # KD seeds (shuffling, augmentation) per architecture
    kd_epochs: int = 20                         # the accuracy benchmark's KD budget per run
    kd_lr: float = 0.01
    calibration_samples: int = 256
    bn_samples: int = 256
    score_samples: int = 128
    importance: str = "taylor"
    base_dir: str = "runs/bench/full/base"      # the accuracy benchmark's base models
    widths_from: str = "benchmarks/results/accuracy.json"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def full_settings() -> HeadroomSettings:
    return HeadroomSettings(mode="full", cells=(("resnet20", "synthetic-hard", 0.75),
                                                ("resnet20", "synthetic-hard", 0.5),
                                                ("mobilenetv3s", "digits", 0.75),
                                                ("resnet20", "digits", 0.75)))


def quick_settings() -> HeadroomSettings:
    return HeadroomSettings(mode="quick", cells=(("resnet20", "synthetic-hard", 0.5),), random=1, seeds=(0,),
                            kd_epochs=2)


def cell_label(cell: tuple[str, str, float]) -> str:
    model, dataset, target = cell
    return f"{model} · {dataset} · -{target:.0%}"


# --------------------------------------------------------------------------------------------------
# Architectures at the target
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    label: str
    kind: str                 # "uniform", "recorded" (an accuracy-benchmark run's widths) or "random"
    counts: dict[str, int]    # units removed per group


def recorded_widths(path: Path, cell: tuple[str, str, float]) -> list[Architecture]:
    """The final widths of every method's seed-0 KD run of the cell in the accuracy results."""
    if not path.exists():
        return []
    model, dataset, target = cell
    rows = json.loads(path.read_text()).get("runs", [])
    found = []
    for row in rows:
        cell_of = (row["model"], row["dataset"], row["target"], row["seed"], row["recovery"])
        if cell_of == (model, dataset, target, 0, True) and row.get("widths") and row["method"] in METHODS:
            counts = {name: int(before - after) for name, (before, after) in row["widths"].items()}
            found.append(Architecture(f"{row['method']} (its s0 run)", "recorded", counts))
    return sorted(found, key=lambda a: a.label)


def at_target(graph: Any, names: list[str], capacity: np.ndarray, pd: np.ndarray, target: float,
              base_flops: int) -> dict[str, int]:
    """The smallest channel budget allocated along `pd` that removes `target` of the FLOPs."""
    from rlpruner.allocation import policy
    from rlpruner.allocation.budget import smallest_budget

    def counts_at(budget: int) -> np.ndarray:
        return policy.allocate(pd, budget, capacity)

    def meets(counts: np.ndarray) -> bool:
        return 1.0 - graph.count(_removal_sizes(names, counts))[1] / base_flops >= target

    most = int(capacity.sum())
    counts = smallest_budget(counts_at, meets, most)
    counts = counts_at(most) if counts is None else counts
    return {n: int(c) for n, c in zip(names, counts) if c > 0}


def _removal_sizes(names: list[str], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Removals with the right counts (which units does not change FLOPs or params)."""
    return {n: np.arange(int(c)) for n, c in zip(names, counts) if c > 0}


def architectures(settings: HeadroomSettings, cell: tuple[str, str, float], graph: Any) -> list[Architecture]:
    from rlpruner.allocation import policy

    groups = graph.prunable_groups()
    names = [g.name for g in groups]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    capacity = policy.capacity(sizes)
    base_flops = graph.count()[1]
    density = policy.density_init(sizes, capacity)
    target = cell[2]
    out = [Architecture("uniform", "uniform", at_target(graph, names, capacity, density, target, base_flops))]
    out += recorded_widths(ROOT / settings.widths_from, cell)
    rng = np.random.default_rng([RANDOM_SEED, int(round(target * 1000))])
    for index in range(settings.random):
        pd = policy.sample(density, settings.noise, rng, capacity)
        out.append(Architecture(f"random {index + 1}", "random",
                                at_target(graph, names, capacity, pd, target, base_flops)))
    return out


# --------------------------------------------------------------------------------------------------
# Training one architecture
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """What every architecture of a cell shares: data, base model, graph, importance, fixed batches."""

    splits: Any
    base: torch.nn.Module
    graph: Any
    scores: dict[str, np.ndarray]
    data: Any
    base_params: int
    base_flops: int


def load_cell(settings: HeadroomSettings, cell: tuple[str, str, float]) -> Cell:
    from rlpruner import importance, io
    from rlpruner.graph import trace
    from rlpruner.search.config import CompressConfig, RLConfig
    from rlpruner.search.data import SplitsSource, prepare_data
    from rlpruner.task import Task

    model_label, dataset_label, _ = cell
    path = ROOT / settings.base_dir / f"{model_label}-{dataset_label}.rlp"
    if not path.exists():
        raise SystemExit(f"{portable(path)} is missing: train the accuracy benchmark's base model first "
                         f"(python benchmarks/run_all.py --full --only accuracy --models {model_label} "
                         f"--datasets {dataset_label} ...)")
    splits = DATASETS[dataset_label].load()
    base = io.load(path, allow_imports=ALLOW_IMPORTS).eval()
    config = CompressConfig(rl=RLConfig(score_samples=settings.score_samples, bn_samples=settings.bn_samples,
                                        calibration_samples=settings.calibration_samples,
                                        importance=settings.importance))
    data = prepare_data(SplitsSource(splits), config, torch.device("cpu"), Task(), base)
    graph = trace(base, data.example)
    torch.manual_seed(0)
    scores = importance.get(settings.importance, data=data.calibration)(base, graph)
    params, flops = graph.count()
    return Cell(splits, base, graph, {n: np.asarray(s) for n, s in scores.items()}, data, params, flops)


def measure(settings: HeadroomSettings, cell: Cell, arch: Architecture, log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.accuracy import _loader, kd
    from rlpruner.batchnorm import recalibrate
    from rlpruner.importance import lowest
    from rlpruner.surgery import apply_slices
    from rlpruner.task import classify_forward, top1
    from rlpruner.train import evaluate

    removals = {n: lowest(cell.scores[n], c) for n, c in arch.counts.items() if c > 0}
    slices = cell.graph.slices(removals)
    params, flops = cell.graph.count(slices=slices)
    pruned = recalibrate(apply_slices(cell.base, slices, inplace=False), cell.data.bn_batches, classify_forward)
    with torch.no_grad():
        pruned.eval()
        judged = top1([pruned(x) for x, _ in cell.data.score_batches], [y for _, y in cell.data.score_batches])
        pruned_val = top1([pruned(x) for x, _ in cell.data.val_batches], [y for _, y in cell.data.val_batches])
    accuracy_settings = replace(full().accuracy, kd_lr=settings.kd_lr)
    runs = []
    for seed in settings.seeds:
        start = time.perf_counter()
        student = copy.deepcopy(pruned)  # the structural copy shares the base's unchanged tensors
        kd(student, cell.base, cell.splits, accuracy_settings, settings.kd_epochs, seed, 0)
        student.eval()
        runs.append({"seed": seed, "val": evaluate(student, _loader(cell.splits.val))["top1"],
                     "test": evaluate(student, _loader(cell.splits.test))["top1"],
                     "seconds": time.perf_counter() - start})
        log(f"    {arch.label:22s} seed {seed}: test {runs[-1]['test']:.2%}  ({runs[-1]['seconds']:.0f} s)")
    return {**asdict(arch), "params": params, "flops": flops, "flops_reduction": 1.0 - flops / cell.base_flops,
            "params_reduction": 1.0 - params / cell.base_params, "judge": judged, "pruned_val": pruned_val,
            "runs": runs, "test": float(np.mean([r["test"] for r in runs])),
            "test_std": float(np.std([r["test"] for r in runs], ddof=1)) if len(runs) > 1 else 0.0}


# --------------------------------------------------------------------------------------------------
# Summary and page
# --------------------------------------------------------------------------------------------------

def summarise(block: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.render import spearman

    archs = block["architectures"]
    uniform = next(a for a in archs if a["kind"] == "uniform")
    best = max(archs, key=lambda a: a["test"])
    randoms = [a for a in archs if a["kind"] == "random"]
    best_random = max(randoms, key=lambda a: a["test"]) if randoms else None
    tests = [a["test"] for a in archs]
    return {"uniform": uniform["test"], "best": best["label"], "best_gain": best["test"] - uniform["test"],
            "best_random_gain": None if best_random is None else best_random["test"] - uniform["test"],
            "worst_gain": min(tests) - uniform["test"],
            "seed_spread": float(np.mean([a["test_std"] for a in archs])),
            "rho_judge": spearman([a["judge"] for a in archs], tests),
            "rho_params": spearman([-a["params_reduction"] for a in archs], tests)}


def _pts(value: float | None, sign: str = "+.1f") -> str:
    return "—" if value is None else format(value * 100, sign)


def render_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = ["# Headroom: how much the allocation matters after recovery", "",
             f"Generated by `benchmarks/headroom.py` from `headroom.json` "
             f"({'; '.join(results.get('commands') or [results.get('command', '')])}). Every "
             f"architecture: one-shot pruning from the accuracy benchmark's base model ({s['importance']} order), "
             f"BatchNorm re-estimated on {s['bn_samples']} training images, then {s['kd_epochs']} KD epochs at lr "
             f"{s['kd_lr']} for each of {len(s['seeds'])} seeds; test top-1, mean over seeds. Random allocations: "
             f"policy.sample noise {s['noise']} around the channel density, scaled to the target.", "",
             "*judge*: top-1 right after pruning on the search's scoring subset; *ρ(judge)*, *ρ(params)*: Spearman "
             "of post-recovery test top-1 with the judge's score and with the parameters kept; *seed spread*: mean "
             "standard deviation over seeds of one architecture.", "",
             "| cell | uniform | best architecture | best − uniform | best random − uniform | worst − uniform | "
             "seed spread | ρ(judge) | ρ(params) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for block in results["blocks"]:
        if not block.get("complete"):
            continue
        m = block["summary"]
        lines.append(f"| {block['label']} | {_pts(m['uniform'], '.1f')} | {m['best']} | {_pts(m['best_gain'])} | "
                     f"{_pts(m['best_random_gain'])} | {_pts(m['worst_gain'])} | {_pts(m['seed_spread'], '.1f')} | "
                     f"{'—' if m['rho_judge'] is None else format(m['rho_judge'], '+.2f')} | "
                     f"{'—' if m['rho_params'] is None else format(m['rho_params'], '+.2f')} |")
    for block in results["blocks"]:
        if not block.get("complete"):
            continue
        where = block.get("measured_on")
        lines += ["", f"**{block['label']}** (base test {block['base_test']:.1%}"
                      + (f"; measured on {where['cpu']}, commit {where['commit']}, {where['date']}" if where else "")
                      + ")", "",
                  "| architecture | FLOPs | params | judge | val right after pruning | test after KD | − uniform |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        uniform = block["summary"]["uniform"]
        for a in sorted(block["architectures"], key=lambda a: -a["test"]):
            lines.append(f"| {a['label']} | -{a['flops_reduction']:.1%} | -{a['params_reduction']:.1%} | "
                         f"{a['judge']:.1%} | {a['pruned_val']:.1%} | {a['test']:.1%} ± {a['test_std'] * 100:.1f} | "
                         f"{_pts(a['test'] - uniform)} |")
    m = results.get("machine", {})
    lines += ["", f"Measured on {m.get('cpu', '?')}, torch {m.get('torch', '?')}, 1 thread, commit "
                  f"{m.get('commit', '?')}, {m.get('date', '?')}; wall time {results.get('wall_seconds', 0) / 60:.0f} min.",
              ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: one cell, 3 architectures, 2 KD epochs")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default: benchmarks/results; --quick: runs/bench-quick/results)")
    parser.add_argument("--render", action="store_true", help="only regenerate headroom.md from headroom.json")
    parser.add_argument("--cells", nargs="+", type=parse_cell, default=None, metavar="MODEL:DATASET:TARGET",
                        help="study these cells of the accuracy grid (e.g. vgg11:synthetic-hard:0.9) instead of the "
                             "preset's; the cells already in the results are kept")
    return parser.parse_args(argv)


def parse_cell(text: str) -> tuple[str, str, float]:
    """'vgg11:synthetic-hard:0.9' -> ('vgg11', 'synthetic-hard', 0.9)."""
    parts = text.split(":")
    try:
        model, dataset, target = parts[0], parts[1], float(parts[2])
    except (IndexError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not MODEL:DATASET:TARGET (e.g. vgg11:synthetic-hard:0.9)")
    if len(parts) != 3 or dataset not in DATASETS or not 0.0 < target < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the dataset must be one of {', '.join(DATASETS)} and the target "
                                         "a FLOPs reduction in (0, 1)")
    return model, dataset, target


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """What makes two studies' cells comparable: every setting but which cells ran."""
    return {k: v for k, v in settings.items() if k != "cells"}


def main(argv: list[str] | None = None) -> int:
    from rlpruner.io import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    results_dir, json_path, md_path = study_files("headroom", args.results, args.quick)
    if args.render:
        return render_only(json_path, md_path, render_markdown)
    settings = quick_settings() if args.quick else full_settings()
    if args.cells:
        settings = replace(settings, cells=tuple(args.cells))
    torch.set_num_threads(1)
    results_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    same = comparable(old.get("settings", {})) == comparable(settings.to_dict())
    cells = [tuple(c) for c in old["settings"]["cells"]] if same else []
    recorded = replace(settings, cells=tuple(dict.fromkeys([*cells, *settings.cells])))
    command = " ".join(["python benchmarks/headroom.py", *(argv if argv is not None else sys.argv[1:])])
    earlier = (old.get("commands") or [old["command"]]) if same and old.get("command") else []
    results = {"command": command, "commands": list(dict.fromkeys([*earlier, command])),
               "settings": recorded.to_dict(), "machine": {**machine(), "threads": 1}, "test_split_used": True,
               "blocks": old.get("blocks", []) if same else [],
               "wall_seconds": old.get("wall_seconds", 0.0) if same else 0.0}
    log = lambda line: print(line, flush=True)  # noqa: E731
    for cell in settings.cells:
        label = cell_label(cell)
        block = next((b for b in results["blocks"] if b["label"] == label), None)
        if block and block.get("complete"):
            continue
        log(f"== {label}")
        loaded = load_cell(settings, cell)
        if block is None:
            block = {"label": label, "model": cell[0], "dataset": cell[1], "target": cell[2],
                     "base_test": _base_test(loaded), "architectures": [], "complete": False,
                     "measured_on": {k: v for k, v in machine().items() if k in ("cpu", "commit", "date")}}
            results["blocks"].append(block)
        done = {a["label"] for a in block["architectures"]}
        for arch in architectures(settings, cell, loaded.graph):
            if arch.label in done:
                continue
            start = time.perf_counter()
            block["architectures"].append(measure(settings, loaded, arch, log))
            results["wall_seconds"] += time.perf_counter() - start
            atomic_write_json(json_path, results)
        block["summary"], block["complete"] = summarise(block), True
        atomic_write_json(json_path, results)
        log(f"  {label}: " + json.dumps(block["summary"]))
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render_markdown(results))
    print(render_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _base_test(cell: Cell) -> float:
    from benchmarks.accuracy import _loader
    from rlpruner.train import evaluate

    return evaluate(cell.base, _loader(cell.splits.test))["top1"]


if __name__ == "__main__":
    sys.exit(main())
