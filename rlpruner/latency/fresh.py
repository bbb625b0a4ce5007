"""Two models timed against each other in a fresh process, as a deployment would run them.

A long run leaves its process in a state a deployed model never sees (a heap shaped by training,
candidate models, data), and on the CPU a small model's calls pay for it: the extra time is about
the same per call for the original and the pruned model, so every measured reduction shrinks. Right
after a latency-target search, ResNet-20's pruned model measured 15.5-17.9 % faster than the
original in the search's process and 21-24 % in a fresh one, the same two models; a heap fragmented
on purpose made both 2.4 times slower (`python benchmarks/fresh_process.py`). Which part of the
process state costs the time was not pinned down. So a comparison that steers the search, or that
the report prints, is timed in a child process that loads the two models from files written for it.

A model that cannot be saved (no architecture spec: a model object built outside rlpruner) or
rebuilt there raises `FreshProcessUnavailable`, and the caller times in its own process instead.

    python -m rlpruner.latency.fresh FOLDER     # the child's side: FOLDER holds the job
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..errors import RLPrunerError
from .runtimes import Ratio, Runtime, Turns, get_runtime

CHILD_START_S = 120.0  # on top of the timing itself: interpreter, torch and the two models


class FreshProcessUnavailable(RLPrunerError):
    """The models could not be timed in a fresh process (the message says why)."""


def time_ratio_fresh(runtime: Runtime, first: nn.Module, second: nn.Module, inputs: tuple[torch.Tensor, ...],
                     turns: Turns, confidence: float = 0.95) -> Ratio:
    """`Runtime.time_ratio` of the two models, run in a fresh Python process on the same runtime."""
    from safetensors.torch import save_file

    from .. import io
    from ..models.registry import SPEC_ATTR

    with tempfile.TemporaryDirectory(prefix="rlpruner-timing-") as name:
        folder = Path(name)
        allow = []
        for label, module in (("first", first), ("second", second)):
            spec = getattr(module, SPEC_ATTR, None)
            if spec is None:
                raise FreshProcessUnavailable("the model has no architecture spec to rebuild it from")
            if spec.get("source") == "import":
                allow.append(spec["name"])  # written here, a moment ago: the class the run already imported
            try:
                io.save(module, folder / f"{label}.rlp")
            except RLPrunerError as exc:
                raise FreshProcessUnavailable(f"the model cannot be saved ({exc})") from exc
        save_file({f"x{i}": t.detach().cpu().contiguous() for i, t in enumerate(inputs)}, str(folder / "inputs.safetensors"))
        job = {"runtime": runtime.name, "threads": runtime.threads, "turns": asdict(turns), "confidence": confidence,
               "allow": allow, "inputs": len(inputs)}
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        limit = CHILD_START_S + 4.0 * (turns.seconds or 60.0)
        try:
            done = subprocess.run([sys.executable, "-m", "rlpruner.latency.fresh", str(folder)], env=env,
                                  capture_output=True, text=True, timeout=limit)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FreshProcessUnavailable(f"the child process did not finish ({exc})") from exc
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise FreshProcessUnavailable(f"the child process failed ({lines[-1] if lines else done.returncode})")
        return Ratio(**json.loads((folder / "ratio.json").read_text(encoding="utf-8")))


def _child(folder: Path) -> None:
    from safetensors.torch import load_file

    from .. import io

    job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
    first, second = (io.load(folder / f"{label}.rlp", allow_imports=job["allow"]).eval() for label in ("first", "second"))
    tensors = load_file(str(folder / "inputs.safetensors"))
    inputs = tuple(tensors[f"x{i}"] for i in range(job["inputs"]))
    runtime = get_runtime(job["runtime"], job["threads"])
    ratio = runtime.time_ratio(first, second, inputs, Turns(**job["turns"]), job["confidence"])
    (folder / "ratio.json").write_text(json.dumps(asdict(ratio)), encoding="utf-8")


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
