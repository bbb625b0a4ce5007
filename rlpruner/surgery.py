"""Physical surgery: slice parameters and buffers, then fix the attributes of the modules that own them.

Surgery knows nothing about graphs: it takes "keep these positions of this dim of this tensor" and
nothing else. `prune_channels` turns a group-level removal into such slices.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError
from .graph import DependencyGraph, Removals
from .graph.twin import structural_copy

Slices = Mapping[str, Mapping[int, np.ndarray]]


def prune_channels(model: nn.Module, graph: DependencyGraph, removals: Removals, *, inplace: bool = True) -> nn.Module:
    """Remove units (indices per group name) from `model`.

    inplace=False returns a structural copy that shares every unchanged tensor with `model`: cheap
    enough to build one per RL candidate. Clone it (copy.deepcopy) before training it.
    """
    return apply_slices(model, graph.slices(removals), inplace=inplace)


def reshape_to(model: nn.Module, shapes: Mapping[str, tuple[int, ...]]) -> nn.Module:
    """Shrink a freshly built model's tensors to `shapes` (e.g. read from a saved pruned model), in place.

    The values kept are meaningless (the first entries of each dim); load the weights afterwards.
    """
    current = dict(model.named_parameters())
    current.update(model.named_buffers())
    slices: dict[str, dict[int, np.ndarray]] = {}
    for name, shape in shapes.items():
        if name not in current:
            raise CheckpointError(f"the saved model has a tensor {name!r} that the rebuilt model does not have")
        old = tuple(current[name].shape)
        if len(old) != len(shape) or any(n > o for n, o in zip(shape, old)):
            raise CheckpointError(f"tensor {name!r}: saved shape {tuple(shape)} cannot come from pruning {old}")
        dims = {d: np.arange(n) for d, (n, o) in enumerate(zip(shape, old)) if n != o}
        if dims:
            slices[name] = dims
    return apply_slices(model, slices, inplace=True)


def apply_slices(model: nn.Module, slices: Slices, *, inplace: bool = True) -> nn.Module:
    target = model if inplace else structural_copy(model)
    owners = _owners(target)
    replaced: dict[int, torch.Tensor] = {}
    touched: dict[nn.Module, dict[str, tuple[int, ...]]] = {}
    for name, dims in slices.items():
        module, attr, old = _locate(target, name)
        new = old.detach()
        for dim, keep in dims.items():
            new = new.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=new.device))
        new = new.contiguous()
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        replaced[id(old)] = new
        for owner, owner_attr in owners.get(id(old), [(module, attr)]):
            touched.setdefault(owner, {})[owner_attr] = tuple(old.shape)
    for old_id, new in replaced.items():
        for owner, attr in owners.get(old_id, []):
            table = owner._parameters if attr in owner._parameters else owner._buffers
            table[attr] = new
    for module, old_shapes in touched.items():
        _fix_attributes(module, old_shapes)
    return target


def _locate(model: nn.Module, name: str) -> tuple[nn.Module, str, torch.Tensor]:
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    tensor = module._parameters.get(attr)
    if tensor is None:
        tensor = module._buffers.get(attr)
    if tensor is None:
        raise KeyError(f"{name!r} is neither a parameter nor a buffer of {type(model).__name__}")
    return module, attr, tensor


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) holding each tensor: tied weights are sliced once, replaced everywhere."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((module, attr))
    return owners


# --- per-module attribute fix-ups: the one table of module-type knowledge in surgery ------------


def _fix_conv(m: nn.modules.conv._ConvNd, old: dict[str, tuple[int, ...]]) -> None:
    w = m.weight.shape
    if m.transposed:  # weight: (in, out / groups, *k)
        if m.groups > 1:
            m.groups = w[0] // (m.in_channels // m.groups)
        m.in_channels, m.out_channels = w[0], w[1] * m.groups
    else:  # weight: (out, in / groups, *k)
        if m.groups > 1:
            m.groups = w[0] // (m.out_channels // m.groups)
        m.out_channels, m.in_channels = w[0], w[1] * m.groups


def _fix_linear(m: nn.Linear, old: dict) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_batchnorm(m: nn.modules.batchnorm._NormBase, old: dict) -> None:
    ref = m.weight if m.weight is not None else m.running_mean
    m.num_features = ref.shape[0]


def _fix_groupnorm(m: nn.GroupNorm, old: dict) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = m.weight.shape[0]
    m.num_groups = m.num_channels // per_group


def _fix_layernorm(m: nn.LayerNorm, old: dict) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _fix_prelu(m: nn.PReLU, old: dict) -> None:
    m.num_parameters = m.weight.numel()


_FIXERS: tuple[tuple[type, Callable[[nn.Module, dict], None]], ...] = (
    (nn.modules.conv._ConvNd, _fix_conv),
    (nn.Linear, _fix_linear),
    (nn.modules.batchnorm._NormBase, _fix_batchnorm),
    (nn.GroupNorm, _fix_groupnorm),
    (nn.LayerNorm, _fix_layernorm),
    (nn.PReLU, _fix_prelu),
)


def _fix_attributes(module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
    for cls, fix in _FIXERS:
        if isinstance(module, cls):
            fix(module, old_shapes)
            return
