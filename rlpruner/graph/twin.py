"""Copies of a module tree that share or replace its tensors without copying data."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn


def structural_copy(model: nn.Module, tensor_map: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """A copy of the module tree. Tensors are shared with `model`, or replaced by `tensor_map(t)`
    (called once per distinct tensor, so tied weights stay tied)."""
    modules: dict[int, nn.Module] = {}
    tensors: dict[int, torch.Tensor] = {}

    def swap(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or tensor_map is None:
            return t
        if id(t) not in tensors:
            tensors[id(t)] = tensor_map(t)
        return tensors[id(t)]

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in modules:
            return modules[id(m)]
        new = copy.copy(m)
        modules[id(m)] = new
        new._parameters = m._parameters.__class__((k, swap(v)) for k, v in m._parameters.items())
        new._buffers = m._buffers.__class__((k, swap(v)) for k, v in m._buffers.items())
        new._modules = m._modules.__class__((k, None if c is None else clone(c)) for k, c in m._modules.items())
        return new

    return clone(model)


def meta_twin(model: nn.Module) -> nn.Module:
    """The same architecture with every tensor on the meta device: runs in microseconds per op."""

    def to_meta(t: torch.Tensor) -> torch.Tensor:
        meta = torch.empty_like(t, device="meta")
        return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta

    return structural_copy(model, to_meta)
