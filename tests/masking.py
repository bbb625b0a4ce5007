"""Test helpers for the central correctness property of the engine (mask-equivalence).

A pruned model must compute exactly what the original computes with the removed channels masked
out. "Masked out" is implemented here independently of surgery: on a copy of the original, every
*producer-side* slice of a removed unit (conv/linear output rows, biases, norm affine parameters,
layer-scale entries) is set to zero, so the channel is zero wherever it flows. Consumers keep
their input columns (which dims those are comes from the package's layer rules,
`rlpruner.graph.rules.input_dims`): if the pruned model still agrees, the removed channels truly
carried nothing the rest of the network used.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from rlpruner.graph import DependencyGraph
from rlpruner.graph.rules import input_dims


def masked_reference(model: nn.Module, graph: DependencyGraph, removals: dict) -> nn.Module:
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    tensors = dict(ref.named_parameters())
    tensors.update(ref.named_buffers())
    with torch.no_grad():
        for name, units in removals.items():
            group = graph.group(name)
            for m in group.members:
                owner = modules.get(m.module)
                if owner is not None and (m.param.rpartition(".")[2], m.dim) in input_dims(owner):
                    continue  # the consumer side (conv/linear input columns, per the layer rules)
                if m.param.endswith("running_var") or m.param.endswith("running_mean"):
                    continue  # statistics do not matter once gamma and beta are zero
                pos = torch.as_tensor(m.positions_of(np.asarray(units)), dtype=torch.long)
                tensors[m.param].index_fill_(m.dim, pos, 0.0)
    return ref


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, so masking mistakes cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                for p in m._parameters.values():  # bare parameters such as layer-scale gammas
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def random_removals(graph: DependencyGraph, seed: int, fraction: float = 0.7, exact_only: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    removals = {}
    for g in graph.prunable_groups():
        if (exact_only and not g.exact) or rng.random() > fraction:
            continue
        k = int(rng.integers(1, g.size))
        removals[g.name] = np.sort(rng.choice(g.size, size=k, replace=False))
    return removals


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    a, b = a.detach(), b.detach()
    scale = max(float(a.abs().max()), 1e-6)
    err = float((a - b).abs().max())
    assert err <= rtol * scale, f"max abs diff {err:.3g} exceeds {rtol:g} x max|out| {scale:.3g}"


def outputs(model: nn.Module, x) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(*x) if isinstance(x, tuple) else model(x)  # a tuple: several inputs
    return _flatten(out)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _flatten(o)]
