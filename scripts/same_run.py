"""Compare two compression run directories, ignoring wall-clock timings and measured latency.

    python scripts/same_run.py RUN_A RUN_B [--rel 1e-15]   # exit 0 when the runs are the same, 1 if not

Used to show that a refactor changes no result: the saved model's tensors and header must be
identical (the command line that made the run aside), and results.json and every per-step record
must match, numbers exactly or, with --rel, within that
relative difference (for a change in how a number is computed, e.g. c/n instead of (100·c/n)/100).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

TIMED = ("time", "timing", "latency")  # measured on a clock: differs run to run


def _results(path: Path) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()
                    if not k.startswith(TIMED) and not k.endswith("_s") and k != "command"}
        return value

    return strip(json.loads(path.read_text()))


def _steps(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMED)} for row in csv.DictReader(path.open())]


def _model(path: Path) -> bytes | tuple:
    """A saved model's bytes; for an rlpruner file, its tensors' bytes and its header without the
    command line that made the run (a resumed run's differs from an uninterrupted one's)."""
    data = path.read_bytes()
    if path.suffix != ".rlp":
        return data
    from safetensors.torch import load

    from rlpruner.io import read_header

    header = read_header(path)
    header.get("meta", {}).pop("command", None)
    tensors = load(data)
    return json.dumps(header, sort_keys=True), {k: t.numpy().tobytes() for k, t in sorted(tensors.items())}


def _same(x, y, rel: float) -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k], rel) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(u, v, rel) for u, v in zip(x, y))
    try:
        u, v = float(x), float(y)
    except (TypeError, ValueError):
        return x == y
    return x == y or math.isclose(u, v, rel_tol=rel, abs_tol=0.0)


def differences(a: Path, b: Path, rel: float = 0.0) -> list[str]:
    found = []
    for name in ("model.rlp", "model.safetensors"):
        if (a / name).exists() or (b / name).exists():
            if not ((a / name).exists() and (b / name).exists()) or _model(a / name) != _model(b / name):
                found.append(f"{name} differs")
    if not _same(_results(a / "results.json"), _results(b / "results.json"), rel):
        found.append("results.json differs (beyond timings)")
    steps_a, steps_b = _steps(a / "steps.csv"), _steps(b / "steps.csv")
    if len(steps_a) != len(steps_b):
        found.append(f"{len(steps_a)} vs {len(steps_b)} steps")
    found += [f"step {x['step']}: {k} {x[k]} vs {y.get(k)}" for x, y in zip(steps_a, steps_b) for k in x
              if not _same(x[k], y.get(k), rel)]
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--rel", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = parser.parse_args()
    diffs = differences(args.run_a, args.run_b, args.rel)
    exact = "" if args.rel == 0 else f", numbers within {args.rel:g} relative"
    print("\n".join(diffs[:20]) if diffs else f"same run (identical model tensors{exact}; timings and command line aside)")
    raise SystemExit(1 if diffs else 0)
