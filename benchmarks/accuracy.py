"""Accuracy at equal FLOPs: RL-Pruner vs uniform vs global magnitude vs Torch-Pruning's global
pruning, with and without KD recovery.

For every (model, dataset) one base model is trained once; every method then compresses that same
model to each FLOPs target, for each seed, with the same step budget and the same knowledge-
distillation budget. The loop methods run `rlpruner.compress(..., CompressConfig(method=...))` with
`kd_epochs` of KD after every step and no final fine-tune; the peers (benchmarks/peers.py) follow the
same FLOPs schedule and per-step KD. Every run then spends what is left of `kd_budget` (total KD
epochs) on one final KD fine-tune against the base model, here, and is evaluated once. A second
series runs every method with no recovery at all: the accuracy right after pruning, the direct
measure of the pruning distribution. Rows are appended to the results file as runs finish, so an
interrupted suite resumes where it stopped (a row is kept only while the settings are unchanged).
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from .settings import (ALLOW_IMPORTS, PEERS, RUN_OPTIONS, AccuracySettings, DatasetSpec, KDPlan, ModelSpec, kd_plan,
                       machine, peers_available, portable, resolve)

Row = dict[str, Any]


@dataclass(frozen=True)
class BaseJob:
    model: ModelSpec
    dataset: DatasetSpec
    settings: AccuracySettings
    path: Path


@dataclass(frozen=True)
class RunJob:
    base: BaseJob
    method: str
    target: float
    seed: int
    recovery: bool
    out_dir: Path

    @property
    def key(self) -> tuple:
        return run_key(self.base.model.label, self.base.dataset.label, self.method, self.target, self.seed,
                       self.recovery)


def run_key(model: str, dataset: str, method: str, target: float, seed: int, recovery: bool) -> tuple:
    return model, dataset, method, round(float(target), 4), int(seed), bool(recovery)


def row_key(row: Row) -> tuple:
    return run_key(row["model"], row["dataset"], row["method"], row["target"], row["seed"], row["recovery"])


# --------------------------------------------------------------------------------------------------
# Work done in the worker processes (one torch thread each)
# --------------------------------------------------------------------------------------------------

def train_base(job: BaseJob) -> Row:
    """Train the base model of (model, dataset) once; reuse a checkpoint trained with the same settings."""
    from rlpruner import io
    from rlpruner.train import TrainConfig, train

    torch.set_num_threads(1)
    splits = job.dataset.load()
    wanted = _base_meta(job)
    if job.path.exists():
        model, meta = io.load_checkpoint(job.path, allow_imports=ALLOW_IMPORTS)
        if meta.get("bench") == wanted:
            return _base_row(job, model, splits, meta["train_seconds"], meta.get("trained_on"))
    torch.manual_seed(0)
    model = job.model.create(splits.num_classes, splits.in_channels)
    start = time.perf_counter()
    train(model, splits, TrainConfig(epochs=job.settings.train_epochs, seed=0, progress=False))
    seconds = time.perf_counter() - start
    trained_on = {k: v for k, v in machine().items() if k in ("cpu", "commit", "date")}
    io.save(model.eval(), job.path, meta={"bench": wanted, "train_seconds": seconds, "trained_on": trained_on})
    return _base_row(job, model, splits, seconds, trained_on)


def _base_meta(job: BaseJob) -> dict[str, Any]:
    return {"model": asdict(job.model), "dataset": asdict(job.dataset), "image_size": job.dataset.image_size,
            "epochs": job.settings.train_epochs}


def _base_row(job: BaseJob, model: torch.nn.Module, splits: Any, seconds: float,
              trained_on: dict[str, Any] | None) -> Row:
    """The base model's figures, and where it was trained: a cell's runs start from it, so a grid
    resumed on another machine says which cells are whose (None: a checkpoint from before that)."""
    import rlpruner
    from rlpruner.train import evaluate

    params, flops = rlpruner.trace(model, splits.example_inputs()).count()
    return {"model": job.model.label, "dataset": job.dataset.label, "family": job.model.family,
            "val_acc": evaluate(model, _loader(splits.val))["top1"],
            "test_acc": evaluate(model, _loader(splits.test))["top1"],
            "params": params, "flops": flops, "train_seconds": seconds, "checkpoint": portable(job.path),
            "trained_on": trained_on}


def _loader(dataset: Any) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=256)


def compress_config(settings: AccuracySettings, method: str, target: float, seed: int, recovery: bool) -> Any:
    """The same loop and budget for every method; `recovery=False` turns all KD off. No final
    fine-tune: `finish` spends the rest of the KD budget, the same way for every method."""
    from rlpruner.distill import DistillConfig
    from rlpruner.search import CompressConfig, RLConfig, Target

    options = dict(settings.rl_options)
    run = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
    run["post_train_period"] = settings.post_train_period if recovery else 0
    return CompressConfig(
        method=method, target=Target("flops", target), seed=seed, progress=False,
        rl=RLConfig(**{"prune_filter_ratio": settings.prune_filter_ratio,  # a variant may set any of these
                       **{k: v for k, v in (("lr_epoch", settings.lr_epoch), ("sample_num", settings.sample_num))
                          if v is not None}, **options}),
        kd=DistillConfig(epochs=settings.kd_epochs, lr=settings.kd_lr), final_epochs=0, **run)


def trajectory(records: list) -> list[list[float]]:
    """Per step: [FLOPs reduction, val top-1 right after the step's pruning, val top-1 after its recovery]."""
    return [[r.flops_reduction, r.val_acc_pruned, r.val_acc] for r in records]


def run_one(job: RunJob) -> Row:
    """A loop method through `rlpruner.search.compress`, a peer through benchmarks/peers.py."""
    if job.method in PEERS:
        from .peers import run_peer

        return run_peer(job)
    return run_compress(job)


def run_compress(job: RunJob, config: Any = None) -> Row:
    """One loop run with `compress_config`'s settings (or `config`), then `finish`."""
    from rlpruner import io
    from rlpruner.search import compress

    torch.set_num_threads(1)
    settings = job.base.settings
    splits = job.base.dataset.load()
    base = io.load(job.base.path, allow_imports=ALLOW_IMPORTS)
    config = config or compress_config(settings, job.method, job.target, job.seed, job.recovery)
    start = time.perf_counter()
    result = compress(base, splits, config, out_dir=job.out_dir, overwrite=True, evaluate_test=False)
    r = result.results
    plan = kd_plan(settings, r["steps"], job.recovery)
    final = finish(result.model, base, splits, settings, plan, job.seed, job.out_dir)
    return {"model": job.base.model.label, "dataset": job.base.dataset.label, "method": job.method,
            "target": job.target, "seed": job.seed, "recovery": job.recovery, **final,
            "base_val_acc": r["base"]["val_acc"], "flops_reduction": r["reached"]["flops"],
            "params_reduction": r["reached"]["params"], **plan_fields(plan),
            "seconds": time.perf_counter() - start, "trajectory": trajectory(result.records),
            "widths": r["widths"], "run_dir": portable(job.out_dir)}


def plan_fields(plan: KDPlan) -> Row:
    """What a row records of its KD budget: `kd_epochs` is what the run actually used."""
    return {"steps": plan.steps, "kd_epochs": plan.used, "kd_final_epochs": plan.final, "kd_budget": plan.budget,
            "over_budget": plan.over_budget}


# --------------------------------------------------------------------------------------------------
# The final fine-tune and measurements, shared by loop methods and peers
# --------------------------------------------------------------------------------------------------

KD_STEP, KD_FINAL = 2, 3  # purposes mixed into the seeds of the KD shuffles (as in rlpruner.search)


def kd(student: nn.Module, teacher: nn.Module, splits: Any, settings: AccuracySettings, epochs: int, seed: int,
       *keys: int, teacher_val: float | None = None) -> Any:
    """`epochs` of KD at the benchmark's lr, with a training loader and augmentation seeded by (seed, keys)."""
    from rlpruner.data import make_loaders
    from rlpruner.distill import DistillConfig, distill
    from rlpruner.search.context import derived_seed

    config = DistillConfig(epochs=epochs, lr=settings.kd_lr, progress=False)
    kd_seed = derived_seed(seed, *keys)
    with torch.random.fork_rng():
        torch.manual_seed(kd_seed)
        loaders = make_loaders(splits, config.batch_size, augment=config.augment, seed=kd_seed)
        return distill(student, teacher, SimpleNamespace(train=loaders.train, val=loaders.val), config,
                       teacher_val=teacher_val)


def finish(model: nn.Module, base: nn.Module, splits: Any, settings: AccuracySettings, plan: KDPlan, seed: int,
           out_dir: Path) -> Row:
    """The rest of the KD budget as one fine-tune against the base model, then the only test-split
    evaluation of the run; the final model replaces `out_dir`/model.rlp (latency and sensitivity read it)."""
    from rlpruner import io
    from rlpruner.train import evaluate

    if plan.final:
        kd(model, base, splits, settings, plan.final, seed, plan.steps, KD_FINAL)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    io.save(model, out_dir / "model.rlp", meta={"input_shape": list(splits.example_inputs().shape[1:]),
                                                  "kd_epochs": plan.used})
    return {"val_acc": evaluate(model, _loader(splits.val))["top1"],
            "test_acc": evaluate(model, _loader(splits.test))["top1"],
            "base_test_acc": evaluate(base, _loader(splits.test))["top1"]}


# --------------------------------------------------------------------------------------------------
# Orchestration in the main process
# --------------------------------------------------------------------------------------------------

def base_jobs(settings: AccuracySettings, work: Path) -> list[BaseJob]:
    return [BaseJob(m, d, settings, work / "base" / f"{m.label}-{d.label}.rlp")
            for m in settings.models for d in settings.datasets]


def run_jobs(settings: AccuracySettings, bases: list[BaseJob], work: Path) -> list[RunJob]:
    """Seed by seed (a suite stopped early still has whole tables, with fewer seeds); within a seed the
    recovery runs (the headline table) first, then the no-recovery series."""
    jobs, runs = [], work / ("runs-" + settings.variant if settings.variant else "runs")  # one base for all
    for seed in settings.seeds:
        for recovery in (True, False) if settings.no_recovery else (True,):
            for target in settings.targets:
                for base in bases:
                    for method in settings.methods:
                        jobs.append(RunJob(base, method, target, seed, recovery,
                                           runs / run_name(base, method, target, seed, recovery)))
    return jobs


def run_name(base: BaseJob, method: str, target: float, seed: int, recovery: bool = True) -> str:
    """The folder name of one run, e.g. resnet20-digits-rl-50-s0 (-norec without recovery)."""
    return (f"{base.model.label}-{base.dataset.label}-{method}-{int(round(target * 100))}-s{seed}"
            f"{'' if recovery else '-norec'}")


def run(settings: AccuracySettings, results_path: Path, work: Path, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the accuracy benchmark; returns the results written to `results_path`."""
    from rlpruner.io import atomic_write_json

    settings = _available(settings, log)
    results = _resume(results_path, settings)
    bases = base_jobs(settings, work)
    with _pool(settings.workers) as pool:
        trained = _gather(pool, train_base, bases, lambda row: log(
            f"base {row['model']:>12s} on {row['dataset']:<14s} val {row['val_acc']:.2%} test {row['test_acc']:.2%} "
            f"({row['train_seconds']:.0f} s)"))
        results["base"] = merge_bases(results["base"], trained)
        atomic_write_json(results_path, results)
        done = {row_key(r) for r in results["runs"]}
        todo = [j for j in run_jobs(settings, bases, work) if j.key not in done]
        log(f"accuracy: {len(done)} runs already in {results_path.name}, {len(todo)} to go")
        start = time.perf_counter()

        def keep(row: Row) -> None:
            results["runs"].append(row)
            atomic_write_json(results_path, results)
            left = len(todo) - _count(results["runs"], done)
            eta = (time.perf_counter() - start) / max(len(todo) - left, 1) * left
            over = " OVER the KD budget" if row.get("over_budget") else ""
            log(f"{row['model']:>12s} {row['dataset']:<14s} {row['method']:<9s} -{row['target']:.0%} seed "
                f"{row['seed']} {'KD' if row['recovery'] else 'no KD'}: test {row['test_acc']:.2%} at FLOPs "
                f"-{row['flops_reduction']:.1%} params -{row['params_reduction']:.1%}, {row['steps']} steps, "
                f"{row['kd_epochs']} KD epochs{over} ({row['seconds']:.0f} s; {left} left, ~{eta / 60:.0f} min)")

        _gather(pool, run_one, todo, keep)
    return results


def merge_bases(kept: list[Row], trained: list[Row]) -> list[Row]:
    """The base rows of the file with this selection's replacing theirs: a run narrowed to some models
    or datasets keeps the other bases (the latency part and the doc read them)."""
    fresh = {(r["model"], r["dataset"]) for r in trained}
    return [r for r in kept if (r["model"], r["dataset"]) not in fresh] + trained


def _available(settings: AccuracySettings, log: Callable[[str], None]) -> AccuracySettings:
    """The settings without the peer methods when Torch-Pruning is not installed: their rows are
    skipped (and said so), never made up."""
    from dataclasses import replace

    missing = [m for m in settings.methods if m in PEERS] if not peers_available() else []
    if missing:
        log(f"accuracy: torch_pruning is not installed: skipping the peer rows {', '.join(missing)} "
            "(pip install -e '.[bench]' to run them)")
    return replace(settings, methods=tuple(m for m in settings.methods if m not in missing))


def _count(rows: list[Row], done: set) -> int:
    return sum(1 for r in rows if row_key(r) not in done)


def _resume(path: Path, settings: AccuracySettings) -> dict:
    """The results so far when they were made with the same settings (the seeds and the number of
    workers aside: more seeds add rows, fewer skip some), else a fresh results record."""
    import json

    wanted = json.loads(json.dumps(asdict(settings)))
    if path.exists():
        old = json.loads(path.read_text())
        if _comparable(old.get("settings", {})) == _comparable(wanted):
            kept = old["settings"]
            kept["seeds"] = sorted(set(kept["seeds"]) | set(wanted["seeds"]))
            kept["targets"] = sorted(set(kept["targets"]) | set(wanted["targets"]))
            for key in ("methods", "models", "datasets"):  # by label for models and datasets
                merged = {_label(item): item for item in [*kept[key], *wanted[key]]}
                kept[key] = list(merged.values())
            kept["no_recovery"] = bool(kept.get("no_recovery")) or wanted["no_recovery"]
            for row in old["runs"]:  # rows written by an earlier version of this script
                row["run_dir"] = portable(row["run_dir"])
                row.pop("first_step_pruned_val", None)
                if "trajectory" not in row:
                    row["trajectory"] = _logged_trajectory(resolve(row["run_dir"]))
            return old
    return {"kind": "accuracy", "machine": machine(), "settings": wanted, "base": [], "runs": []}


def _logged_trajectory(run_dir: Path) -> list[list[float]] | None:
    from rlpruner.report import read_logs

    records = read_logs(run_dir)
    return trajectory(records) if records else None


def _comparable(settings: dict) -> dict:
    """Settings that change what a row means. Seeds, methods, models, datasets, targets and whether
    the no-recovery series runs only add or skip rows (each row names its own)."""
    rows = ("seeds", "methods", "workers", "models", "datasets", "targets", "no_recovery")
    return {"rl_options": [], **{k: v for k, v in settings.items() if k not in rows}}  # older files: no variant


def _label(item: Any) -> str:
    return item["label"] if isinstance(item, dict) else str(item)


def _pool(workers: int) -> Any:
    """A process pool, or None: run in this process (workers=1: no start-up cost, easier to debug)."""
    if workers <= 1:
        return contextlib.nullcontext()
    # spawn: a fresh interpreter per worker, never a fork of a process whose torch threads are running
    return futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _gather(pool: Any, fn: Callable, jobs: list, on_result: Callable[[Row], None]) -> list[Row]:
    """Run `fn` over `jobs`; results in job order, `on_result` called as each one finishes.

    A failing run stops the suite: its error is a bug to fix, not a result to tabulate."""
    if pool is None:
        rows = []
        for job in jobs:
            rows.append(fn(job))
            on_result(rows[-1])
        return rows
    pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
    ordered: list[Row | None] = [None] * len(jobs)
    for future in futures.as_completed(pending):
        ordered[pending[future]] = future.result()
        on_result(ordered[pending[future]])
    return ordered  # type: ignore[return-value]
