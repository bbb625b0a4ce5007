"""Run preparation: everything fixed for a whole compression run, built complete in one place.

`prepare` draws the run's fixed batches (data.py), checks the task (forward, loss, how outputs are
distilled) on one of them, traces the original model, measures it (the base), turns the target into
an absolute goal (refusing an unreachable one before any work), sizes the step budget, estimates the
number of steps (for the epsilon schedule) and picks the allocator. The result, a `Context`, never
changes during the run.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import importance
from ..allocation import Allocator, get_allocator, policy
from ..allocation.budget import smallest_passing
from ..distill import OutputKD, output_kd
from ..distributed import World
from ..errors import ConfigError, PruningError
from ..graph import DependencyGraph, trace
from ..isolate import breaking_at_half, frozen_reasons, warn_frozen
from ..precision import Precision
from ..latency import LatencyTable, Ratio, Runtime, TorchCPU
from ..task import Task, TaskError
from ..train import resolve_device
from .config import AUTO, CompressConfig
from .data import Data, as_source, prepare_data
from .latency import measure_pair_ms, measure_ratio, runtime_for, table_for, with_aligned_round_to, with_round_to
from .targets import Measure, TargetKind

IMPORTANCE, KD, FINAL = 1, 2, 3  # purposes mixed into derived seeds
OVERHEAD_KEYS = ("trace", "importance", "policy", "surgery")  # the search's work besides evaluation


@dataclass
class Timer:
    """Wall seconds per activity. 'eval': candidate forward passes (and latency measurements); the
    search overhead: 'trace', 'importance', 'policy' (sampling, allocation, updates), 'surgery'
    (structural copies and analytic counts), 'probe' (the candidates' KD steps); then 'recovery' and
    'checkpoint'."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


@dataclass(frozen=True)
class Context:
    config: CompressConfig
    device: torch.device
    task: Task                             # forward, metric and loss: what the model is for
    distiller: OutputKD                    # how recovery distils the model's outputs
    data: Data
    original: nn.Module
    fingerprint: str
    names: tuple[str, ...]                 # prunable groups of the original model, in model order
    original_sizes: dict[str, int]
    base: dict[str, Any]                   # params, flops, val_acc, latency_ms
    target: TargetKind
    goal: float                            # the most the final model may keep, in the target's unit
    step_budget: int                       # channels per step (the paper's prune_filter_ratio)
    step_cost: float                       # what a step removes in the target's proxy unit (equal cost)
    planned_steps: int
    allocator: Allocator
    out_dir: Path
    timer: Timer
    log: Callable[[str], None]
    frozen: dict[str, str] = field(default_factory=dict)  # groups whose pruning breaks the forward: why
    precision: Precision = field(default_factory=Precision)  # autocast and memory format (in task's forward)
    world: World = field(default_factory=World)           # the run's processes (rlpruner.distributed)
    runtime: Runtime = field(default_factory=TorchCPU)    # where latency is measured (rlpruner.latency)
    latency_table: LatencyTable | None = None             # predicts candidates' latency when the run optimises it

    def predicted_ms(self, graph: DependencyGraph, removals: Any = None, *, slices: Any = None) -> float | None:
        """The latency table's prediction for `graph`'s model after `removals` (None without a table)."""
        if self.latency_table is None:
            return None
        return self.latency_table.predict(graph.new_shapes(removals, slices=slices))

    def evaluate(self, model: nn.Module) -> float:
        """The task's metric of `model` on the whole validation split; the same value on every rank."""
        return validation_metric(self.task, self.data, self.world, self.device, model)

    def latency_pair_ms(self, first: nn.Module, second: nn.Module, batch_size: int) -> tuple[float, float]:
        """Two models timed in turns (`measure_pair_ms`) at `batch_size`, rank 0's on every rank."""
        return self.world.first(lambda: measure_pair_ms(self.config, self.runtime, first, second,
                                                        self.data.example, batch_size), "latency measurement")

    def latency_ratio(self, model: nn.Module) -> tuple[Ratio, str]:
        """`model` timed against the original in turns at the latency batch, with the interval of
        their ratio, and where ("fresh" process or the "run"'s; `measure_ratio`), rank 0's on every
        rank: what a reduction is measured with. Only the original and final models, and the models
        of a latency target's check, are timed; candidates are predicted."""
        return self.world.first(lambda: measure_ratio(self.config, self.runtime, self.original, model,
                                                      self.data.example, self.log), "latency measurement")

    def graph_of(self, model: nn.Module) -> DependencyGraph:
        """The dependency graph of a model of this run (`keep` and the groups that break frozen)."""
        return trace(model, self.data.example, keep=self.config.keep).freeze(self.frozen)

    @property
    def total_units(self) -> int:
        return sum(self.original_sizes.values())

    @property
    def progress(self) -> bool:
        return sys.stderr.isatty() if self.config.progress is None else self.config.progress


def validation_metric(task: Task, data: Data, world: World, device: torch.device, model: nn.Module) -> float:
    """The metric on the whole validation split. With several processes: a metric of counts is
    summed over every rank's part (each evaluates only its own); any other metric is rank 0's."""
    if data.val_part is not None:
        correct, seen = task.hits(model, data.val_part, device)
        total = world.total(torch.tensor([correct, seen], dtype=torch.float64), "validation")
        return float(total[0]) / max(1.0, float(total[1]))  # the one-process value: exact integer sums
    return world.first(lambda: task.evaluate(model, data.val_batches, device), "validation")


def derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(ctx: Context, *keys: int) -> Iterator[None]:
    """Torch's global generator seeded from (seed, keys) inside, the caller's state restored after."""
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(ctx.config.seed, *keys))
        yield


def first_units(names: tuple[str, ...], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Any `counts` units per group: enough for counting params/FLOPs, which depend on counts only."""
    return {n: np.arange(c) for n, c in zip(names, counts) if c > 0}


def fingerprint(model: nn.Module) -> str:
    """Names, shapes and values of the original weights: a resumed run must start from the same model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# The context
# --------------------------------------------------------------------------------------------------

def prepare(model: nn.Module, data: Any, config: CompressConfig, out_dir: Path, log: Callable[[str], None],
            task: Task | None = None, world: World | None = None) -> Context:
    world = world or World()
    device = world.device(resolve_device(config.device))
    precision = Precision.resolve(config.amp, config.channels_last, device)
    task = precision.apply(task or Task())
    runtime = runtime_for(config, device)
    original = world.sync(copy.deepcopy(model).to(device).eval())  # every rank starts from rank 0's weights
    prepared = prepare_data(as_source(data), config, device, task, original, world)
    importance.get(config.rl.importance, data=prepared.calibration)  # an unknown criterion fails here
    distiller = check_task(task, config, original, prepared)
    graph = trace(original, prepared.example, keep=config.keep)
    frozen = _breaking_groups(original, graph, prepared.example)
    graph = graph.freeze(frozen)
    groups = graph.prunable_groups()
    if not groups:
        raise PruningError(f"{type(model).__name__} has no prunable channel group (all frozen or kept)")
    auto_round_to = config.rl.round_to == AUTO
    config = world.first(lambda: with_round_to(config, original, graph, prepared.example, runtime, log),
                         "choosing the width multiple")
    table = world.first(lambda: table_for(config, original, graph, prepared.example, runtime, log),
                        "building the latency table")
    if auto_round_to and table is not None:
        config = with_aligned_round_to(config, table, graph, log)
    allocator = get_allocator(config.method, config.rl)
    sizes = {g.name: g.size for g in groups}
    params, flops = graph.count()
    base = {"params": params, "flops": flops, "latency_ms": None if table is None else table.predict(graph.shapes),
            "val_acc": validation_metric(task, prepared, world, device, original)}
    names, total = tuple(sizes), sum(sizes.values())
    step_budget = _initial_budget(config, total)
    target = config.target.rule
    base_measure = Measure(units=total, params=base["params"], flops=base["flops"], latency_ms=base["latency_ms"])
    _check_reachable(config, target, graph, names, sizes, base_measure, table)
    step_cost = _step_cost(config, target, graph, names, sizes, step_budget, base_measure, table)
    if config.rl.equal_cost:
        needed = target.proxy.amount(base_measure) - target.proxy.goal(config.target.value, base_measure)
        planned = math.ceil(needed / step_cost)
    else:
        planned = math.ceil(_planned_units(config, target, graph, names, sizes, base_measure, table) / step_budget)
    return Context(config=config, device=device, task=task, distiller=distiller, data=prepared, original=original,
                   fingerprint=fingerprint(original),
                   names=names, original_sizes=sizes, base=base, target=target,
                   goal=target.goal(config.target.value, base_measure), step_budget=step_budget,
                   step_cost=step_cost, planned_steps=max(1, planned), allocator=allocator, out_dir=out_dir,
                   timer=Timer(), log=log, frozen=frozen, precision=precision, world=world, runtime=runtime,
                   latency_table=table)


def _breaking_groups(original: nn.Module, graph: DependencyGraph, example: Any) -> dict[str, str]:
    """Groups whose pruning (half of their units, on shape-only copies) breaks the forward: the search
    leaves them whole, with a warning naming the op and module (fail small)."""
    found = breaking_at_half(original, graph, example)
    warn_frozen(found, graph)
    return frozen_reasons(found)


def check_task(task: Task, config: CompressConfig, model: nn.Module, data: Data) -> OutputKD:
    """Run the task's forward, loss and output distillation once, on a training batch, so that a task
    that cannot work fails here, before any work; returns how outputs are distilled."""
    batch = data.calibration.batches[0]
    with torch.no_grad():
        outputs = task.forward(model, batch)
        loss = task.batch_loss(outputs, batch, "the task check on a training batch")
        if not torch.isfinite(loss):
            raise TaskError(f"loss(outputs, batch) is {loss.item()} for the original model on a training batch; "
                            "it must be finite")
        distiller = output_kd(config.kd, outputs, batch)
        distiller.loss(outputs, outputs, 1.0)  # TaskError when the outputs cannot be compared
    return distiller


def _initial_budget(config: CompressConfig, total_units: int) -> int:
    multiple = config.rl.multiple
    chunks = round(config.rl.prune_filter_ratio * total_units / multiple)
    return max(1, chunks) * multiple


def after_removal(graph: Any, names: tuple[str, ...], counts: np.ndarray, units_now: int,
                  table: LatencyTable | None = None) -> Measure:
    """What the graph's model keeps after removing `counts` units per group (analytic; latency
    predicted by `table` when there is one)."""
    removals = first_units(names, counts)
    params, flops = graph.count(removals)
    latency = None if table is None else table.predict(graph.new_shapes(removals))
    return Measure(units=units_now - int(counts.sum()), params=params, flops=flops, latency_ms=latency)


def _step_cost(config: CompressConfig, target: TargetKind, graph: Any, names: tuple[str, ...],
               sizes: dict[str, int], step_budget: int, base: Measure, table: LatencyTable | None) -> float:
    """What one step removes, in the target's proxy unit: the expected cost of `step_budget` channels
    spread over the groups in proportion to their widths, from each group's cost per unit. (Counting
    one integer allocation instead would be lumpy: a few channels that happen to fall on a residual
    group, which spans many layers, cost several times more than the same number elsewhere.) A
    group's cost per unit is its cost over its whole removable range divided by that range: exactly
    one unit's for FLOPs and params (linear in one group's width), and for a measured latency table
    the average over every width, which local width effects cannot turn negative (on a runtime where
    some odd widths run slower than wider ones, removing a tenth of a group can add latency, and
    the step would shrink to nothing)."""
    capacity = config.rl.capacity(list(sizes.values()))
    widths = np.array(list(sizes.values()))
    shares = policy.density_init(widths, capacity) * step_budget
    now = target.proxy.amount(base)
    cost = 0.0
    for i in np.flatnonzero(shares > 0):
        some = np.zeros(len(widths), dtype=np.int64)
        some[i] = int(capacity[i])
        removed = now - target.proxy.amount(after_removal(graph, names, some, base.units, table))
        cost += shares[i] * max(removed, 0.0) / some[i]
    return max(float(cost), 1e-12)


def _check_reachable(config: CompressConfig, target: TargetKind, graph: Any, names: tuple[str, ...],
                     sizes: dict[str, int], base: Measure, table: LatencyTable | None) -> None:
    """ConfigError when even pruning every group down to what it must keep misses the target."""
    capacity = config.rl.capacity(list(sizes.values()))
    smallest = after_removal(graph, names, capacity, base.units, table)
    problem = target.unreachable(config.target.value, base, smallest,
                                 f"pruning every group down to {config.rl.floor_text}")
    if problem:
        raise ConfigError(problem)


def _planned_units(config: CompressConfig, target: TargetKind, graph: Any, names: tuple[str, ...],
                   sizes: dict[str, int], base: Measure, table: LatencyTable | None) -> int:
    """Units the density-proportional distribution must remove to reach the target, judged by the
    target's analytic proxy: sets the planned number of steps, which only the epsilon schedule uses."""
    proxy, multiple = target.proxy, config.rl.multiple
    capacity = config.rl.capacity(list(sizes.values()))
    pd = policy.density_init(np.array(list(sizes.values())), capacity)
    goal = proxy.goal(config.target.value, base)

    def passes(chunks: int) -> bool:
        counts = policy.allocate(pd, chunks * multiple, capacity, multiple)
        return proxy.reached(after_removal(graph, names, counts, base.units, table), goal)

    return smallest_passing(policy.max_budget(capacity, multiple) // multiple, passes) * multiple
