"""The layers a latency table times (`Op`, found by `find_ops` in one forward pass) and the
pruned widths it is built and checked on (uniform and random removals)."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..graph import DependencyGraph

CONVS = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}


@dataclass(frozen=True)
class Op:
    """One conv/linear call of the model: how to rebuild it alone at other widths."""

    weight: str                 # state_dict name of its weight
    kind: str                   # conv1d / conv2d / conv3d / linear
    out: int                    # output channels (features)
    inner: int                  # input channels per group (weight.shape[1])
    groups: int
    bias: bool
    sample_shape: tuple[int, ...]  # one sample of its input, without the batch dim
    mult: int                   # output positions per sample (the FLOPs multiplier)
    options: tuple[tuple[str, Any], ...] = ()  # kernel_size, stride, padding, dilation, padding_mode
    out_axis: bool = True       # its output width can change (a prunable group owns weight dim 0)
    in_axis: bool = True        # its input width can change (weight dim 1)

    @property
    def family(self) -> str:
        """What the fit scales together: linear, conv (dense) or grouped conv (depthwise included)."""
        return "linear" if self.kind == "linear" else ("grouped conv" if self.groups > 1 else "conv")

    @property
    def signature(self) -> str:
        return json.dumps([self.kind, self.out, self.inner, self.groups, self.bias, self.sample_shape,
                           self.options, self.out_axis, self.in_axis])

    def widths(self, shape: Sequence[int]) -> tuple[int, int]:
        """(out, inner) of a (pruned) weight of this op."""
        return int(shape[0]), int(shape[1])

    def build(self, out: int, inner: int, batch: int) -> tuple[nn.Module, tuple[torch.Tensor]]:
        """The op alone at these widths and a random input batch for it."""
        groups = self.groups
        if groups > 1:  # whole groups go together: channels per group stay, the group count follows
            groups = max(1, out * self.groups // self.out)
        in_channels = inner * groups
        generator = torch.Generator().manual_seed(0)
        if self.kind == "linear":
            module: nn.Module = nn.Linear(in_channels, out, bias=self.bias)
            shape = (batch, *self.sample_shape[:-1], in_channels)
        else:
            conv = {v: k for k, v in CONVS.items()}[self.kind]
            module = conv(in_channels, out, groups=groups, bias=self.bias, **dict(self.options))
            shape = (batch, in_channels, *self.sample_shape[1:])
        return module.eval(), (torch.randn(shape, generator=generator),)


def find_ops(model: nn.Module, graph: DependencyGraph, example: Any) -> list[Op]:
    """Every conv/linear module call the graph counts, with its input shape (from one forward pass)."""
    counted = {w for w, _ in graph.costs}
    modules = {f"{name}.weight" if name else "weight": m for name, m in model.named_modules()
               if isinstance(m, (nn.Linear, *CONVS)) and (f"{name}.weight" if name else "weight") in counted}
    prunable = {(m.param, m.dim) for g in graph.prunable_groups() for m in g.members}
    calls: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def hook(weight: str) -> Callable:
        return lambda module, args, out: calls.append((weight, tuple(args[0].shape), tuple(out.shape)))

    handles = [m.register_forward_hook(hook(w)) for w, m in modules.items()]
    try:
        with torch.no_grad():
            inputs = example if isinstance(example, tuple) else (example,)
            was = model.training
            model.eval()
            model(*inputs)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    ops = []
    for weight, in_shape, out_shape in calls:
        m = modules[weight]
        out, inner = int(m.weight.shape[0]), int(m.weight.shape[1])
        if isinstance(m, nn.Linear):
            kind, groups, options, mult = "linear", 1, (), math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        else:
            kind, groups, mult = CONVS[type(m)], m.groups, math.prod(out_shape[2:])
            options = (("kernel_size", tuple(m.kernel_size)), ("stride", tuple(m.stride)),
                       ("padding", m.padding if isinstance(m.padding, str) else tuple(m.padding)),
                       ("dilation", tuple(m.dilation)), ("padding_mode", m.padding_mode))
        ops.append(Op(weight=weight, kind=kind, out=out, inner=inner, groups=groups, bias=m.bias is not None,
                      sample_shape=tuple(int(d) for d in in_shape[1:]), mult=int(mult), options=options,
                      out_axis=(weight, 0) in prunable, in_axis=(weight, 1) in prunable and groups == 1))
    return ops



def nearest_multiple(kept: int, size: int, multiple: int) -> int:
    """`kept` units of a group of `size` rounded to the nearest whole multiple of `multiple` (at least
    one multiple, at most the group); a group no wider than the multiple keeps `kept`."""
    if multiple > 1 and size > multiple:
        kept = max(multiple, int(round(kept / multiple)) * multiple)
    return min(kept, size)


def uniform_removals(graph: DependencyGraph, keep: float, multiple: int = 1) -> dict[str, np.ndarray]:
    """Removals that keep about `keep` of every prunable group (whole multiples of `multiple`)."""
    out = {}
    for g in graph.prunable_groups():
        kept = nearest_multiple(max(1, int(round(g.size * keep))), g.size, multiple)
        if kept < g.size:
            out[g.name] = np.arange(g.size - kept)
    return out


def random_removals(graph: DependencyGraph, rng: np.random.Generator, low: float = 0.25,
                    multiple: int = 1) -> dict[str, np.ndarray]:
    """Every prunable group keeps its own random share in [low, 1] (whole multiples of `multiple`)."""
    out = {}
    for g in graph.prunable_groups():
        kept = nearest_multiple(max(1, int(round(g.size * rng.uniform(low, 1.0)))), g.size, multiple)
        if kept < g.size:
            out[g.name] = np.sort(rng.choice(g.size, g.size - kept, replace=False))
    return out
