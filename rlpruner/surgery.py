"""Physical surgery: slice parameters and buffers, then fix the attributes of the modules that own them.

Surgery knows nothing about graphs: it takes "keep these positions of this dim of this tensor" and
nothing else. `prune_channels` turns a group-level removal into such slices. Which attributes of
which module type to update afterwards is per-layer knowledge: it lives beside the channel rules
of those layers (graph/rules/layers.py); users add their own with `rlpruner.graph.register_fixup`
or a per-call `fixups=` mapping.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .errors import SurgeryError
from .graph import DependencyGraph, Removals
from .graph.rules import Fixup, fixups_for
from .graph.twin import structural_copy

Slices = Mapping[str, Mapping[int, np.ndarray]]
Fixups = Mapping[type, Fixup]
Sizes = Mapping[str, "int | list[int]"]

# The root module records the size attributes surgery rewrote ("module.attr" -> value), so that a
# saved pruned model can be rebuilt (rlpruner.io writes them into the file's header).
SIZES_ATTR = "rlpruner_sizes"


def prune_channels(
    model: nn.Module, graph: DependencyGraph, removals: Removals, *, inplace: bool = True,
    fixups: Fixups | None = None,
) -> nn.Module:
    """Remove units (indices per group name) from `model`.

    inplace=False returns a structural copy that shares every unchanged tensor with `model`: cheap
    enough to build one per RL candidate. Clone it (copy.deepcopy) before training it.
    fixups: {module type: fixup(module)} for this call, after the built-in and registered ones.
    """
    return apply_slices(model, graph.slices(removals), inplace=inplace, fixups=fixups,
                        sizes=graph.size_values(removals))


def reshape_to(model: nn.Module, shapes: Mapping[str, tuple[int, ...]], *, fixups: Fixups | None = None,
               sizes: Sizes | None = None) -> nn.Module:
    """Shrink a freshly built model's tensors to `shapes` (e.g. read from a saved pruned model), in place.

    The values kept are meaningless (the first entries of each dim); load the weights afterwards.
    Raises SurgeryError naming the tensor when a shape cannot come from pruning the model.
    """
    current = dict(model.named_parameters())
    current.update(model.named_buffers())
    slices: dict[str, dict[int, np.ndarray]] = {}
    for name, shape in shapes.items():
        if name not in current:
            raise SurgeryError(f"{type(model).__name__} has no parameter or buffer {name!r} to reshape")
        have = tuple(current[name].shape)
        if len(have) != len(shape) or any(n > o for n, o in zip(shape, have)):
            raise SurgeryError(f"tensor {name!r}: shape {tuple(shape)} cannot come from pruning {have}")
        dims = {d: np.arange(n) for d, (n, o) in enumerate(zip(shape, have)) if n != o}
        if dims:
            slices[name] = dims
    return apply_slices(model, slices, inplace=True, fixups=fixups, sizes=sizes)


def apply_slices(model: nn.Module, slices: Slices, *, inplace: bool = True, fixups: Fixups | None = None,
                 sizes: Sizes | None = None) -> nn.Module:
    """Keep `slices[name][dim]` positions of each named tensor; then fix up the modules that own them
    and set the size attributes `sizes` ({"module.attr": new count or list of counts})."""
    target = model if inplace else structural_copy(model)
    owners = _owners(target)
    replaced: dict[int, torch.Tensor] = {}  # sliced from the originals first, swapped in after
    for name, dims in slices.items():
        old = _locate(target, name)
        new = old.detach()
        for dim, keep in dims.items():
            new = new.index_select(dim, torch.as_tensor(keep, dtype=torch.long, device=new.device))
        new = new.contiguous()
        replaced[id(old)] = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
    touched: dict[nn.Module, None] = {}  # an ordered set
    for old_id, new in replaced.items():
        for owner, attr in owners[old_id]:
            table = owner._parameters if attr in owner._parameters else owner._buffers
            table[attr] = new
            touched[owner] = None
    for module in touched:
        for fix in fixups_for(module, fixups):
            fix(module)
    if sizes:
        set_sizes(target, sizes)
    return target


def sizes_problem(sizes: object) -> str | None:
    """What is wrong with a recorded sizes mapping (read from a file), or None."""
    ok = isinstance(sizes, dict) and all(
        isinstance(k, str) and (type(v) is int or isinstance(v, list) and all(type(n) is int for n in v))
        for k, v in sizes.items())
    return None if ok else "sizes must map 'module.attribute' names to integers or lists of integers"


def set_sizes(model: nn.Module, sizes: Sizes) -> None:
    """Set size attributes ({"module.attr": int or list}) keeping each one's type (int, list, tuple),
    and record them on the root module (SIZES_ATTR) for saving."""
    for name, value in sizes.items():
        path, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(path) if path else model
            old = getattr(module, attr)
        except AttributeError as exc:
            raise SurgeryError(f"size attribute {name!r}: {type(model).__name__} has no such attribute") from exc
        if isinstance(old, (list, tuple)) != isinstance(value, (list, tuple)):
            raise SurgeryError(f"size attribute {name!r} is {old!r}; cannot set it to {value!r}")
        setattr(module, attr, type(old)(int(v) for v in value) if isinstance(old, (list, tuple)) else int(value))
    recorded = dict(getattr(model, SIZES_ATTR, {}))
    recorded.update((k, list(v) if isinstance(v, (list, tuple)) else int(v)) for k, v in sizes.items())
    setattr(model, SIZES_ATTR, recorded)


def _locate(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    tensor = module._parameters.get(attr)
    if tensor is None:
        tensor = module._buffers.get(attr)
    if tensor is None:
        raise SurgeryError(f"{name!r} is neither a parameter nor a buffer of {type(model).__name__}")
    return tensor


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) holding each tensor: tied weights are sliced once, replaced everywhere."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, t in list(module._parameters.items()) + list(module._buffers.items()):
            if t is not None:
                owners.setdefault(id(t), []).append((module, attr))
    return owners
