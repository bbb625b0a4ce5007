"""Compare two compression run directories, ignoring wall-clock timings and measured latency.

    python scripts/same_run.py RUN_A RUN_B      # exit 0 when the runs are the same, 1 with the differences

Used to show that a refactor changes no result: the saved model bytes, results.json and every
per-step record must match.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

TIMED = ("time", "timing", "latency")  # measured on a clock: differs run to run


def _results(path: Path) -> dict:
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.startswith(TIMED) and not k.endswith("_s")}
        return value

    return strip(json.loads(path.read_text()))


def _steps(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith(TIMED)} for row in csv.DictReader(path.open())]


def differences(a: Path, b: Path) -> list[str]:
    found = []
    for name in ("model.rlp", "model.safetensors"):
        if (a / name).exists() or (b / name).exists():
            if not ((a / name).exists() and (b / name).exists()) or (a / name).read_bytes() != (b / name).read_bytes():
                found.append(f"{name} differs")
    if _results(a / "results.json") != _results(b / "results.json"):
        found.append("results.json differs (beyond timings)")
    steps_a, steps_b = _steps(a / "steps.csv"), _steps(b / "steps.csv")
    if len(steps_a) != len(steps_b):
        found.append(f"{len(steps_a)} vs {len(steps_b)} steps")
    found += [f"step {x['step']}: {k} {x[k]} vs {y.get(k)}" for x, y in zip(steps_a, steps_b) for k in x if x[k] != y.get(k)]
    return found


if __name__ == "__main__":
    diffs = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diffs[:20]) if diffs else "same run (timings aside)")
    sys.exit(1 if diffs else 0)
