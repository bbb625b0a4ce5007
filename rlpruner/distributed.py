"""Several processes, one run: rlpruner under `torchrun` (torch.distributed).

    torchrun --nproc-per-node 4 -m rlpruner compress base.rlp --target-flops 0.5 --device cuda

Every process runs the same loop on the same data; the rule that keeps them in step is **rank 0
decides, the others follow**:

- each round's candidates are split into contiguous blocks, one per rank, and the scores gathered
  (`World.gather`), so every rank sees every score and takes the same decision;
- every other value a decision rests on (validation metrics, importance orders, latencies) is
  computed by rank 0 and broadcast (`World.first`), so floating-point differences between devices
  can never make two ranks choose differently;
- training (KD recovery, the final fine-tune, base training) is DistributedDataParallel over shards
  of the single-process run's own batches (`World.part`), with BatchNorm statistics taken over the
  whole batch (`World.training`), so N processes train like one on the same batches;
- after every change to the model, rank 0's tensors are broadcast (`World.sync`);
- only rank 0 writes files (checkpoints, reports, logs).

An error that one rank meets while the others wait (a bad checkpoint, a NaN score) is sent to every
rank and raised there as it was; a rank that dies makes the others fail at their next collective with
a `DistributedError`, and the last checkpoint stays whole.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MethodType
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .batches import Batch, batch_len
from .errors import RLPrunerError

T = TypeVar("T")
_BN = nn.modules.batchnorm._BatchNorm
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a rank before failing


class DistributedError(RLPrunerError):
    """A process of a multi-process run failed or stopped, or torch.distributed could not start."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank `rank` of `size` processes (one: `World()`)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    # ---------------------------------------------------------------------------------------------
    # Decisions: shared work and rank 0's values
    # ---------------------------------------------------------------------------------------------

    def share(self, n: int) -> range:
        """This rank's contiguous block of `n` items (blocks differ in size by one at most)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def gather(self, compute: Callable[[], T], what: str) -> list[T]:
        """Every rank's `compute()`, in rank order, on every rank. An RLPrunerError raised on any
        rank is raised on all of them (the lowest rank's)."""
        outcome = _attempt(compute)
        if not self.active:
            return [_unwrap(outcome)]
        outcomes: list[Any] = [None] * self.size
        self._collective(what, lambda: dist.all_gather_object(outcomes, outcome))
        return [_unwrap(o) for o in outcomes]

    def first(self, compute: Callable[[], T], what: str) -> T:
        """Rank 0's `compute()` on every rank (the others do not run it); an RLPrunerError it raises
        is raised on every rank."""
        if not self.active:
            return compute()
        box = [_attempt(compute) if self.main else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0))
        return _unwrap(box[0])

    def any(self, flag: bool, what: str) -> bool:
        """True on every rank when `flag` is true on at least one."""
        if not self.active:
            return flag
        return bool(self.total(torch.tensor([float(flag)]), what)[0] > 0)

    def total(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """The element-wise sum of `values` over the ranks (a new tensor, on `values`' device)."""
        if not self.active:
            return values.clone()
        out = values.detach().clone().to(_collective_device())
        self._collective(what, lambda: dist.all_reduce(out))
        return out.to(values.device)

    def sync(self, module: nn.Module) -> nn.Module:
        """Rank 0's parameters and buffers copied into every rank's `module`, in place."""
        if self.active:
            with torch.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    self._collective("model synchronisation", lambda t=tensor: dist.broadcast(t.data, src=0))
        return module

    # ---------------------------------------------------------------------------------------------
    # Training: shards of the same batches, DDP, BatchNorm over the whole batch
    # ---------------------------------------------------------------------------------------------

    def part(self, batch: Batch) -> Batch:
        """This rank's share of `batch` (contiguous, like `share`): every tensor whose first
        dimension is the batch's is cut, and so is every list of one item per sample below the top
        level (a detector's per-image targets); anything else is kept whole."""
        if not self.active:
            return batch
        n = batch_len(batch)
        block = self.share(n)
        return _cut(batch, n, slice(block.start, block.stop), top=True)

    def shard(self, batches: Iterable[Batch]) -> Iterable[Batch]:
        """`batches` with every batch cut to this rank's part (the loader is read whole on every
        rank; a streamed dataset shards its sampler instead: `rlpruner.data.make_loaders(part=)`)."""
        return batches if not self.active else _Parts(batches, self)

    @contextlib.contextmanager
    def training(self, model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
        """The module to train: `model` itself in one process; with several, `model` wrapped in
        DistributedDataParallel, every BatchNorm layer normalising with statistics of the whole
        batch (all ranks' parts together), as one process would. The layers are restored after."""
        if not self.active:
            yield model
            return
        from torch.nn.parallel import DistributedDataParallel

        layers = [m for m in model.modules() if isinstance(m, _BN)]
        for layer in layers:
            layer.forward = MethodType(_whole_batch_norm, layer)
        try:
            wrapped = self._collective("DistributedDataParallel setup", lambda: DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None))
            yield wrapped
        finally:
            for layer in layers:
                del layer.forward

    def weight(self, samples: int, finite: bool, what: str) -> float:
        """The factor that makes DDP's mean of the ranks' gradients the gradient of the whole batch's
        mean loss (parts may differ in size by one); a DivergenceError on every rank when any
        rank's loss is not finite."""
        if not self.active:
            return 1.0
        from .errors import DivergenceError

        counts = self.total(torch.tensor([float(samples), float(not finite)], dtype=torch.float64), what)
        if counts[1] > 0:
            raise DivergenceError(f"{what}: the training loss became non-finite on "
                                  f"{int(counts[1])} rank(s); lower the learning rate")
        return samples * self.size / float(counts[0])

    # ---------------------------------------------------------------------------------------------

    def device(self, device: torch.device) -> torch.device:
        """The device this rank computes on: `cuda` means `cuda:LOCAL_RANK` in a multi-process run."""
        if self.active and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def _collective(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except RuntimeError as exc:  # DistBackendError and gloo's connection errors alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DistributedError(f"rank {self.rank} of {self.size}: {what} failed: another process of the run "
                                   f"stopped or failed ({first[:200]}); the last checkpoint is intact: resume "
                                   "with --resume") from exc


def join(device: torch.device | str = "cpu") -> World:
    """This process's world: torch.distributed's when it is initialised; the one `torchrun` describes
    (WORLD_SIZE > 1 in the environment), initialised here (nccl for CUDA, gloo otherwise); else one
    process."""
    device = torch.device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), local)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE={size} but this PyTorch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(local if device.index is None else device.index)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot start torch.distributed ({backend}, WORLD_SIZE={size}): "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; launch with "
                               "torchrun (it sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)") from exc
    # A process group still alive when the interpreter shuts down can abort the process (gloo's
    # worker threads release tensors after Python is gone: SIGABRT, "terminate called without an
    # active exception"). A user's script under torchrun rarely ends it, so it ends here at exit.
    atexit.register(leave)
    return World(dist.get_rank(), dist.get_world_size(), local)


def leave() -> None:
    """End torch.distributed in this process, if it runs: the ranks first wait for each other (none
    tears its connections down while another still talks to it; a dead peer is not waited for), then
    what still holds the group (a DistributedDataParallel wrapper) is collected and the group
    destroyed while the interpreter is whole. The CLI's last act, and registered at exit by `join`."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(RuntimeError):
        if dist.get_world_size() > 1:
            dist.all_reduce(torch.zeros(1, device=_collective_device()))
    gc.collect()
    dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------

def _collective_device() -> torch.device:
    backend = dist.get_backend() if dist.is_initialized() else "gloo"
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _attempt(compute: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, compute()
    except RLPrunerError as exc:
        return False, exc


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    ok, value = outcome
    if not ok:
        raise value
    return value


def _cut(value: Any, n: int, block: slice, top: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        return value[block] if value.dim() > 0 and value.shape[0] == n else value
    if isinstance(value, Mapping):
        return {k: _cut(v, n, block) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cut(v, n, block) for v in value))
    if isinstance(value, list) and not top and len(value) == n:
        return value[block]  # one item per sample
    if isinstance(value, (list, tuple)):
        return type(value)(_cut(v, n, block) for v in value)
    return value


class _Parts:
    """A loader whose batches are cut to one rank's part (sized when the loader is)."""

    def __init__(self, batches: Iterable[Batch], world: World):
        self.batches, self.world = batches, world

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        return (self.world.part(b) for b in self.batches)


def _whole_batch_norm(layer: _BN, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in training mode with the mean and variance of the whole batch: sums over every
    rank's part (a differentiable all-reduce, so gradients flow through the statistics as in one
    process); running statistics updated as `F.batch_norm` does. Eval mode is the layer's own."""
    if not layer.training:
        return type(layer).forward(layer, x)
    dims = [0, *range(2, x.dim())]
    xf = x.float()
    channels = x.shape[1]
    count = torch.full((1,), xf.numel() / channels, device=x.device, dtype=torch.float64)
    # float64 across the ranks: exact counts past 2**24 values per channel, and a steadier variance
    sums = _Summed.apply(torch.cat([xf.sum(dims).double(), (xf * xf).sum(dims).double(), count]))
    n = sums[-1]
    mean = sums[:channels] / n
    var = (sums[channels:2 * channels] / n - mean * mean).clamp_min(0.0)
    mean, var, n = mean.float(), var.float(), n.float()
    if layer.track_running_stats and layer.running_mean is not None:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            momentum = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
            unbiased = var * n / (n - 1).clamp_min(1.0)
            layer.running_mean.mul_(1 - momentum).add_(momentum * mean.detach().to(layer.running_mean.dtype))
            layer.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach().to(layer.running_var.dtype))
    shape = [1, channels] + [1] * (x.dim() - 2)
    out = (xf - mean.view(shape)) * torch.rsqrt(var + layer.eps).view(shape)
    if layer.affine:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    return out.to(x.dtype)


class _Summed(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: the gradient of every rank's loss with
    respect to the sum flows back to every rank's part (backward sums the ranks' gradients)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out
