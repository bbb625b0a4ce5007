"""Tied tensors in saved models: one Parameter or buffer object under several names.

A saved model stores a tied tensor once, under its first name; every other name's header record
says ``"same_as": "<first name>"`` (see rlpruner.io.saved). This module finds ties, checks the
records that describe them, and ties a rebuilt model the same way.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


def named_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer by qualified name, including non-persistent buffers and tied names."""
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


def find_ties(model: nn.Module) -> dict[str, str]:
    """{name: first name} for every name under which an already named tensor object appears again.

    Ties are object identity (what ``b.weight = a.weight`` makes), not shared storage: two views of
    one storage are two tensors. The first name is one the state_dict saves, where there is one.
    """
    names: dict[int, list[str]] = {}
    for name, t in named_tensors(model):
        names.setdefault(id(t), []).append(name)
    saved = set(model.state_dict())
    ties = {}
    for group in names.values():
        first = next((n for n in group if n in saved), group[0])
        ties.update({n: first for n in group if n != first})
    return ties


def ties_problem(records: dict) -> str | None:
    """What is wrong with the same_as keys of a header's (otherwise valid) tensor records, if anything."""
    for name, record in records.items():
        problem = _tie_problem(name, record, records) if "same_as" in record else None
        if problem:
            return problem
    return None


def _tie_problem(name: str, record: dict, records: dict) -> str | None:
    """A tied name must point at a stored, untied tensor of its own shape and dtype."""
    target = record["same_as"]
    if not isinstance(target, str) or target == name or target not in records:
        return f"tensor {name!r}: same_as {target!r} does not name another tensor of the file"
    first = records[target]
    if "same_as" in first:
        return (f"tensor {name!r}: same_as {target!r}, which is itself same_as {first['same_as']!r}; "
                "a tie must name the first name of the tensor")
    if (first["shape"], first["dtype"]) != (record["shape"], record["dtype"]):
        return (f"tensor {name!r} is {record['dtype']}{record['shape']} but its same_as {target!r} "
                f"is {first['dtype']}{first['shape']}")
    return None


def retie(model: nn.Module, records: dict, path: Path) -> None:
    """Make each same_as name hold the very tensor object of the name it points at."""
    for name, record in records.items():
        if "same_as" not in record:
            continue
        owner, attr = _owner(model, name)
        first_owner, first_attr = _owner(model, record["same_as"])
        first = first_owner._parameters.get(first_attr)
        if first is None:
            first = first_owner._buffers[first_attr]
        if attr in owner._parameters:
            if not isinstance(first, nn.Parameter):
                raise CheckpointError(f"{path}: tensor {name!r} is a parameter but its same_as "
                                      f"{record['same_as']!r} is a buffer")
            owner._parameters[attr] = first
        else:
            owner._buffers[attr] = first


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr
