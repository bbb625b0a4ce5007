"""Batches of any structure: what a user's loader yields (a tensor, a tuple or list, a dict, nested
freely), moved to a device, counted and cut down to one sample."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

Batch = Any


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Every tensor of `batch` (nested tuples, lists, dicts, named tuples) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple/list/dict, in order (dicts in their key order): batches,
    model outputs, and an op's arguments while tracing."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in tensors_of(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_of(v)]
    return []


def batch_len(batch: Batch) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    tensors = tensors_of(batch)
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() > 0 else 1


def first_sample(value: Any) -> Any:
    """The first sample of every tensor in `value` (batch dimension kept): a batch of one."""
    if isinstance(value, torch.Tensor):
        return value[:1] if value.dim() > 0 else value
    if isinstance(value, Mapping):
        return {k: first_sample(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(first_sample(v) for v in value) if not hasattr(value, "_fields") \
            else type(value)(*(first_sample(v) for v in value))
    return value


class OnDevice:
    """Iterate a loader with every batch moved to `device` (re-iterable when the loader is)."""

    def __init__(self, batches: Iterable[Batch], device: torch.device):
        self.batches, self.device = batches, device

    def __iter__(self) -> Iterator[Batch]:
        return (to_device(b, self.device) for b in self.batches)


def batch_bytes(batch: Batch) -> int:
    return sum(t.element_size() * t.numel() for t in tensors_of(batch))


class CachedBatches:
    """A split's batches, re-iterable any number of times: on `device`, and kept there after the first
    complete pass when they fit in `limit_bytes`; otherwise read from `loader` again on every pass,
    so memory holds a batch or two (and the loader's prefetch), never the split.

    `streamed` says which: False while the split is cached (or not yet read through).
    """

    def __init__(self, loader: Iterable[Batch], device: torch.device | str, limit_bytes: int):
        self.loader, self.device, self.limit_bytes = loader, device, limit_bytes
        self.streamed = False
        self._cache: list[Batch] | None = None

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[Batch] | None = None if self.streamed else []
        size = 0
        for batch in self.loader:
            batch = to_device(batch, self.device)
            if kept is not None:
                size += batch_bytes(batch)
                if size <= self.limit_bytes:
                    kept.append(batch)
                else:
                    kept, self.streamed = None, True
            yield batch
        if kept is not None:
            self._cache = kept

    def first(self) -> Batch:
        """The first batch (without reading the rest)."""
        for batch in self:
            return batch
        raise ValueError("no batches")
