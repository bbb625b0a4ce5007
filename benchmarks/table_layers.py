"""How a latency table's layers are timed: one width after the other, or in turns with a reference layer.

    python benchmarks/table_layers.py           # writes benchmarks/results/table_layers.{json,md}
    python benchmarks/table_layers.py --quick   # a smoke run (a small model) under runs/bench-quick/

A table's per-layer curves are its widths' latencies, timed when the table is built. Timed one
width after the other (`build_table`'s default), layers measured a minute apart may see different
machines (this VM's whole-model latency wanders by 20 % or more over minutes; see timing_turns).
Timed in turns (`layers=LAYER_TURNS`), each layer's widths are timed against each other and against
one fixed reference layer, which scales every layer's times to one machine state. The idea is
checked here, not assumed: it stays off by default unless this study shows it predicts better.

For each runtime, each trial builds the table both ways, one right after the other (the order
alternating between trials), then times one set of random pruned models in turns with the original
(`check.prediction_errors`) and checks both tables against those very measurements: the error of
each latency and of each latency as a share of the original's (what a latency target rests on).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import machine, study_main  # noqa: E402

FULL = {"model": "mobilenetv2", "options": {"strides": "imagenet"}, "size": 224, "classes": 1000, "trials": 2,
        "threads": [1, 2], "samples": 10}
QUICK = {"model": "simple_cnn", "options": {"widths": [16, 32]}, "size": 32, "classes": 10, "trials": 2,
         "threads": [1], "samples": 3, "quick": True}
WAYS = {"sequential": "one width after the other", "turns": "in turns with a reference layer"}


def run(spec: dict[str, Any], log: Any = print) -> dict[str, Any]:
    import torch

    from rlpruner.graph import trace
    from rlpruner.latency import Stopwatch, Turns, build_table, get_runtime
    from rlpruner.latency.check import prediction_errors
    from rlpruner.latency.layers import LAYER_TURNS
    from rlpruner.latency.table import TABLE_WATCH, WHOLE_TURNS
    from rlpruner.models import create_model

    stamp = machine()  # the commit the run starts at
    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"]).eval()
    example = torch.randn(1, 3, spec["size"], spec["size"])
    graph = trace(model, example)
    quick = spec.get("quick", False)  # short timings for the smoke run
    watch = Stopwatch(warmup=1, repeats=3, rounds=1) if quick else TABLE_WATCH
    layers = Turns(warmup=1, block=2, rounds=3) if quick else LAYER_TURNS
    whole = Turns(warmup=1, block=2, rounds=3) if quick else WHOLE_TURNS
    trials: list[dict[str, Any]] = []
    for threads in spec["threads"]:
        runtime = get_runtime("torch-cpu", threads)
        for i in range(spec["trials"]):
            order = list(WAYS) if i % 2 == 0 else list(reversed(WAYS))
            tables, seconds = {}, {}
            for way in order:
                start = time.perf_counter()
                tables[way] = build_table(model, graph, example, runtime, watch=watch, turns=whole,
                                          layers=layers if way == "turns" else None)
                seconds[way] = time.perf_counter() - start
            errors = prediction_errors(model, graph, [tables[w] for w in WAYS], runtime, example,
                                       samples=spec["samples"], seed=i, turns=whole)
            trials.append({"threads": threads, "trial": i, "order": order, **{
                way: {**error.to_dict(), "build_s": seconds[way], "fit": tables[way].fit.describe()}
                for way, error in zip(WAYS, errors)}})
            log(f"{threads} thread(s), trial {i + 1}/{spec['trials']}: " + "; ".join(
                f"{WAYS[way]}: median error {trials[-1][way]['median']:.1%}, as a share "
                f"{trials[-1][way]['share_median']:.1%} ({seconds[way]:.0f} s)" for way in WAYS))
    return {"kind": "table_layers", "machine": stamp, "spec": spec, "trials": trials}


def render_markdown(results: dict[str, Any]) -> str:
    spec, trials = results["spec"], results["trials"]
    lines = [f"{spec['model']} at {spec['size']}x{spec['size']}, random weights; PyTorch eager, batch 1. Each trial "
             "builds the latency table both ways, one right after the other, and checks both against the same "
             f"{spec['samples']} random pruned models, timed in turns with the original. Machine: "
             f"{results['machine']['cpu']}, commit {results['machine']['commit']}. "
             "Command: `python benchmarks/table_layers.py`.", "",
             "| threads | layers timed | trials | median error: per trial | worst | as a share of the original's: "
             "median per trial | worst | build |", "|---:|---|---:|---|---:|---|---:|---:|"]
    for threads in spec["threads"]:
        these = [t for t in trials if t["threads"] == threads]
        for way, name in WAYS.items():
            rows = [t[way] for t in these]
            lines.append(f"| {threads} | {name} | {len(rows)} | " + ", ".join(f"{r['median']:.1%}" for r in rows)
                         + f" | {max(r['worst'] for r in rows):.1%} | "
                         + ", ".join(f"{r['share_median']:.1%}" for r in rows)
                         + f" | {max(r['share_worst'] for r in rows):.1%} | "
                         f"{statistics.median(r['build_s'] for r in rows):.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return study_main("table_layers", __doc__.splitlines()[0], argv, FULL, QUICK, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
