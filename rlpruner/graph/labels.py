"""Channel labels: the bookkeeping behind exact dependency tracing.

Every tensor seen while tracing gets a *label tensor* of the same shape whose entries are integer
*slot* ids: the slot says which prunable channel an element belongs to. A conv or linear output
gets fresh slots along its channel dim (expanded, so it costs no memory over the spatial dims);
data-movement ops (view, permute, cat, split, shuffles...) are simply applied to the label tensor
too, so their channel semantics come out exact without any per-op index arithmetic.

Slots that must be removed together are merged in a union-find. `NONE` marks elements with no
channel provenance (constants, padding).

Labels always live on the CPU, even when the model is traced on the meta device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

NONE = -1

FROZEN = 1  # may never be removed: model inputs/outputs, kept layers, unknown operations
INEXACT = 2  # removal changes statistics of other channels (e.g. LayerNorm over channels)


@dataclass
class Fact:
    """Positions `positions` of dim `dim` of tensor `param` belong to slots `slots` (same length)."""

    param: str
    dim: int
    positions: np.ndarray
    slots: np.ndarray


@dataclass
class SlotTable:
    """Union-find over channel slots, with per-slot flags and the parameter facts attached to them."""

    parent: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # why a slot is FROZEN (the first reason given)

    def new(self, n: int, flags: int = 0, reason: str = "") -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.flags.extend([flags] * n)
        if flags & FROZEN and reason:
            self.reasons.update((s, reason) for s in range(start, start + n))
        return torch.arange(start, start + n)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra > rb:
                ra, rb = rb, ra
            self.parent[rb] = ra  # keep the oldest slot as root: stable names

    def union_pairs(self, pairs: torch.Tensor) -> None:
        """Union every row (a, b) of an int tensor of shape (k, 2); rows with NONE are skipped."""
        if pairs.numel() == 0:
            return
        pairs = pairs[(pairs >= 0).all(dim=1)]
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if pairs.numel() == 0:
            return
        for a, b in torch.unique(pairs, dim=0).tolist():
            self.union(a, b)

    def mark(self, slots: torch.Tensor | np.ndarray, flag: int, reason: str = "") -> None:
        """Set `flag` on `slots`; a FROZEN mark says why (shown in the graph summary and warnings)."""
        for s in np.unique(np.asarray(slots.cpu() if isinstance(slots, torch.Tensor) else slots)):
            if s >= 0:
                self.flags[int(s)] |= flag
                if flag & FROZEN and reason:
                    self.reasons.setdefault(int(s), reason)

    def attach(self, param: str, dim: int, slots: torch.Tensor, positions: np.ndarray | None = None) -> None:
        slots_np = slots.detach().cpu().numpy().astype(np.int64)
        pos = np.arange(len(slots_np)) if positions is None else np.asarray(positions, dtype=np.int64)
        keep = slots_np >= 0
        if keep.any():
            self.facts.append(Fact(param, dim, pos[keep], slots_np[keep]))

    def roots(self) -> np.ndarray:
        """Root of every slot, vectorised (pointer jumping over the parent array)."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt

    def roots_of(self, labels: torch.Tensor) -> torch.Tensor:
        flat = labels.reshape(-1).tolist()
        return torch.tensor([self.find(v) if v >= 0 else NONE for v in flat], dtype=torch.long).view(labels.shape)


# --- label tensor helpers (pure functions over int tensors) ---------------------------------------


def none_like(shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Labels always live on the CPU, whatever device (or meta) the traced tensors are on."""
    return torch.full((1,) * len(shape), NONE, dtype=torch.long).expand(tuple(shape))


def along(slots: torch.Tensor, shape: torch.Size | tuple[int, ...], dim: int) -> torch.Tensor:
    """Slots laid along `dim` and broadcast (without copying) over every other dim of `shape`."""
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = -1
    return slots.reshape(view).expand(tuple(shape))


def compact(label: torch.Tensor) -> torch.Tensor:
    """Drop the extent of expanded (stride 0) dims: same values, far fewer elements."""
    index = tuple(
        slice(0, 1) if (label.stride(d) == 0 and label.shape[d] > 1) else slice(None) for d in range(label.dim())
    )
    return label[index]


def recompact(label: torch.Tensor) -> torch.Tensor:
    """Re-express a materialised label tensor as an expanded view along every dim it is constant on
    (after a channel shuffle, say), so later ops work on channels, not on every spatial position."""
    if label.numel() <= 1 or any(st == 0 for st, n in zip(label.stride(), label.shape) if n > 1):
        return label
    small = label
    for d in range(label.dim()):
        if small.shape[d] > 1 and bool((small == small.narrow(d, 0, 1)).all()):
            small = small.narrow(d, 0, 1)
    return small.expand(label.shape) if small.numel() < label.numel() else label


def varies(label: torch.Tensor, dim: int) -> bool:
    """Whether raw slot ids differ along `dim` (NONE counts as a value)."""
    if label.shape[dim] <= 1 or label.stride(dim) == 0:
        return False
    c = compact(label)
    return bool((c != c.narrow(dim, 0, 1)).any())


def per_index(table: SlotTable, label: torch.Tensor, dim: int) -> torch.Tensor:
    """One slot per index along `dim`, merging (union) every slot found in that index's slice.

    This is what a consumer of channel `i` along `dim` depends on (a conv's input channel, a
    pooled channel). Returns NONE for indices whose slice holds no slot at all.
    """
    dim = dim % label.dim()
    c = compact(label).movedim(dim, 0)
    rows = c.reshape(c.shape[0], -1)
    if rows.shape[1] == 1:
        return rows[:, 0].clone()
    rep = rows.max(dim=1).values  # NONE is the smallest value: any real slot wins
    differs = (rows != rep[:, None]) & (rows >= 0)
    if differs.any():
        r, col = differs.nonzero(as_tuple=True)
        table.union_pairs(torch.stack([rep[r], rows[r, col]], dim=1))
    return rep


def unique_slots(label: torch.Tensor) -> torch.Tensor:
    u = torch.unique(compact(label))
    return u[u >= 0]
