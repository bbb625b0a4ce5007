"""How far a latency target's check can be believed: the old short timing and the new one with its interval.

    python benchmarks/check_noise.py           # writes benchmarks/results/check_noise.{json,md}
    python benchmarks/check_noise.py --quick   # a smoke run (a small model) under runs/bench-quick/

When a latency search reaches its target by the table, it times the model against the original and
prunes on if the timing says the target was missed by more than the slack (1 % of the original's
latency; rlpruner/search/measured.py). This study times the models such a check sees: ResNet-20 at
16x16 (the latency_target study's model, random weights) and its uniform -50/-75/-90 % FLOPs
versions, PyTorch eager, batch 1, 1 thread, on a quiet machine and with one and two other processes
each keeping a core busy (as when the benchmark's other worker trains). Each trial times every
pruned model against the original both ways, one right after the other:
- **old check** (before b584adb): turns of 5 timed calls, 16 turns (what `pair_turns` of the
  default config gave then), about a third of a second; a miss when its reduction is more than the
  slack below target;
- **new check**: turns for `latency_pair_s` (5 s; at least 16 turns) with a 95 % interval of the
  per-turn ratio (`Runtime.time_ratio`, `pair_turns` of the default config); a miss only when the
  whole interval lies more than the slack below target.
A long quiet timing of each pair (`reference_s` of turns) gives the reference reduction. The page
counts, for a model that meets its target exactly (target = its reference reduction), how often
each check would have called it a miss and sent the search on: a false miss.
"""
from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import change_spread, machine, ratio_row, study_main  # noqa: E402

FULL = {"model": "resnet20", "options": {}, "size": 16, "classes": 20, "targets": [0.5, 0.75, 0.9], "trials": 5,
        "loads": [0, 1, 2], "reference_s": 30.0, "check_s": 5.0}
QUICK = {"model": "simple_cnn", "options": {"widths": [8, 16]}, "size": 16, "classes": 10, "targets": [0.5],
         "trials": 2, "loads": [0, 1], "reference_s": 0.5, "check_s": 0.3}
WAYS = {"old": "old check (16 turns)", "new": "new check (interval)"}
SLACK = 0.01
# a process that keeps one core busy the way a training worker does (1-thread matrix products)
LOAD = ("import time, torch\ntorch.set_num_threads(1)\na = torch.randn(384, 384)\nend = time.time() + 3600\n"
        "while time.time() < end:\n    a = torch.tanh(a @ a)\n")


def run(spec: dict[str, Any], log: Any = print) -> dict[str, Any]:
    import torch

    from rlpruner.latency import Turns, get_runtime
    from rlpruner.models import create_model
    from rlpruner.pruner import prune_to_flops
    from rlpruner.search import CompressConfig
    from rlpruner.search.latency import pair_turns

    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"]).eval()
    example = torch.randn(1, 3, spec["size"], spec["size"])
    pruned = {target: prune_to_flops(copy.deepcopy(model), example, target, method="uniform", round_to=1).eval()
              for target in spec["targets"]}
    runtime, inputs = get_runtime("torch-cpu", 1), (example,)
    config = replace(CompressConfig(), latency_pair_s=spec["check_s"])
    turns = {"old": Turns(warmup=3, block=5, settle=1, rounds=16), "new": pair_turns(config)}
    reference = {}
    for target, other in pruned.items():
        ratio = runtime.time_ratio(model, other, inputs, Turns(warmup=3, block=5, settle=1, seconds=spec["reference_s"]))
        reference[str(target)] = ratio_row(ratio, 0.0)
        log(f"reference -{target:.0%} FLOPs: {-reference[str(target)]['reduction']:+.1%} latency")
    trials: list[dict[str, Any]] = []
    for load in spec["loads"]:
        loads = [subprocess.Popen([sys.executable, "-c", LOAD]) for _ in range(load)]
        try:
            time.sleep(1.0 if load else 0.0)
            for i in range(spec["trials"]):
                for target, other in pruned.items():
                    row: dict[str, Any] = {"load": load, "trial": i, "target": target}
                    for way, how in turns.items():
                        start = time.perf_counter()
                        ratio = runtime.time_ratio(model, other, inputs, how)
                        row[way] = ratio_row(ratio, time.perf_counter() - start)
                    trials.append(row)
                    log(f"{load} busy, trial {i + 1}/{spec['trials']}, -{target:.0%} FLOPs: " + ", ".join(
                        f"{way} {-row[way]['reduction']:+.1%}" for way in WAYS))
        finally:
            for process in loads:
                process.kill()
                process.wait()
    return {"kind": "check_noise", "machine": machine(), "spec": spec, "reference": reference, "trials": trials}


def false_miss(way: str, row: dict[str, Any], reference: float) -> bool:
    """Whether the check `way` would call a model that meets its target exactly (`reference`) a miss."""
    measured = row["reduction"] if way == "old" else row["high"]
    return measured < reference - SLACK


def render_markdown(results: dict[str, Any]) -> str:
    spec, trials, reference = results["spec"], results["trials"], results["reference"]
    lines = [f"{spec['model']} at {spec['size']}x{spec['size']}, random weights, against its uniform "
             f"{'/'.join(f'-{t:.0%}' for t in spec['targets'])} FLOPs versions; PyTorch eager, batch 1, 1 thread; "
             f"{spec['trials']} trials per load, each timing every pair both ways one right after the other. "
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, commit "
             f"{results['machine']['commit']}. Command: `python benchmarks/check_noise.py`.", "",
             "Reference (quiet machine, " + f"{spec['reference_s']:g} s of turns each): " + ", ".join(
                 f"-{float(t):.0%} FLOPs {-r['reduction']:+.1%} latency" for t, r in reference.items()) + ".", "",
             "A false miss: the check, given a target equal to the model's reference reduction, says it missed by "
             f"more than the {SLACK:.0%} slack and sends the search on.", "",
             "| other busy processes | FLOPs | check | seconds | latency change: median | min | max | "
             "interval width: median | interval holds the reference | false misses |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for load in spec["loads"]:
        for target in spec["targets"]:
            these = [t for t in trials if t["load"] == load and t["target"] == target]
            ref = reference[str(target)]["reduction"]
            for way, name in WAYS.items():
                rows = [t[way] for t in these]
                widths = statistics.median(r["high"] - r["low"] for r in rows)
                holds = sum(r["low"] <= ref <= r["high"] for r in rows)
                misses = sum(false_miss(way, r, ref) for r in rows)
                lines.append(f"| {load} | -{target:.0%} | {name} | {statistics.median(r['seconds'] for r in rows):.1f} | "
                             f"{change_spread([-r['reduction'] for r in rows])} | {widths:.1%} | {holds} of {len(rows)} | {misses} of {len(rows)} |")
    totals = {way: (sum(false_miss(way, t[way], reference[str(t['target'])]["reduction"]) for t in trials), len(trials))
              for way in WAYS}
    lines += ["", "False misses over all trials: " + ", ".join(
        f"{WAYS[way]} {misses} of {count}" for way, (misses, count) in totals.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return study_main("check_noise", __doc__.splitlines()[0], argv, FULL, QUICK, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
