"""Where a latency reduction is timed: in the process that pruned the model, or in a fresh one.

    python benchmarks/fresh_process.py           # writes benchmarks/results/fresh_process.{json,md}
    python benchmarks/fresh_process.py --quick   # a smoke run (a small model) under runs/bench-quick/

ResNet-20 at 16x16 (random weights), PyTorch eager, batch 1, 1 thread, pairs timed in turns for
`seconds` (`Runtime.time_ratio`). Three process states, each timing the same pair here and in a
fresh child process (`rlpruner.latency.fresh`), `trials` times each, alternating:
- **clean**: this process, just started, the original against its uniform -50 % FLOPs version;
- **after a search**: the original against the model a latency-target search (`compress`, a short
  KD budget, no timing of its own) has just pruned in this process;
- **fragmented heap**: the first pair again after this process allocated `blocks` tensors of random
  sizes and freed every other one.
The reductions measured here and in the fresh process say how much a run's own heap moves what it
measures.
"""
from __future__ import annotations

import copy
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import change_spread, machine, ratio_row, study_main  # noqa: E402

FULL = {"model": "resnet20", "options": {}, "size": 16, "classes": 20, "samples": 60, "trials": 3, "seconds": 4.0,
        "target": 0.17, "blocks": 200000}
QUICK = {"model": "simple_cnn", "options": {"widths": [8, 16]}, "size": 8, "classes": 3, "samples": 20, "trials": 1,
         "seconds": 0.3, "target": 0.03, "blocks": 2000}
STATES = {"clean": "clean process", "search": "after a search", "fragmented": "fragmented heap"}


def run(spec: dict[str, Any], log: Any = print) -> dict[str, Any]:
    import torch

    from rlpruner.data import get_dataset
    from rlpruner.distill import DistillConfig
    from rlpruner.latency import Turns, get_runtime
    from rlpruner.latency.fresh import time_ratio_fresh
    from rlpruner.models import create_model
    from rlpruner.pruner import prune_to_flops
    from rlpruner.search import CompressConfig, RLConfig, Target, compress

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"]).eval()
    example = torch.randn(1, 3, spec["size"], spec["size"])
    uniform = prune_to_flops(copy.deepcopy(model), example, 0.5, method="uniform", round_to=1).eval()
    runtime, turns = get_runtime("torch-cpu", 1), Turns(warmup=3, block=5, settle=1, seconds=spec["seconds"], least=16)
    rows: list[dict[str, Any]] = []

    def measure(state: str, first: Any, second: Any) -> None:
        for trial in range(spec["trials"]):
            for where in ("here", "fresh"):
                timer = runtime.time_ratio if where == "here" else (lambda *a: time_ratio_fresh(runtime, *a))
                start = time.perf_counter()
                ratio = timer(first, second, (example,), turns)
                rows.append({"state": state, "where": where, "trial": trial,
                             **ratio_row(ratio, time.perf_counter() - start)})
                log(f"{STATES[state]}, timed {where}: {-rows[-1]['reduction']:+.1%} "
                    f"({ratio.first_ms:.3f} vs {ratio.second_ms:.3f} ms)")

    measure("clean", model, uniform)
    splits = get_dataset("synthetic", image_size=spec["size"], num_classes=spec["classes"],
                         samples_per_class=spec["samples"], val_fraction=0.2)
    with tempfile.TemporaryDirectory() as folder:
        config = CompressConfig(target=Target("latency", spec["target"]), latency_checks=0, latency_fresh=False,
                                rl=RLConfig(prune_filter_ratio=0.05, round_to=1), kd=DistillConfig(epochs=1),
                                final_epochs=0, latency_cache=str(Path(folder) / "cache"), progress=False)
        searched = compress(model, splits, config, out_dir=Path(folder) / "run", evaluate_test=False)
    measure("search", model, searched.model.eval())
    draw = random.Random(0)
    kept = [torch.empty(draw.randint(16, 40000)) for _ in range(spec["blocks"])][::2]
    measure("fragmented", model, uniform)
    del kept
    return {"kind": "fresh_process", "machine": machine(), "spec": spec, "rows": rows,
            "searched_flops_reduction": searched.results["reached"]["flops"]}


def render_markdown(results: dict[str, Any]) -> str:
    import statistics

    spec, rows = results["spec"], results["rows"]
    lines = [f"{spec['model']} at {spec['size']}x{spec['size']}, random weights; PyTorch eager, batch 1, 1 thread; each "
             f"pair timed in turns for about {spec['seconds']:g} s, {spec['trials']} times here and in a fresh process, "
             "alternating. 'After a search': the model a latency-target search pruned in this process "
             f"(-{results['searched_flops_reduction']:.0%} FLOPs); 'fragmented heap': {spec['blocks']} tensors of "
             "random sizes allocated, every other one freed. Machine: "
             f"{results['machine']['cpu']}, commit {results['machine']['commit']}. "
             "Command: `python benchmarks/fresh_process.py`.", "",
             "| process state | timed | latency change: median | min | max | original: median ms | pruned: median ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for state, name in STATES.items():
        for where in ("here", "fresh"):
            these = [r for r in rows if r["state"] == state and r["where"] == where]
            if not these:
                continue
            lines.append(f"| {name} | {'in this process' if where == 'here' else 'in a fresh process'} | "
                         f"{change_spread([-r['reduction'] for r in these])} | "
                         f"{statistics.median(r['original_ms'] for r in these):.3f} | "
                         f"{statistics.median(r['pruned_ms'] for r in these):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return study_main("fresh_process", __doc__.splitlines()[0], argv, FULL, QUICK, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
