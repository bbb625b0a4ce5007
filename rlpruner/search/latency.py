"""The search's view of latency: which runtime times the models, the latency table that predicts
every candidate (no candidate is timed), and the width multiple "auto" stands for.

A run builds a table only when it optimises latency (a latency target or a latency reward); its
other timings (the original and final models, for the report) are real measurements on the runtime.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..graph import DependencyGraph
from ..io import atomic_write_json
from ..latency import (LatencyTable, Ratio, Runtime, Turns, aligned_model_costs, cached_table, choose_round_to,
                       find_ops, get_runtime)
from ..latency.check import rounding_costs
from ..latency.fresh import FreshProcessUnavailable, time_ratio_fresh
from ..latency.table import cache_path, default_cache_dir, table_key
from ..metrics import _latency_inputs
from .config import AUTO, CompressConfig

REPORT_TIMING_S = 3.0  # about this long per model, for the report's second batch size
MIN_PAIR_TURNS = 8     # a 95 % interval of a median needs 6 turns at least; 8 leave it room


def optimises_latency(config: CompressConfig) -> bool:
    return config.target.rule.needs_latency or config.reward.needs_latency


def runtime_for(config: CompressConfig, device: torch.device) -> Runtime:
    """The run's latency runtime: the configured one, or ("auto") PyTorch on the run's device."""
    name = config.latency_runtime
    if name == AUTO:
        name = "torch-cuda" if device.type == "cuda" else "torch-cpu"
    return get_runtime(name, config.latency_threads)


def pair_turns(config: CompressConfig, batch_size: int | None = None) -> Turns:
    """How the run compares two models. At `config.latency_batch` (a latency target's check, the
    report's latency change): turns of 5 timed calls for about `latency_pair_s`, at least
    max(MIN_PAIR_TURNS, 4/5 of `latency_repeats`) of them (as many timed calls as four timings of
    `latency_repeats`). At `batch_size` (the report's second batch size): turns of one call each for
    about `REPORT_TIMING_S` per model."""
    if batch_size is None:
        return Turns(warmup=config.latency_warmup, block=5, settle=1, seconds=config.latency_pair_s,
                     least=max(MIN_PAIR_TURNS, 4 * config.latency_repeats // 5))
    return Turns(warmup=1, block=1, settle=0, seconds=2 * REPORT_TIMING_S)


def measure_pair_ms(config: CompressConfig, runtime: Runtime, first: nn.Module, second: nn.Module,
                    example: Any, batch_size: int) -> tuple[float, float]:
    """Both models' latency at `batch_size`, timed in turns (`Runtime.time_turns_ms`): a machine that
    speeds up or slows down while this runs moves both alike, so their ratio, what a reduction is,
    holds."""
    inputs = _latency_inputs(example, batch_size, runtime.device)
    first_ms, second_ms = runtime.time_turns_ms([first, second], inputs, pair_turns(config, batch_size))
    return first_ms, second_ms


def measure_ratio(config: CompressConfig, runtime: Runtime, first: nn.Module, second: nn.Module,
                  example: Any, log: Callable[[str], None]) -> tuple[Ratio, str]:
    """`second`'s latency against `first`'s at `config.latency_batch`, in turns (`pair_turns`), with
    the interval of their ratio (`Runtime.time_ratio`), and where it was timed: "fresh" (a child
    process, `latency.fresh`: `in_fresh_process`) or "run" (this process). What a latency target's
    check and the report's latency change rest on."""
    inputs = _latency_inputs(example, config.latency_batch, runtime.device)
    if in_fresh_process(config, runtime):
        try:
            return time_ratio_fresh(runtime, first, second, inputs, pair_turns(config)), "fresh"
        except FreshProcessUnavailable as exc:
            log(f"latency timed in the run's process, not a fresh one: {exc}")
    return runtime.time_ratio(first, second, inputs, pair_turns(config)), "run"


def in_fresh_process(config: CompressConfig, runtime: Runtime) -> bool:
    """Whether the model and the original are compared in a fresh process: on a CPU runtime, when
    `latency_fresh` says so, or (None) when the run optimises latency, whose checks steer the search.
    A run's own heap, fragmented by its training, shrinks a small model's measured reductions."""
    if runtime.device.type != "cpu" or config.latency_fresh is False:
        return False
    return bool(config.latency_fresh) or optimises_latency(config)


def _cache_dir(config: CompressConfig) -> Path:
    return default_cache_dir() if config.latency_cache is None else Path(config.latency_cache)


def with_round_to(config: CompressConfig, model: nn.Module, graph: DependencyGraph, example: Any,
                  runtime: Runtime, log: Callable[[str], None]) -> CompressConfig:
    """`config` with round_to "auto" resolved: 1 unless the run optimises latency, else the smallest
    width multiple (up to a quarter of the narrowest group) whose widths the runtime runs about as
    fast as any wider width (`latency.choose_round_to`; measured once per model structure, runtime
    and batch, cached beside the latency tables, so a resumed run gets the same)."""
    if config.rl.round_to != AUTO:
        return config
    multiple = 1
    if optimises_latency(config):
        multiple = _measured_multiple(config, model, graph, example, runtime, log)
    return replace(config, rl=replace(config.rl, round_to=multiple))


def _measured_multiple(config: CompressConfig, model: nn.Module, graph: DependencyGraph, example: Any,
                       runtime: Runtime, log: Callable[[str], None]) -> int:
    key = {**table_key(model, graph, example, runtime, config.latency_batch, 0, 0), "kind": "round_to"}
    path = cache_path(_cache_dir(config), key, prefix="round-to-")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return int(saved["round_to"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    smallest = min(g.size for g in graph.prunable_groups())
    costs = rounding_costs(find_ops(model, graph, example), runtime, config.latency_batch,
                           largest=max(1, smallest // 4))  # a multiple leaves every group room to shrink
    multiple = choose_round_to(costs)
    log(f"round_to auto: {multiple} on {runtime!r} (mean slowdown of each multiple's widths against the "
        f"fastest wider width: {', '.join(f'{m}: {c:.3f}' for m, c in costs.items())})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"key": key, "round_to": multiple, "costs": costs})
    except OSError:
        pass  # a cache: the run goes on with the measured value
    return multiple


def with_aligned_round_to(config: CompressConfig, table: LatencyTable, graph: DependencyGraph,
                          log: Callable[[str], None]) -> CompressConfig:
    """`config` whose round_to was "auto", raised where the latency table predicts that whole models
    with every width rounded to the nearest multiple of a larger number run clearly faster
    (`latency.aligned_model_costs`: the runtime converts between layers whose widths are off its
    block, which the per-layer measurement of `with_round_to` cannot see). At most half the narrowest
    group, so every group can still shrink. Pure given the table, so a resumed run gets the same."""
    smallest = min(g.size for g in graph.prunable_groups())
    costs = aligned_model_costs(table, graph, largest=max(1, smallest // 2))
    multiple = choose_round_to(costs)
    if multiple <= config.rl.multiple:
        return config
    log(f"round_to auto: {multiple}, not {config.rl.multiple}: the latency table predicts whole models with widths "
        f"rounded to its multiples faster (mean predicted latency against unrounded widths: "
        f"{', '.join(f'{m}: {c:.3f}' for m, c in costs.items())})")
    return replace(config, rl=replace(config.rl, round_to=multiple))


def table_for(config: CompressConfig, model: nn.Module, graph: DependencyGraph, example: Any, runtime: Runtime,
              log: Callable[[str], None]) -> LatencyTable | None:
    """The run's latency table when it optimises latency (cached on disk), else None."""
    if not optimises_latency(config):
        return None
    return cached_table(model, graph, example, runtime, batch=config.latency_batch, points=config.latency_points,
                        multiple=config.rl.multiple, cache_dir=_cache_dir(config), log=log)
