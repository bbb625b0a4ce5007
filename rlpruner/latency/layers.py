"""Timing one layer of a latency table at several widths: one width after the other, or in turns.

`time_widths` times an op (a conv/linear layer rebuilt alone, `ops.Op`) at several (output width,
input width) pairs. One after the other, each width gets its own stopwatch. In turns, the widths of
a session are timed against each other and against a `Reference` layer timed in every session, whose
latency there scales the session's times, so layers timed minutes apart compare as if the machine
had stayed the same. `build_table(layers=LAYER_TURNS)` uses the second; it measured worse on this
VM (benchmarks/table_layers.py), so tables are built the first way by default.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .ops import Op
from .runtimes import Runtime, Stopwatch, Turns

LAYER_TURNS = Turns(warmup=2, block=3, settle=1, seconds=1.0)  # a layer's widths in turns with a reference
SESSION_BYTES = 512 << 20  # inputs held by one session of a layer's widths (more: several sessions)


@dataclass(frozen=True)
class Reference:
    """A fixed call (one layer at full width) timed in every session of a layer's widths: each
    session's times are scaled so that it takes `ms` in all of them. Layers timed minutes apart then
    compare as if timed together (a machine that runs everything 20 % slower for a while does so for
    the reference too)."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    ms: float


def reference_call(op: Op, runtime: Runtime, batch: int, turns: Turns) -> Reference:
    """`op` at full width as the reference of a table's layer timings, its latency timed now."""
    module, inputs = op.build(op.out, op.inner, batch)
    return Reference(module, inputs, runtime.time_cases_ms([(module, inputs)], turns)[0])


def time_widths(op: Op, widths: Sequence[tuple[int, int]], runtime: Runtime, batch: int, watch: Stopwatch,
                turns: Turns | None = None, reference: Reference | None = None,
                memory: int = SESSION_BYTES) -> dict[tuple[int, int], float]:
    """Latency of `op` at each (output width, input width). With `turns`, the widths are timed in turns
    with each other (and with the `reference`, which scales them), as many at once as fit in `memory`
    bytes of inputs (widths with the same input shape share one); without, one after the other."""
    wanted = list(dict.fromkeys(widths))
    if turns is None:
        return {w: runtime.time_ms(*op.build(*w, batch), watch) for w in wanted}
    times: dict[tuple[int, int], float] = {}

    def session(chunk: list[tuple[tuple[int, int], nn.Module, tuple[torch.Tensor, ...]]]) -> None:
        cases = [(module, inputs) for _, module, inputs in chunk]
        if reference is not None:
            cases.append((reference.module, reference.inputs))
        measured = runtime.time_cases_ms(cases, turns)
        scale = 1.0 if reference is None else reference.ms / max(measured[-1], 1e-9)
        times.update({w: ms * scale for (w, _, _), ms in zip(chunk, measured)})

    chunk: list[tuple[tuple[int, int], nn.Module, tuple[torch.Tensor, ...]]] = []
    shared: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}
    for width in wanted:
        module, fresh = op.build(*width, batch)
        shape = tuple(fresh[0].shape)
        if shape not in shared:
            size = sum(t.numel() * t.element_size() for t in fresh)
            if chunk and size + sum(t.numel() * t.element_size() for v in shared.values() for t in v) > memory:
                session(chunk)
                chunk, shared = [], {}
            shared[shape] = fresh
        chunk.append((width, module, shared[shape]))
    if chunk:
        session(chunk)
    return times
