"""Structures of attention and split-heavy models, weight standardisation, and failing small.

Every structure is checked the strongest way: the pruned model computes what the original computes
with the removed channels masked out (tests/masking.py), and the module attributes its forward reads
(head dims, split sizes) follow the pruning.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rlpruner
from masking import assert_close, masked_reference, outputs, random_removals, randomize
from rlpruner.isolate import breaking_groups
from rlpruner.pruner import prune_to_flops
from rlpruner.surgery import SIZES_ATTR, prune_channels


def _equivalent(model, x, seed=0, graph=None):
    """Random removals in every exact prunable group; pruned == masked original. Returns the pruned model."""
    graph = graph or rlpruner.trace(model, x)
    removals = random_removals(graph, seed, fraction=1.0)
    assert removals, "no exact prunable group"
    pruned = prune_channels(model, graph, removals, inplace=False)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    for got, want in zip(outputs(pruned, x), outputs(masked_reference(model, graph, removals), x), strict=True):
        assert_close(got, want)
    return pruned, graph, removals


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------

class FusedQKV(nn.Module):
    """A ViT block: fused qkv, head reshapes through `self.head_dim`, matmul / softmax / matmul."""

    def __init__(self, dim=16, heads=2, head_dim=6, sdpa=False):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim, self.sdpa = heads, head_dim, heads * head_dim, sdpa
        self.scale = head_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 24), nn.Linear(24, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            y = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, self.attn_dim))
        return x + self.fc2(F.gelu(self.fc1(x)))


class Tokens(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.embed, self.block, self.head = nn.Conv2d(3, 16, 4, stride=4), block, nn.Linear(16, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.block(t).mean(1))


@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul-softmax", "sdpa"])
def test_fused_qkv_attention_prunes_the_head_dim_across_heads_exactly(sdpa):
    model = randomize(Tokens(FusedQKV(sdpa=sdpa))).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = rlpruner.trace(model, x)
    qkv = graph.group("block.qkv")
    assert qkv.prunable and qkv.exact and qkv.size == 6  # one unit per head-dim index: q, k, v and both heads
    assert graph.group("block.fc1").prunable
    pruned, _, removals = _equivalent(model, x, graph=graph)
    kept = 6 - len(removals.get("block.qkv", ()))
    assert pruned.block.head_dim == kept and pruned.block.attn_dim == 2 * kept
    assert pruned.block.qkv.out_features == 3 * 2 * kept and pruned.block.proj.in_features == 2 * kept


def test_sdpa_with_its_default_scale_is_prunable_but_marked_inexact():
    class DefaultScale(FusedQKV):
        def forward(self, x):
            B, N, C = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            return x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1))

    graph = rlpruner.trace(Tokens(DefaultScale()), torch.randn(1, 3, 16, 16))
    group = graph.group("block.qkv")
    assert group.prunable and not group.exact  # 1/sqrt(head dim) changes with the width


class WindowAttention(nn.Module):
    """Swin-style: separate q/k/v, window tokens, a relative-position bias table indexed per head."""

    def __init__(self, dim=16, heads=2, window=2):
        super().__init__()
        n = window * window
        self.heads, self.window = heads, window
        self.q, self.k, self.v = nn.Linear(dim, 12), nn.Linear(dim, 12), nn.Linear(dim, 12)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.proj = nn.Linear(12, dim)
        self.n = n

    def forward(self, x):  # x: (B, H, W, C)
        B, H, W, C = x.shape
        w = self.window
        t = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
        split = [f(t).reshape(t.shape[0], self.n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)]
        q, k, v = split
        bias = self.table[self.index.view(-1)].view(self.n, self.n, -1).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) + bias.unsqueeze(0)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(t.shape[0], self.n, -1)
        y = self.proj(y).view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        return x + y


def test_window_attention_with_a_relative_position_table_prunes_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Conv2d(3, 16, 2, stride=2), WindowAttention(), nn.Linear(16, 4)

        def forward(self, x):
            y = self.attn(self.embed(x).permute(0, 2, 3, 1))
            return self.head(y.mean((1, 2)))

    model = randomize(Net()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = rlpruner.trace(model, x)
    assert graph.group("attn.q").prunable and graph.group("attn.v").prunable
    assert not graph.unknown_ops
    pruned, _, removals = _equivalent(model, x, graph=graph)
    assert pruned.attn.table.shape == model.attn.table.shape  # heads stay: the table indexes heads


# --------------------------------------------------------------------------------------------------
# Splits: selective kernel, mixed kernels (split-with-sizes), CSP partial split
# --------------------------------------------------------------------------------------------------

class SelectiveKernel(nn.Module):
    def __init__(self, c=8, paths=2):
        super().__init__()
        self.paths = nn.ModuleList(nn.Conv2d(c, c, 3, padding=d, dilation=d) for d in range(1, paths + 1))
        self.num_paths = paths
        self.reduce, self.select = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c * paths, 1)

    def forward(self, x):
        stacked = torch.stack([p(x) for p in self.paths], dim=1)  # (B, paths, C, H, W)
        a = self.select(F.relu(self.reduce(stacked.sum(1).mean((2, 3), keepdim=True))))
        B, C, H, W = a.shape
        a = a.view(B, self.num_paths, C // self.num_paths, H, W).softmax(dim=1)
        return (stacked * a).sum(1)


class MixedKernel(nn.Module):
    """mixnet-style: split-with-sizes held by `self.splits`, one depthwise conv per piece."""

    def __init__(self, c=12):
        super().__init__()
        self.splits = [4, 8]
        self.convs = nn.ModuleList(nn.Conv2d(s, s, k, padding=k // 2, groups=s) for s, k in zip(self.splits, (3, 5)))

    def forward(self, x):
        return torch.cat([conv(p) for conv, p in zip(self.convs, torch.split(x, self.splits, 1))], 1)


class CSP(nn.Module):
    """A partial split by a size held in `self.half`: one half goes through a conv, then both are joined."""

    def __init__(self, c=12):
        super().__init__()
        self.half = c // 2
        self.inner = nn.Conv2d(c // 2, c // 2, 3, padding=1)

    def forward(self, x):
        a, b = x.split(self.half, dim=1)
        return torch.cat([a, F.relu(self.inner(b))], dim=1)


class SplitInputSK(nn.Module):
    """timm's selective kernel with split input: pieces of `self.in_channels // self.num_paths`
    (a size no attribute holds; the total is in_channels), one conv per path, summed."""

    def __init__(self, c=12, out=10, paths=2):
        super().__init__()
        self.in_channels, self.out_channels, self.num_paths = c, out, paths
        self.paths = nn.ModuleList(nn.Conv2d(c // paths, out, 3, padding=1) for _ in range(paths))
        self.post = nn.Conv2d(out, c, 1)

    def forward(self, x):
        pieces = torch.split(x, self.in_channels // self.num_paths, 1)
        return self.post(F.relu(sum(conv(p) for conv, p in zip(self.paths, pieces))))


class DerivedCSP(CSP):
    """cspresnet's split by `self.expand_chs // 2`."""

    def __init__(self, c=12):
        super().__init__(c)
        self.expand_chs = c
        del self.half

    def forward(self, x):
        a, b = x.split(self.expand_chs // 2, dim=1)
        return torch.cat([a, F.relu(self.inner(b))], dim=1)


def _conv_net(block, c):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.post, self.head = nn.Conv2d(3, c, 3, padding=1), block, nn.Conv2d(c, 6, 1), \
                nn.Linear(6, 3)

        def forward(self, x):
            return self.head(F.relu(self.post(self.block(F.relu(self.stem(x))))).mean((2, 3)))

    return randomize(Net()).eval()


@pytest.mark.parametrize("block, c", [(SelectiveKernel(), 8), (MixedKernel(), 12), (CSP(), 12), (SplitInputSK(), 12),
                                      (DerivedCSP(), 12)],
                         ids=["selective-kernel", "mixed-kernel-split-with-sizes", "csp-partial-split",
                              "sk-split-by-a-derived-size", "csp-split-by-a-derived-size"])
def test_split_structures_prune_inside_each_piece_exactly(block, c):
    model = _conv_net(block, c)
    x = torch.randn(2, 3, 8, 8)
    graph = rlpruner.trace(model, x)
    assert graph.coverage().share > 0.6 and not graph.unknown_ops
    for seed in range(3):
        pruned, _, removals = _equivalent(model, x, seed, graph)
        if isinstance(block, MixedKernel):
            assert pruned.block.splits == [c.out_channels for c in pruned.block.convs]
        if type(block) is CSP:
            assert pruned.block.half == pruned.block.inner.in_channels
        if isinstance(block, DerivedCSP):
            assert pruned.block.expand_chs == 2 * pruned.block.inner.in_channels
        if isinstance(block, SplitInputSK):
            assert pruned.block.in_channels == 2 * pruned.block.paths[0].in_channels


def mixed_kernel_net(num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    """Built again by rlpruner.load from the spec (an import path)."""
    torch.manual_seed(0)
    return _conv_net(MixedKernel(), 12)


def test_split_sizes_survive_save_and_load(tmp_path):
    model = mixed_kernel_net()
    x = torch.randn(1, 3, 8, 8)
    small = rlpruner.prune(model, x, ratio=0.5)
    assert small.block.splits == [2, 4] == [c.out_channels for c in small.block.convs]
    assert getattr(small, SIZES_ATTR) == {"block.splits": [2, 4]}
    spec = {"source": "import", "name": "test_engine_structures:mixed_kernel_net",
            "kwargs": {"num_classes": 3, "in_channels": 3}}
    rlpruner.save(small, tmp_path / "m.rlp", spec=spec)
    back = rlpruner.load(tmp_path / "m.rlp", example_inputs=x, allow_imports=["test_engine_structures"])
    assert back.block.splits == [2, 4]
    assert torch.equal(outputs(back, x)[0], outputs(small, x)[0])


# --------------------------------------------------------------------------------------------------
# Weight standardisation
# --------------------------------------------------------------------------------------------------

class ScaledStdConv(nn.Conv2d):
    """NF-Net style: the weight normalised per output channel (F.batch_norm over it), times a gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, weight=(self.gain * 0.7).view(-1),
                         training=True, momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class StdConv(nn.Conv2d):
    """BiT style: (w - mean) / std over each filter's fan-in."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_weight_standardised_convs_prune_their_filters_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ScaledStdConv(3, 16, 3, padding=1), StdConv(16, 12, 3, padding=1)
            self.c, self.head = nn.Conv2d(12, 8, 1), nn.Linear(8, 5)

        def forward(self, x):
            x = F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))))
            return self.head(x.mean((2, 3)))

    model = randomize(Net()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = rlpruner.trace(model, x)
    assert not graph.unknown_ops
    a, b = graph.group("a"), graph.group("b")
    assert a.prunable and not a.exact  # feeds b, whose standardisation spans its fan-in
    assert b.prunable and b.exact and {m.param for m in a.members} >= {"a.weight", "a.gain", "a.bias"}
    pruned, _, removals = _equivalent(model, x, graph=graph)
    assert pruned.b.weight.shape[0] == 12 - len(removals["b"])


class ShapedScale(nn.Module):
    """poolformer's layer scale: a (C,) parameter viewed as the tuple attribute `self.shape` = (C, 1, 1)."""

    def __init__(self, c=8):
        super().__init__()
        self.shape = (c, 1, 1)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)


def test_a_view_by_a_shape_attribute_follows_the_pruning():
    model = _conv_net(ShapedScale(), 8)
    x = torch.randn(2, 3, 8, 8)
    graph = rlpruner.trace(model, x)
    assert graph.group("stem").prunable
    for seed in range(3):
        pruned, _, removals = _equivalent(model, x, seed, graph)
        assert pruned.block.shape == (pruned.block.scale.numel(), 1, 1) and isinstance(pruned.block.shape, tuple)


# --------------------------------------------------------------------------------------------------
# Failing small
# --------------------------------------------------------------------------------------------------

class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.c, self.head = nn.Conv2d(16, 10, 1), nn.Linear(10, 4)

    def forward(self, x):
        y = F.relu(self.b(F.relu(self.a(x))))
        y = y.view(y.shape[0], 16, 64).mean(-1)[..., None, None]  # 16 channels x 64 positions, written in the code
        return self.head(F.relu(self.c(y)).flatten(1))


def test_a_hard_coded_view_freezes_only_its_group_and_the_rest_prunes_exactly():
    model = randomize(HardCoded()).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = rlpruner.trace(model, x)
    removals = {g.name: np.arange(g.size // 2) for g in graph.prunable_groups()}
    broken = breaking_groups(model, graph, removals, x)
    assert list(broken) == ["b"]
    assert broken["b"].op == "aten.view" and broken["b"].module == "" and "16" in broken["b"].error
    with pytest.warns(UserWarning, match=r"froze 1 group.*'b' \(16 channels\): aten.view in <model>.*shape"):
        small = rlpruner.prune(randomize(HardCoded()).eval(), x, ratio=0.5)
    assert small.a.out_channels == 4 and small.b.out_channels == 16 and small.c.out_channels == 5
    frozen = graph.freeze({"b": "pruning it breaks the view"})
    assert not frozen.group("b").prunable and frozen.group("a").prunable
    _equivalent(model, x, graph=frozen)


def test_prune_to_flops_plans_again_without_the_broken_group():
    x = torch.randn(1, 3, 8, 8)
    model = randomize(HardCoded()).eval()
    before = rlpruner.count(model, x).flops
    with pytest.warns(UserWarning, match="froze 1 group"):
        prune_to_flops(model, x, 0.3, method="uniform")
    assert model.b.out_channels == 16 and rlpruner.count(model, x).flops <= 0.7 * before


def test_groupnorm_with_one_group_keeps_one_group_after_pruning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    rlpruner.prune(model, x, ratio=0.5)
    assert model[1].num_groups == 1 and model[1].num_channels == 4
    assert model(x).shape == (2, 4, 6, 6)


def test_coverage_names_why_channels_are_frozen():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)

        def forward(self, x):
            y = self.b(torch.roll(self.a(x), 1, dims=1))  # rolls channels by a fixed shift
            return self.head(y.mean((2, 3)))

    graph = rlpruner.trace(Net(), torch.randn(1, 3, 8, 8))
    coverage = graph.coverage()
    assert coverage.channels == 8 + 6 + 4 and coverage.prunable == 6
    assert coverage.frozen == {"aten.roll along a channel dim in <model>": 8, "model output": 4}
    assert "prunable: 6 of 18 conv/linear output channels (33.3%)" in graph.summary()
    assert "frozen: aten.roll along a channel dim" in graph.summary()
