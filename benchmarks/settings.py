"""What the benchmark suite runs, as frozen dataclasses: the `quick` (CI smoke) and `full` presets.

Everything is sized for a 2-core CPU: small inputs (the image size is the dataset's), narrow models,
one KD epoch per pruning step and the same total KD budget for every method. The settings are stored
in every results file, so the generated doc states exactly what ran.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "runs" / "bench"          # base checkpoints and compression runs (not committed)
METHODS = ("rl", "uniform", "global")        # the RL-Pruner loop with each allocator (rlpruner.search.compress)
PEERS = ("tp-l2", "tp-taylor")              # Torch-Pruning's global pruning (benchmarks/peers.py)
# CompressConfig fields a variant study may change besides RLConfig's: the search-then-refit protocol
# (post_train_period 0 moves every per-step KD epoch into the final fine-tune, N > 1 recovers after every N
# steps, e.g. with N-times-finer steps; the KD budget is unchanged)
RUN_OPTIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "refit": (lambda v: isinstance(v, bool), "true or false"),
    "post_train_period": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                          "an integer >= 0 (a recovery after every this many steps; 0: none until the end)"),
}


def peers_available() -> bool:
    """Whether Torch-Pruning is installed (`pip install -e .[bench]`): its rows are run only then."""
    return importlib.util.find_spec("torch_pruning") is not None


def with_peers() -> tuple[str, ...]:
    return METHODS + PEERS if peers_available() else METHODS


@dataclass(frozen=True)
class ModelSpec:
    label: str                            # short name in tables: "resnet20", "mobilenetv3s", ...
    name: str                             # zoo name or import path for rlpruner.models.create_model
    options: dict[str, Any] = field(default_factory=dict)
    family: str = ""                      # what structure it stands for (residual, depthwise + SE, concat)

    def create(self, num_classes: int, in_channels: int):
        from rlpruner.models import create_model

        return create_model(self.name, num_classes=num_classes, in_channels=in_channels, **self.options)


@dataclass(frozen=True)
class DatasetSpec:
    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 16                  # inputs are resized to this square

    def load(self, image_size: int | None = None):
        """The splits at `image_size`, by default the dataset's own."""
        from rlpruner.data import get_dataset

        return get_dataset(self.name, image_size=image_size or self.image_size, **self.options)


RESNET = ModelSpec("resnet20", "resnet20", family="residual")
RESNET56 = ModelSpec("resnet56", "resnet56", family="residual")
MOBILENET = ModelSpec("mobilenetv3s", "mobilenetv3_small", {"width_mult": 0.5}, family="depthwise + SE")
DENSENET = ModelSpec("densenet", "rlpruner.models.densenet:DenseNet", {"block_sizes": [3, 3, 3], "growth": 12},
                     family="concat")
# vgg.py has no width option: the 512-wide hidden layer of the head is narrowed instead (the convs stay)
VGG = ModelSpec("vgg11", "vgg11_bn", {"hidden": 128}, family="plain")
DIGITS = DatasetSpec("digits", "digits", image_size=32)
DIGITS_16 = DatasetSpec("digits", "digits", image_size=16)
SYNTHETIC = DatasetSpec("synthetic-hard", "synthetic", {"difficulty": 0.9, "num_classes": 20,
                                                        "samples_per_class": 100}, image_size=16)
ALLOW_IMPORTS = ("rlpruner.models",)  # DenseNet is built from the zoo's class by import path


@dataclass(frozen=True)
class AccuracySettings:
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    targets: tuple[float, ...]            # FLOPs reductions
    seeds: tuple[int, ...]
    methods: tuple[str, ...] = METHODS    # loop methods (METHODS) and peers (PEERS)
    train_epochs: int = 15
    # RL-Pruner runs with its defaults (RLConfig()) but for the step size: 5% instead of 1% so that one
    # KD epoch per step fits the KD budget even at -90% FLOPs (a user with that budget does the same)
    prune_filter_ratio: float = 0.05
    lr_epoch: int | None = None           # None: RLConfig's default
    sample_num: int | None = None
    kd_epochs: int = 1                    # per step
    kd_lr: float = 0.01                   # the library default 1e-3 barely moves in ~20 SGD steps per epoch
    kd_budget: int = 20                   # KD epochs per run in all: the per-step ones, the rest as a final fine-tune
    no_recovery: bool = True              # also run every method with no KD at all
    workers: int = 2                      # parallel processes, one thread each
    rl_options: tuple[tuple[str, Any], ...] = ()  # RLConfig fields (or RUN_OPTIONS) set away from the defaults:
                                          # a variant study, written to its own results folder (the main tables
                                          # use none)

    @property
    def post_train_period(self) -> int:
        """Recovery after every this many steps: 1 (the main tables), 0 (none until the final fine-tune) or
        N (a variant's choice, e.g. with N-times-finer steps)."""
        return int(dict(self.rl_options).get("post_train_period", 1))

    @property
    def variant(self) -> str:
        """'' for the defaults, else a folder name for the variant's runs, e.g. 'judge-loss'."""
        return "_".join(f"{k}-{v}" for k, v in self.rl_options)


@dataclass(frozen=True)
class KDPlan:
    """How a run's KD budget was spent: `recoveries` of its `steps` (one every `post_train_period` steps)
    took `per_step` epochs each, then `final` epochs."""

    steps: int
    recoveries: int
    per_step: int
    final: int
    budget: int

    @property
    def used(self) -> int:
        return self.recoveries * self.per_step + self.final

    @property
    def over_budget(self) -> bool:
        return self.used > self.budget


def kd_plan(settings: AccuracySettings, steps: int, recovery: bool = True) -> KDPlan:
    """The final fine-tune that fills a run's KD budget after its per-step recoveries. Runs whose
    steps alone exceed the budget get no final epochs and are marked over budget, never trimmed."""
    if not recovery:
        return KDPlan(steps, 0, 0, 0, 0)
    recoveries = sum(recovery_due(settings, step) for step in range(1, steps + 1))
    per_step = settings.kd_epochs if recoveries else 0
    return KDPlan(steps, recoveries, per_step, max(settings.kd_budget - recoveries * per_step, 0), settings.kd_budget)


def recovery_due(settings: AccuracySettings, step: int) -> bool:
    """Whether step `step` (from 1) of a run with recovery ends with KD: the loop's own rule, which the
    peers follow too."""
    from rlpruner.search.step import recovery_due as loop_rule

    return loop_rule(settings.post_train_period, settings.kd_epochs, step)


@dataclass(frozen=True)
class LatencySettings:
    models: tuple[ModelSpec, ...]         # one-shot pruned at `size` for the round_to comparison
    size: int = 32
    targets: tuple[float, ...] = (0.25, 0.5, 0.75)
    round_to: tuple[int, ...] = (1, 8)
    batches: tuple[int, ...] = (1, 64)
    repeats: int = 30
    threads: int = 1


@dataclass(frozen=True)
class SensitivitySettings:
    fraction: float = 0.1                 # of one group's units, pruned alone
    importance: str = "l2"
    target: float = 0.5                   # "after some pruning": the RL model at this FLOPs reduction


@dataclass(frozen=True)
class Suite:
    mode: str
    accuracy: AccuracySettings
    latency: LatencySettings
    sensitivity: SensitivitySettings
    engine_args: tuple[str, ...]          # arguments of benchmarks/engine_speed.py

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def quick() -> Suite:
    """A couple of minutes: one model, one dataset (16x16), one seed, the 50% target."""
    return Suite(
        mode="quick",
        accuracy=AccuracySettings(models=(ModelSpec("resnet8", "resnet8", family="residual"),),
                                  datasets=(DIGITS_16,), targets=(0.5,), seeds=(0,), methods=with_peers(),
                                  train_epochs=4, lr_epoch=2, sample_num=4, kd_budget=8, workers=1),
        latency=LatencySettings(models=(RESNET,), targets=(0.5,), repeats=5),
        sensitivity=SensitivitySettings(),
        engine_args=("--models", "resnet20", "mobilenetv2", "--sizes", "32", "--repeats", "1"))


def full() -> Suite:
    return Suite(
        mode="full",
        accuracy=AccuracySettings(models=(RESNET, RESNET56, MOBILENET, DENSENET, VGG), datasets=(DIGITS, SYNTHETIC),
                                  targets=(0.5, 0.75, 0.9), seeds=(0, 1, 2), methods=with_peers(), kd_budget=20),
        latency=LatencySettings(models=(RESNET, ModelSpec("mobilenetv2", "mobilenetv2", family="depthwise"),
                                        DENSENET)),
        sensitivity=SensitivitySettings(),
        engine_args=())  # engine_speed.py's own defaults: every zoo model at 32x32 and 224x224


def study_files(name: str, results: Path | None, quick: bool) -> tuple[Path, Path, Path]:
    """(folder, NAME.json, NAME.md) of a study script: `results`, else benchmarks/results, or
    runs/bench-quick/results for a --quick smoke run."""
    folder = results or (ROOT / "runs" / "bench-quick" / "results" if quick else RESULTS)
    return folder, folder / f"{name}.json", folder / f"{name}.md"


def render_only(json_path: Path, md_path: Path, render: Any) -> int:
    """A study's --render: regenerate its page from its results file alone."""
    from rlpruner.io import atomic_write_text

    atomic_write_text(md_path, render(json.loads(json_path.read_text())))
    print(f"wrote {md_path}")
    return 0


def write_study(json_path: Path, md_path: Path, results: dict[str, Any], render: Any) -> int:
    """A study's results file and its page, each written whole."""
    from rlpruner.io import atomic_write_json, atomic_write_text

    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render(results) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 0


def study_main(name: str, description: str, argv: list[str] | None, full: Any, quick: Any, run: Any,
               render: Any) -> int:
    """The command line of a one-spec study (benchmarks/NAME.py): run `full`, or `quick` with --quick,
    and write its results file and page."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run (a small model) under runs/bench-quick/")
    args = parser.parse_args(argv)
    _, json_path, md_path = study_files(name, None, args.quick)
    return write_study(json_path, md_path, run(quick if args.quick else full), render)


def ratio_row(ratio: Any, seconds: float) -> dict[str, Any]:
    """A study's row of one pair timed in turns (`rlpruner.latency.Ratio`): both latencies, the
    reduction with its interval, the turns and how long it took."""
    reduction, low, high = ratio.reductions
    return {"original_ms": ratio.first_ms, "pruned_ms": ratio.second_ms, "reduction": reduction, "low": low,
            "high": high, "turns": ratio.turns, "seconds": seconds}


def change_spread(changes: list[float]) -> str:
    """Table cells of latency changes: "median | min | max", signed percentages."""
    import statistics

    return f"{statistics.median(changes):+.1%} | {min(changes):+.1%} | {max(changes):+.1%}"


def portable(path: str | Path) -> str:
    """A path as stored in results files: relative to the repository when inside it."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def resolve(path: str | Path) -> Path:
    """The inverse of `portable`."""
    return Path(path) if Path(path).is_absolute() else ROOT / path


def machine() -> dict[str, Any]:
    """Where and when the numbers were measured."""
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(terse=True),
            "commit": _git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The short commit, with '+changes' when the working tree's code or docs differ from it (results
    files do not count: a benchmark rewrites its own after each model, and its next rows were run by
    the same code)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if changed else "")) or None
