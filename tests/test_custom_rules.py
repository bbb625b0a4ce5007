"""Users' own ops and modules: a channel rule registered from outside the package makes them prunable."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rlpruner
from masking import randomize, random_removals
from rlpruner.errors import ConfigError, UnsupportedOperation
from rlpruner.graph import register_fixup, register_rule, unregister_fixup, unregister_rule
from rlpruner.surgery import prune_channels
from test_engine_cases import assert_equivalent


class _ScaleFn(torch.autograd.Function):
    """A per-channel scale as a custom autograd Function: a kernel whose body the tracer cannot read."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x, scale)
        return torch.einsum("nchw,c->nchw", x, scale)

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        return torch.einsum("nchw,c->nchw", grad, scale), torch.einsum("nchw,nchw->c", grad, x)


class ChannelScale(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return _ScaleFn.apply(x, self.scale)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.s1 = nn.Conv2d(3, 8, 3, padding=1), ChannelScale(8)
        self.c2, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 3)

    def forward(self, x):
        y = F.relu(self.s1(self.c1(x)))
        return self.fc(F.relu(self.c2(y)).mean((2, 3)))


def scale_rule(ctx, module, args, kwargs, out):
    """ChannelScale keeps channels where they are; its scale follows them."""
    slots = ctx.channels(args[0])
    if not ctx.attach(module.scale, 0, slots):
        ctx.unknown(module, args, kwargs, out, "computed scale")
        return
    ctx.set_channels(out, slots)


def fix_scale(module: ChannelScale) -> None:
    module.channels = module.scale.numel()


def _net():
    torch.manual_seed(0)
    return randomize(Net().double().eval()), torch.randn(2, 3, 8, 8, dtype=torch.float64)


def _prune_and_check(model, x, graph):
    removals = random_removals(graph, seed=0, fraction=1.0)
    assert "c1" in removals
    pruned = prune_channels(model, graph, removals, inplace=False, fixups={ChannelScale: fix_scale})
    assert_equivalent(model, pruned, graph, removals, x)
    kept = 8 - len(removals["c1"])
    assert pruned.c1.out_channels == pruned.s1.channels == pruned.c2.in_channels == kept < 8


def test_without_a_rule_the_channels_freeze_and_strict_names_op_and_layer():
    model, x = _net()
    with pytest.warns(UserWarning, match=r"einsum in s1"):
        graph = rlpruner.trace(model, x)
    assert not graph.group("c1").prunable and graph.group("c2").prunable
    with pytest.raises(UnsupportedOperation, match=r"einsum in s1"):
        rlpruner.trace(model, x, strict=True)


def test_a_per_call_module_rule_makes_the_module_a_prunable_leaf():
    model, x = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unknown any more
        graph = rlpruner.trace(model, x, strict=True, rules={ChannelScale: scale_rule})
    c1 = graph.group("c1")
    assert c1.prunable and c1.exact and "s1.scale" in {m.param for m in c1.members}
    _prune_and_check(model, x, graph)


def test_a_rule_for_a_torch_function_works_too():
    def einsum_scale(ctx, func, args, kwargs, out):  # only the "nchw,c->nchw" form this model uses
        slots = ctx.channels(args[1])
        assert ctx.attach(args[2], 0, slots)
        ctx.set_channels(out, slots)

    model, x = _net()
    graph = rlpruner.trace(model, x, strict=True, rules={torch.einsum: einsum_scale})
    _prune_and_check(model, x, graph)


def test_process_wide_registration_reaches_trace_and_prune():
    model, x = _net()
    register_rule(ChannelScale, scale_rule)
    register_fixup(ChannelScale, fix_scale)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_rule(ChannelScale, scale_rule)
        _prune_and_check(model, x, rlpruner.trace(model, x, strict=True))
        before = model(x)
        rlpruner.prune(model, x, 0.5, strict=True)
        assert model.c1.out_channels == model.s1.channels == 4 and model(x).shape == before.shape
    finally:
        unregister_rule(ChannelScale)
        unregister_fixup(ChannelScale)
    with pytest.warns(UserWarning, match="einsum"):
        rlpruner.trace(Net(), x.float())  # gone again


def test_registration_is_checked():
    with pytest.raises(ConfigError, match="module type ChannelScale, not an instance"):
        register_rule(ChannelScale(4), scale_rule)
    with pytest.raises(ConfigError, match="nn.Module type"):
        register_fixup(torch.einsum, fix_scale)
    with pytest.raises(ConfigError, match="callable"):
        rlpruner.trace(Net(), torch.randn(1, 3, 8, 8), rules={ChannelScale: "not a rule"})
