"""Measuring a model: parameters, FLOPs (PyTorch's own FlopCounterMode) and latency, plus CLI tables."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .host_memory import keep_freed_memory

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Counts:
    params: int   # unique parameters (a tied weight counts once)
    flops: int    # as torch.utils.flop_counter counts them: 2 * multiply-accumulates of conv/linear/matmul

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    batch_size: int
    repeats: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() already skips shared duplicates


@torch.no_grad()
def count_flops(model: nn.Module, example_inputs: Inputs) -> int:
    """FLOPs of one forward pass on `example_inputs` (the whole batch), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*_as_tuple(example_inputs))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count(model: nn.Module, example_inputs: Inputs) -> Counts:
    """Parameters and FLOPs of `model`; FLOPs are for the batch in `example_inputs` (use batch 1)."""
    return Counts(params=count_params(model), flops=count_flops(model, example_inputs))


def _latency_inputs(inputs: Inputs | Sequence[int], batch_size: int,
                    device: torch.device) -> tuple[torch.Tensor, ...]:
    """A `batch_size` batch: each tensor's first sample repeated, or random data of a shape (C, H, W)."""
    tensors = _as_tuple(inputs) if isinstance(inputs, (torch.Tensor, tuple)) else ()
    if tensors and all(isinstance(t, torch.Tensor) for t in tensors):
        return tuple(t[:1].expand(batch_size, *t.shape[1:]).contiguous().to(device) for t in tensors)
    shape = tuple(int(d) for d in inputs)
    return (torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0)).to(device),)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def time_calls(call: Callable[[], object], *, warmup: int, repeats: int,
               device: str | torch.device = "cpu") -> list[float]:
    """Wall times in ms, sorted, of `repeats` calls of `call` after `warmup` untimed ones.

    The one timing loop of rlpruner (model latency, exported artefacts); on CUDA each timed call is
    bracketed by synchronisations so that the time covers the kernels, not just their launch. On
    the CPU the host allocator is first set to keep freed memory (`host_memory`), so that a latency
    does not depend on what the process ran before.
    """
    device = torch.device(device)
    if device.type == "cpu":
        keep_freed_memory()
    times: list[float] = []
    for i in range(warmup + repeats):
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        if i >= warmup:
            times.append(1000.0 * (time.perf_counter() - start))
    return sorted(times)


def measure_latency(model: nn.Module, inputs: Inputs | Sequence[int], *, batch_size: int = 1,
                    warmup: int = 10, repeats: int = 50, device: str | torch.device = "cpu",
                    threads: int | None = None, max_seconds: float | None = None) -> Latency:
    """Wall time of one forward pass of a `batch_size` batch: warm-up runs, then `repeats` timed runs.

    `inputs` is an example tensor (tuple) or a per-sample shape such as (3, 32, 32). The model is run
    in eval mode under `torch.inference_mode` on `device`; `threads` sets torch's intra-op thread
    count for the measurement only. The model is left on its original device and mode. With
    `max_seconds`, warm-up and repeats shrink (to at least 1 and 3) so that the timed runs take
    about that long: large batches of large models stay affordable.
    """
    if batch_size < 1 or warmup < 0 or repeats < 1:
        raise ConfigError(f"latency: need batch_size >= 1, warmup >= 0, repeats >= 1; "
                          f"got {batch_size}, {warmup}, {repeats}")
    if threads is not None and threads < 1:
        raise ConfigError(f"latency: threads must be >= 1, got {threads}")
    device = torch.device(device)
    original_device = next(model.parameters(), torch.empty(0)).device
    was_training, old_threads = model.training, torch.get_num_threads()
    batch = _latency_inputs(inputs, batch_size, device)
    try:
        torch.set_num_threads(threads or old_threads)
        model.to(device).eval()
        with torch.inference_mode():
            if max_seconds is not None:
                first = time_calls(lambda: model(*batch), warmup=0, repeats=1, device=device)[0]
                affordable = int(1000.0 * max_seconds / max(first, 1e-3))
                warmup, repeats = min(warmup, max(0, affordable // 5)), max(3, min(repeats, affordable))
            times = time_calls(lambda: model(*batch), warmup=warmup, repeats=repeats, device=device)
    finally:
        torch.set_num_threads(old_threads)
        model.to(original_device).train(was_training)
    return Latency(median_ms=statistics.median(times), p10_ms=_percentile(times, 0.1),
                   p90_ms=_percentile(times, 0.9), batch_size=batch_size, repeats=repeats,
                   device=str(device), threads=threads or old_threads)


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; keeps three significant digits, the way papers quote params and FLOPs."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A plain-text table: one column per key (in first-seen order), numbers right-aligned."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) for row in rows if col in row) for col in columns]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(padded).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
