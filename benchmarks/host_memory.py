"""The host allocator's share of a CPU latency: one model, one pruned version, three allocator states.

    python benchmarks/host_memory.py           # writes benchmarks/results/host_memory.{json,md}
    python benchmarks/host_memory.py --quick   # a smoke run (a small model) under runs/bench-quick/

MobileNetV2 at 224x224 (random weights) and the same model cut to the widths its PyTorch 1-thread
latency table points to at -50 % FLOPs (the table bound in benchmarks/results/latency_model.json;
traced and cut as the benchmarks do) are timed at batch 1 on 1 thread, alternately, in a fresh
process per state:
- glibc's defaults, nothing run before the timings but building the two models;
- glibc's defaults after one forward pass at batch 32 (what a benchmark that timed a large batch
  first leaves behind);
- `rlpruner.host_memory.keep_freed_memory()` first (what every rlpruner CPU timing does).
Each timing records the minor page faults it took. In the first two states the result depends on
what the process did before (how the pruned model was built changes whether the original faults);
rlpruner's timings use the third (docs/compress.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import RESULTS, machine, study_files, write_study  # noqa: E402

STATES = {"fresh": "glibc defaults, fresh process", "after-b32": "glibc defaults, after one batch of 32",
          "kept": "keeping freed memory (rlpruner.host_memory)"}
FULL = {"model": "mobilenetv2", "options": {"strides": "imagenet"}, "size": 224, "classes": 1000, "rounds": 4}
QUICK = {"model": "simple_cnn", "options": {"widths": [32, 64]}, "size": 64, "classes": 10, "rounds": 2}


def child(state: str, spec: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: the allocator put in `state`, then both models timed alternately."""
    import torch

    from benchmarks.latency_model import _removals_keeping
    from rlpruner import host_memory
    from rlpruner.graph import trace
    from rlpruner.models import create_model
    from rlpruner.pruner import prune_to_flops
    from rlpruner.surgery import prune_channels

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"]).eval()
    example = torch.randn(1, 3, spec["size"], spec["size"])
    if spec.get("kept"):  # the widths a latency table's walk chose: traced and cut as the benchmarks do
        graph = trace(model, example)
        sizes = {g.name: g.size for g in graph.prunable_groups()}
        pruned = prune_channels(model, graph, _removals_keeping(sizes, spec["kept"]), inplace=False).eval()
    else:
        pruned = prune_to_flops(copy.deepcopy(model), example, 0.5, method="uniform", round_to=8).eval()
    if state == "kept":
        host_memory.keep_freed_memory()
    with torch.inference_mode():
        if state == "after-b32":
            model(torch.randn(32, 3, spec["size"], spec["size"]))
        timings: dict[str, list[dict[str, float]]] = {"original": [], "pruned": []}
        for _ in range(spec["rounds"]):
            for name, m in (("original", model), ("pruned", pruned)):
                for _ in range(3):
                    m(example)  # warm-up
                # its own loop, not metrics.time_calls: that one sets the allocator, which is what is compared here
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                times = []
                for _ in range(20):
                    start = time.perf_counter()
                    m(example)
                    times.append(1000.0 * (time.perf_counter() - start))
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                timings[name].append({"ms": statistics.median(times), "faults_per_call": faults / 20})
    return {"state": state, "timings": timings}


def walk_widths() -> dict[str, int]:
    """The widths MobileNetV2's PyTorch 1-thread latency table points to at -50 % FLOPs (its table
    bound in benchmarks/results/latency_model.json)."""
    results = json.loads((RESULTS / "latency_model.json").read_text())
    row = next(r for r in results["rows"] if r["model"] == "mobilenetv2")
    return row["bounds"]["torch-cpu/1"]["kept"]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for state in STATES:
        done = subprocess.run([sys.executable, __file__, "--child", state, "--spec", json.dumps(spec)],
                              capture_output=True, text=True, check=True, timeout=900)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{STATES[state]}: " + ", ".join(
            f"{name} {statistics.median(t['ms'] for t in ts):.2f} ms" for name, ts in rows[-1]["timings"].items()),
            flush=True)
    return {"kind": "host_memory", "machine": machine(), "spec": spec, "rows": rows}


def render_markdown(results: dict[str, Any]) -> str:
    spec = results["spec"]
    pruned = ("cut to the widths its PyTorch 1-thread latency table points to at -50% FLOPs (the table bound of "
              "latency_model.json)" if spec.get("kept") else "pruned uniformly to -50% FLOPs (widths in multiples of 8)")
    lines = [f"{spec['model']} at {spec['size']}x{spec['size']}, random weights, and the same model {pruned}; "
             "PyTorch eager, batch 1, 1 thread; each state in a fresh "
             f"process, the two models timed alternately, {spec['rounds']} rounds of 20 calls (median per round; "
             f"the table gives the median of the rounds and their range). Machine: {results['machine']['cpu']}, "
             f"commit {results['machine']['commit']}. Command: `python benchmarks/host_memory.py`.", "",
             "| allocator | original | its page faults per call | pruned | its page faults per call | latency change |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        cells, medians = [], {}
        for name in ("original", "pruned"):
            ms = [t["ms"] for t in row["timings"][name]]
            medians[name] = statistics.median(ms)
            faults = statistics.median(t["faults_per_call"] for t in row["timings"][name])
            cells += [f"{medians[name]:.2f} ms ({min(ms):.2f}-{max(ms):.2f})", f"{faults:,.0f}"]
        lines.append(f"| {STATES[row['state']]} | " + " | ".join(cells)
                     + f" | {medians['pruned'] / medians['original'] - 1:+.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (a small model) under runs/bench-quick/")
    parser.add_argument("--child", choices=sorted(STATES), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.spec))))
        return 0
    _, json_path, md_path = study_files("host_memory", None, args.quick)
    results = run(QUICK if args.quick else {**FULL, "kept": walk_widths()})
    return write_study(json_path, md_path, results, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
