"""Why models are compared in turns: one latency reduction, timed one model after the other and in turns.

    python benchmarks/timing_turns.py           # writes benchmarks/results/timing_turns.{json,md}
    python benchmarks/timing_turns.py --quick   # a smoke run (a small model) under runs/bench-quick/

MobileNetV2 at 224x224 (random weights) and its uniform -50 % FLOPs version (one-shot, so the same
model every run), PyTorch eager, batch 1, 1 thread. Each trial measures the reduction both ways, the
two ways one right after the other so that both see the same machine, at two lengths:
- **one after the other**: each model timed once with the stopwatch latency_model.py used before
  83e64c9 (3 passes of at least 5 calls, the fastest pass's median), original first; passes of
  about 0.3 s (that benchmark's) and of about 1.6 s;
- **in turns**: `Runtime.time_turns_ms` as latency_model.py now times a column (after a warm-up,
  turns of one untimed and 5 timed calls each), sized to take as long as the other way just took.
The page gives the spread of each way's reductions over the trials: how far one measurement of a
reduction can be trusted on this machine, and whether a longer one helps.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import change_spread, machine, study_main  # noqa: E402

FULL = {"model": "mobilenetv2", "options": {"strides": "imagenet"}, "size": 224, "classes": 1000, "trials": 20,
        "pass_s": [0.3, 1.6]}
QUICK = {"model": "simple_cnn", "options": {"widths": [16, 32]}, "size": 32, "classes": 10, "trials": 2,
         "pass_s": [0.05]}
WAYS = {"sequential": "one after the other", "turns": "in turns"}


def run(spec: dict[str, Any], log: Any = print) -> dict[str, Any]:
    import torch

    from rlpruner.latency import Stopwatch, Turns, get_runtime
    from rlpruner.models import create_model
    from rlpruner.pruner import prune_to_flops

    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"]).eval()
    example = torch.randn(1, 3, spec["size"], spec["size"])
    pruned = prune_to_flops(copy.deepcopy(model), example, 0.5, method="uniform", round_to=1).eval()
    runtime = get_runtime("torch-cpu", 1)
    trials: list[dict[str, Any]] = []
    for i in range(spec["trials"]):
        for pass_s in spec["pass_s"]:  # latency_model.py's stopwatch before 83e64c9 at 0.3 s
            watch = Stopwatch(warmup=2, repeats=5, rounds=3, per_round_s=pass_s)
            start = time.perf_counter()
            original_ms, pruned_ms = (runtime.time_ms(m, (example,), watch) for m in (model, pruned))
            sequential_s = time.perf_counter() - start
            start = time.perf_counter()
            in_turns = runtime.time_turns_ms([model, pruned], (example,),
                                             Turns(warmup=2, block=5, settle=1, seconds=sequential_s))
            trials.append({"trial": i, "pass_s": pass_s,
                           "sequential": {"original_ms": original_ms, "pruned_ms": pruned_ms, "seconds": sequential_s},
                           "turns": {"original_ms": in_turns[0], "pruned_ms": in_turns[1],
                                     "seconds": time.perf_counter() - start}})
            log(f"trial {i + 1}/{spec['trials']}, passes of {pass_s} s: " + ", ".join(
                f"{WAYS[way]} {_reduction(trials[-1][way]):+.1%}" for way in WAYS))
    return {"kind": "timing_turns", "machine": machine(), "spec": spec, "trials": trials}


def _reduction(timing: dict[str, float]) -> float:
    return timing["pruned_ms"] / timing["original_ms"] - 1.0


def render_markdown(results: dict[str, Any]) -> str:
    spec, trials = results["spec"], results["trials"]
    lines = [f"{spec['model']} at {spec['size']}x{spec['size']}, random weights, against its uniform -50% FLOPs "
             f"version; PyTorch eager, batch 1, 1 thread; {spec['trials']} trials, each measuring the latency change "
             "both ways, one right after the other, for each length of pass. Machine: "
             f"{results['machine']['cpu']}, commit {results['machine']['commit']}. "
             "Command: `python benchmarks/timing_turns.py`.", "",
             "| timed | one after the other: passes of | latency change: median | min | max | middle half | "
             "original's latency: min-max | seconds per measurement |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for pass_s in spec["pass_s"]:
        these = [t for t in trials if t["pass_s"] == pass_s]
        for way, name in WAYS.items():
            changes = sorted(_reduction(t[way]) for t in these)
            quartiles = statistics.quantiles(changes, n=4, method="inclusive") if len(changes) > 1 else [changes[0]] * 3
            originals = [t[way]["original_ms"] for t in these]
            lines.append(f"| {name} | {pass_s:g} s | {change_spread(changes)} | "
                         f"{quartiles[0]:+.1%} to {quartiles[2]:+.1%} | "
                         f"{min(originals):.2f}-{max(originals):.2f} ms | "
                         f"{statistics.median(t[way]['seconds'] for t in these):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return study_main("timing_turns", __doc__.splitlines()[0], argv, FULL, QUICK, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
