"""Where a model's latency is measured: one object per runtime, registered by name.

A runtime turns (module, inputs) into a call that runs one forward pass the way the deployment
would: PyTorch eager on the CPU with a fixed intra-op thread count, PyTorch eager on CUDA (calls
bracketed by synchronisations), or ONNX Runtime's CPU provider on the module exported to ONNX.
`key()` names everything a measurement depends on, so that a cached latency table is reused only
on the same runtime, threads, library versions and processor. `time_turns_ms` times several models
against each other (what a reduction is), `time_ms` one model.
"""
from __future__ import annotations

import contextlib
import io
import math
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..host_memory import describe as host_memory
from ..metrics import time_calls
from ..registry import Registry

Call = Callable[[], object]


@dataclass(frozen=True)
class Stopwatch:
    """How one latency is measured: `rounds` passes of `warmup` untimed and `repeats` timed calls;
    the latency is the smallest pass median (a burst of outside load slows a whole pass, the best
    pass is the model's own cost)."""

    warmup: int = 3
    repeats: int = 10
    rounds: int = 2
    budget_s: float | None = None  # shrink warm-up and repeats (to 1 and 3) so the timed calls take about this
    per_round_s: float | None = None  # grow repeats (`repeats` at least) until a pass takes about this long:
                                      # fast calls are timed many times, slow ones a few

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.rounds < 1:
            raise ConfigError(f"stopwatch: need warmup >= 0, repeats >= 1, rounds >= 1; got "
                              f"{self.warmup}, {self.repeats}, {self.rounds}")

    def within(self, first_ms: float) -> "Stopwatch":
        """This stopwatch sized for calls that take `first_ms` each (`budget_s`, `per_round_s`)."""
        warmup, repeats = self.warmup, self.repeats
        if self.per_round_s is not None:
            repeats = max(repeats, min(500, int(1000.0 * self.per_round_s / max(first_ms, 1e-3))))
        if self.budget_s is not None:
            affordable = int(1000.0 * self.budget_s / max(first_ms, 1e-3))
            warmup, repeats = min(warmup, max(0, affordable // 5)), max(3, min(repeats, affordable // self.rounds))
        return Stopwatch(warmup=warmup, repeats=repeats, rounds=self.rounds)


MAX_ROUNDS = 200


@dataclass(frozen=True)
class Turns:
    """How models are timed against each other: each is called `warmup` times untimed, then they
    take `rounds` turns, in each of which every model is called `settle` times untimed (its weights
    back in the caches the others used) and `block` times timed. A model's latency is the median of
    its turns' medians. A shared machine that slows down for a second or more slows every model
    alike, so the ratio of two latencies, a reduction, holds; timed one after the other, each model
    would get whatever state the machine was in while it ran."""

    warmup: int = 2
    block: int = 5
    settle: int = 1
    rounds: int = 10
    seconds: float | None = None  # rounds sized so that all turns take about this long (`least` to MAX_ROUNDS)
    least: int = 3                # the fewest rounds when sized by `seconds` (slow models get this many)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.block < 1 or self.settle < 0 or self.rounds < 1 or self.least < 1:
            raise ConfigError(f"turns: need warmup >= 0, block >= 1, settle >= 0, rounds >= 1, least >= 1; got "
                              f"{self.warmup}, {self.block}, {self.settle}, {self.rounds}, {self.least}")

    def sized(self, one_each_ms: float) -> int:
        """The number of rounds, for models whose calls take `one_each_ms` together."""
        if self.seconds is None:
            return self.rounds
        per_round = (self.settle + self.block) * max(one_each_ms, 1e-3)
        return max(self.least, min(MAX_ROUNDS, int(1000.0 * self.seconds / per_round)))


@dataclass(frozen=True)
class Ratio:
    """Two models timed in turns: each one's latency (the median of its turns) and the ratio second /
    first. Within a turn the two run seconds apart at most, so each turn gives one ratio that a slow
    drift of the machine does not move: `ratio` is their median, [`low`, `high`] its distribution-free
    `confidence` interval (`median_interval`). On a quiet machine it is narrow; on one shared with
    other work it widens, and says how far the timing can be believed."""

    first_ms: float
    second_ms: float
    ratio: float
    low: float
    high: float
    turns: int
    confidence: float

    @property
    def reductions(self) -> tuple[float, float, float]:
        """The reduction 1 - ratio with its interval: (reduction, lowest, highest)."""
        return 1.0 - self.ratio, 1.0 - self.high, 1.0 - self.low


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A `confidence` interval for the median of the distribution `values` were drawn from, by order
    statistics (no assumption on its shape): the k-th smallest and k-th largest value, k the largest
    with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. Too few values for that: their range."""
    if not values or not 0.0 < confidence < 1.0:
        raise ConfigError(f"median_interval: need values and a confidence in (0, 1); got {len(values)} values, "
                          f"confidence {confidence}")
    ordered, n = sorted(values), len(values)
    tail, below, k = (1.0 - confidence) / 2.0, 0.0, 0
    while k < n // 2:
        below += math.comb(n, k) / 2.0 ** n  # P(Binomial(n, 1/2) = k)
        if below > tail:
            break
        k += 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def processor() -> str:
    """The processor's model name (the same machine type gives the same table)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class Runtime:
    """Behaviour of one runtime. Subclasses set `name` and implement `prepare`."""

    name = ""
    device = torch.device("cpu")

    def __init__(self, threads: int | None = 1) -> None:
        if threads is not None and threads < 1:
            raise ConfigError(f"latency runtime {self.name}: threads must be >= 1, got {threads}")
        self.threads = threads
        self._prepared: dict[tuple[int, int], Call] = {}  # while timing in turns: each (module, inputs)'s
                                                        # call, prepared once

    def key(self) -> dict[str, object]:
        return {"runtime": self.name, "threads": self.threads, "torch": torch.__version__,
                "processor": processor(), "host_memory": host_memory()}

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Call:
        raise NotImplementedError

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads or old)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    def time_ms(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], watch: Stopwatch) -> float:
        """Latency in ms of one forward pass of `module` on `inputs` (see `Stopwatch`). The module is
        left on its device and in its mode."""
        place = next(module.parameters(), torch.empty(0)).device
        was_training = module.training
        try:
            with self._threads(), torch.inference_mode():
                call = self._prepared.get((id(module), id(inputs))) or self.prepare(module, inputs)
                if watch.budget_s is not None or watch.per_round_s is not None:
                    watch = watch.within(time_calls(call, warmup=0, repeats=1, device=self.device)[0])
                medians = [statistics.median(time_calls(call, warmup=watch.warmup, repeats=watch.repeats,
                                                        device=self.device)) for _ in range(watch.rounds)]
        finally:
            module.to(place).train(was_training)
        return min(medians)

    def time_turns_ms(self, modules: Sequence[nn.Module], inputs: tuple[torch.Tensor, ...],
                      turns: Turns = Turns()) -> list[float]:
        """Latency in ms of one forward pass of each of `modules` on the same `inputs`, timed in turns
        (see `Turns`): the way to compare them."""
        return self.time_cases_ms([(module, inputs) for module in modules], turns)

    def time_cases_ms(self, cases: Sequence[tuple[nn.Module, tuple[torch.Tensor, ...]]],
                      turns: Turns = Turns()) -> list[float]:
        """Latency in ms of one forward pass of each (module, its inputs), timed in turns (see
        `Turns`)."""
        return [statistics.median(kept) for kept in self.time_cases_turns_ms(cases, turns)]

    def time_ratio(self, first: nn.Module, second: nn.Module, inputs: tuple[torch.Tensor, ...],
                   turns: Turns = Turns(), confidence: float = 0.95) -> "Ratio":
        """Two models timed in turns on the same `inputs`, with how sure the ratio of their latencies
        is (`Ratio`): what a measured reduction, and whether it misses a target, rests on."""
        first_turns, second_turns = self.time_cases_turns_ms([(first, inputs), (second, inputs)], turns)
        ratios = [b / a for a, b in zip(first_turns, second_turns)]
        return Ratio(statistics.median(first_turns), statistics.median(second_turns), statistics.median(ratios),
                     *median_interval(ratios, confidence), len(ratios), confidence)

    def time_cases_turns_ms(self, cases: Sequence[tuple[nn.Module, tuple[torch.Tensor, ...]]],
                            turns: Turns = Turns()) -> list[list[float]]:
        """Each (module, its inputs)'s latency in ms in each turn (the median of the turn's timed
        calls; see `Turns`). Each module is prepared once (an ONNX Runtime session is built once) and
        left on its device and in its mode."""
        modules = [module for module, _ in cases]
        states = [(next(m.parameters(), torch.empty(0)).device, m.training) for m in modules]
        try:
            with torch.inference_mode():
                for module, inputs in cases:
                    self._prepared[id(module), id(inputs)] = self.prepare(module, inputs)
            first = [self.time_ms(m, inputs, Stopwatch(warmup=max(turns.warmup - 1, 0), repeats=1, rounds=1))
                     for m, inputs in cases]
            medians: list[list[float]] = [[] for _ in cases]
            block = Stopwatch(warmup=turns.settle, repeats=turns.block, rounds=1)
            for _ in range(turns.sized(sum(first))):
                for (module, inputs), kept in zip(cases, medians):
                    kept.append(self.time_ms(module, inputs, block))
        finally:
            self._prepared.clear()
            for module, (place, was_training) in zip(modules, states):
                module.to(place).train(was_training)
        return medians

    def __repr__(self) -> str:
        return f"{self.name}(threads={self.threads})"


class TorchCPU(Runtime):
    """PyTorch eager mode on the CPU, at a fixed intra-op thread count."""

    name = "torch-cpu"

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Call:
        module = module.to(self.device).eval()
        inputs = tuple(t.to(self.device) for t in inputs)
        return lambda: module(*inputs)


class TorchCUDA(TorchCPU):
    """PyTorch eager mode on the current CUDA device (threads only affect host-side work)."""

    name = "torch-cuda"

    def __init__(self, threads: int | None = None) -> None:
        if not torch.cuda.is_available():
            raise ConfigError("latency runtime torch-cuda: no CUDA device is available; use torch-cpu or onnxruntime-cpu")
        super().__init__(threads)
        self.device = torch.device("cuda")

    def key(self) -> dict[str, object]:
        return {**super().key(), "processor": torch.cuda.get_device_name(self.device)}


class OnnxRuntimeCPU(Runtime):
    """ONNX Runtime's CPU execution provider (the usual edge runtime), on the module exported to ONNX
    with every graph optimisation on and `threads` intra-op threads."""

    name = "onnxruntime-cpu"

    def __init__(self, threads: int | None = 1) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError("latency runtime onnxruntime-cpu needs onnxruntime: pip install 'rlpruner[onnx]'") from exc
        super().__init__(threads)

    def key(self) -> dict[str, object]:
        import onnxruntime

        return {**super().key(), "onnxruntime": onnxruntime.__version__}

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Call:
        import onnxruntime

        buffer = io.BytesIO()
        module = module.cpu().eval()
        with torch.no_grad(), warnings_quiet():
            torch.onnx.export(module, inputs, buffer, dynamo=False, input_names=[f"x{i}" for i in range(len(inputs))])
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {f"x{i}": t.detach().cpu().numpy() for i, t in enumerate(inputs)}
        return lambda: session.run(None, feed)


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


RUNTIMES: Registry[type[Runtime]] = Registry("latency runtime")
for _runtime in (TorchCPU, TorchCUDA, OnnxRuntimeCPU):
    RUNTIMES.add(_runtime.name, _runtime)


def get_runtime(name: str, threads: int | None = 1) -> Runtime:
    """The runtime registered as `name`, measuring with `threads` intra-op threads."""
    return RUNTIMES.get(name)(threads)
