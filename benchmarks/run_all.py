"""The benchmark suite in one command: run every part, write its JSON results, generate the doc.

    python benchmarks/run_all.py --quick     # CI smoke run (a few minutes): runs/bench-quick/
    python benchmarks/run_all.py --full      # the real tables: benchmarks/results/ and docs/benchmarks.md
    python benchmarks/run_all.py --full --only latency sensitivity     # rerun some parts

Parts, in order: accuracy (trains the base models, then compresses them with every method; the
Torch-Pruning peer rows need `pip install -e '.[bench]'` and are skipped, with a log line, without it), latency,
sensitivity (both read the accuracy runs), engine (benchmarks/engine_speed.py), then the doc. The
accuracy part resumes: rerunning skips the runs already in accuracy.json (same settings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import settings as presets  # noqa: E402

PARTS = ("accuracy", "latency", "sensitivity", "engine")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="CI smoke run")
    mode.add_argument("--full", action="store_const", dest="mode", const="full", help="the real tables")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default: all)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default: benchmarks/results for --full, runs/bench-quick/results for --quick)")
    parser.add_argument("--doc", type=Path, default=None,
                        help="page to generate (default: docs/benchmarks.md for --full, next to the results for --quick)")
    parser.add_argument("--workers", type=int, default=None, help="parallel accuracy runs (default: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="accuracy seeds to run (default: the preset's); runs of other seeds already in the "
                             "results are kept")
    parser.add_argument("--models", nargs="+", default=None, metavar="LABEL",
                        help="accuracy: only these models of the preset (by label, e.g. resnet20)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="LABEL",
                        help="accuracy: only these datasets of the preset (e.g. digits synthetic-hard)")
    parser.add_argument("--targets", type=float, nargs="+", default=None, help="accuracy: only these FLOPs targets")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="accuracy: only these methods of the preset (e.g. rl)")
    parser.add_argument("--rl", nargs="+", default=[], metavar="FIELD=VALUE", type=_rl_option,
                        help="accuracy: a variant study, RL-Pruner with these RLConfig fields (or refit, "
                             "post_train_period) changed (e.g. judge=loss); needs its own --results folder, "
                             "the main tables use the defaults")
    parser.add_argument("--no-recovery-series", action="store_true",
                        help="accuracy: skip the series that runs every method without KD")
    return parser.parse_args(argv)


def _rl_option(text: str) -> tuple[str, object]:
    """'judge=loss' -> ('judge', 'loss'); the value read as JSON when it is a number, bool or null."""
    from dataclasses import fields

    from benchmarks.settings import RUN_OPTIONS
    from rlpruner.search import RLConfig

    name, sep, raw = text.partition("=")
    if not sep or name not in {f.name for f in fields(RLConfig)} | set(RUN_OPTIONS):
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE with FIELD an RLConfig field or one of "
                                         f"{', '.join(RUN_OPTIONS)}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if name in RUN_OPTIONS and not RUN_OPTIONS[name][0](value):
        raise argparse.ArgumentTypeError(f"{text!r}: in the benchmark {name} must be {RUN_OPTIONS[name][1]}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from benchmarks import accuracy, latency, render, sensitivity
    from rlpruner.io import atomic_write_json

    args = parse_args(argv)
    suite = presets.full() if args.mode == "full" else presets.quick()
    if args.workers is not None:
        suite = replace(suite, accuracy=replace(suite.accuracy, workers=args.workers))
    if args.seeds:
        suite = replace(suite, accuracy=replace(suite.accuracy, seeds=tuple(args.seeds)))
    suite = replace(suite, accuracy=select(suite.accuracy, args))
    quick_dir = presets.ROOT / "runs" / "bench-quick"
    results_dir = args.results or (presets.RESULTS if args.mode == "full" else quick_dir / "results")
    if args.rl and results_dir.resolve() in (presets.RESULTS.resolve(), (quick_dir / "results").resolve()):
        raise SystemExit("run_all: a variant (--rl) needs its own --results folder; the main results use the defaults")
    default_doc = presets.ROOT / "docs" / "benchmarks.md" if args.mode == "full" else quick_dir / "benchmarks.md"
    doc = args.doc or (results_dir / "benchmarks.md" if args.rl else default_doc)  # a variant's page: by its results
    work = presets.WORK / args.mode
    results_dir.mkdir(parents=True, exist_ok=True)
    suite_path = results_dir / "suite.json"
    record = _suite_record(suite_path, suite, argv)

    def timed(part: str, fn):
        start = time.perf_counter()
        print(f"== {part}", flush=True)
        value = fn()
        record["wall_seconds"][part] = time.perf_counter() - start
        record["commands"][part] = _with_command(record["commands"].get(part), record["command"])
        atomic_write_json(suite_path, record)
        return value

    log = lambda line: print(line, flush=True)  # noqa: E731
    acc_path = results_dir / "accuracy.json"
    if "accuracy" in args.only:
        timed("accuracy", lambda: accuracy.run(suite.accuracy, acc_path, work, log))
    runs = json.loads(acc_path.read_text()) if acc_path.exists() else {}
    if "latency" in args.only:
        timed("latency", lambda: latency.run(suite.latency, runs, results_dir / "latency.json", log))
    if "sensitivity" in args.only:
        # image size None: each dataset's own (DatasetSpec.image_size)
        timed("sensitivity", lambda: sensitivity.run(suite.sensitivity, runs, suite.accuracy.datasets, None,
                                                     results_dir / "sensitivity.json", log))
    if "engine" in args.only:
        from benchmarks import engine_speed

        timed("engine", lambda: engine_speed.main([*suite.engine_args, "--out", str(results_dir / "engine_speed.json")]))
    print(f"wrote {render.write_doc(results_dir, doc)} from {results_dir}")
    return 0


def select(settings: presets.AccuracySettings, args: argparse.Namespace) -> presets.AccuracySettings:
    """The preset narrowed to the models, datasets and targets asked for (a subset of the grid; the
    results file and the doc say exactly what ran)."""
    from dataclasses import replace

    def pick(items: tuple, wanted: list | None, label: object, what: str) -> tuple:
        if wanted is None:
            return items
        chosen = tuple(i for i in items if label(i) in wanted)
        missing = sorted(set(wanted) - {label(i) for i in chosen})
        if missing:
            raise SystemExit(f"run_all: unknown {what} {', '.join(map(str, missing))}; the preset has "
                             f"{', '.join(str(label(i)) for i in items)}")
        return chosen

    return replace(settings, methods=pick(settings.methods, args.methods, lambda m: m, "method"),
                   rl_options=tuple(args.rl),
                   models=pick(settings.models, args.models, lambda m: m.label, "model"),
                   datasets=pick(settings.datasets, args.datasets, lambda d: d.label, "dataset"),
                   targets=pick(settings.targets, args.targets, lambda t: t, "target"),
                   no_recovery=settings.no_recovery and not args.no_recovery_series)


def _suite_record(path: Path, suite: presets.Suite, argv: list[str] | None) -> dict:
    """What ran and how long each part took; kept across partial reruns of the same mode."""
    old = json.loads(path.read_text()) if path.exists() else {}
    record = {"mode": suite.mode, "command": "python benchmarks/run_all.py " + " ".join(argv or sys.argv[1:]),
              "settings": suite.to_dict(), "wall_seconds": {}, "commands": {}}
    if old.get("mode") == suite.mode:
        record["wall_seconds"] = old.get("wall_seconds", {})
        record["commands"] = old.get("commands", {})
    return record


def _with_command(earlier: str | list[str] | None, command: str) -> list[str]:
    """The distinct commands that wrote a part's results, oldest first: partial reruns add cells to the
    same results file, so the last command alone would not say what made it."""
    history = [earlier] if isinstance(earlier, str) else list(earlier or [])
    return history if command in history else [*history, command]


if __name__ == "__main__":
    sys.exit(main())
