"""Property test: random networks built from every structure the engine claims to handle."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rlpruner
from masking import assert_close, masked_reference, outputs, randomize, random_removals
from rlpruner.surgery import prune_channels

KINDS = ("conv", "res", "cat", "se", "shuffle", "chunk", "gn", "ln_last", "scale", "prelu", "pool", "shared",
         "functional", "dw", "grouped", "sub_slice", "interp", "sum_branches")


class Block(nn.Module):
    """One randomly chosen structure; `out_channels` tells the next block its input width."""

    def __init__(self, kind: str, c: int, width: int):
        super().__init__()
        self.kind, self.out_channels = kind, c
        if kind == "conv":
            self.conv, self.bn = nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width)
            self.out_channels = width
        elif kind in ("res", "shared"):
            self.a, self.b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 1)
            self.bn = nn.BatchNorm2d(c)
        elif kind == "cat":
            self.conv = nn.Conv2d(c, width, 1)
            self.out_channels = c + width
        elif kind == "se":
            self.fc1, self.fc2 = nn.Linear(c, max(c // 4, 2)), nn.Conv2d(max(c // 4, 2), c, 1)
        elif kind == "chunk":
            self.conv = nn.Conv2d(c // 2, c // 2, 3, padding=1)
        elif kind == "gn":
            self.norm = nn.GroupNorm(c // 4 if c >= 8 else 2, c)
        elif kind == "ln_last":
            self.norm, self.fc = nn.LayerNorm(c), nn.Linear(c, c)
        elif kind == "scale":
            self.gamma = nn.Parameter(torch.ones(c, 1, 1))
        elif kind == "prelu":
            self.act = nn.PReLU(c)
        elif kind == "functional":
            self.weight = nn.Parameter(torch.randn(width, c, 1, 1) * 0.3)
            self.out_channels = width
        elif kind == "dw":
            self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        elif kind == "grouped":
            self.conv = nn.Conv2d(c, c, 3, padding=1, groups=4)
        elif kind == "sum_branches":
            self.p, self.q = nn.Conv2d(c, width, 1), nn.Conv2d(c, width, 3, padding=1)
            self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "conv":
            return F.relu(self.bn(self.conv(x)))
        if k == "res":
            return x + self.bn(self.b(F.relu(self.a(x))))
        if k == "shared":  # one module called twice
            return self.bn(self.a(F.relu(self.a(x))))
        if k == "cat":
            return torch.cat([x, torch.tanh(self.conv(x))], dim=1)
        if k == "se":
            s = F.relu(self.fc1(x.mean(dim=(2, 3))))
            return x * torch.sigmoid(self.fc2(s[:, :, None, None]))
        if k == "shuffle":
            n, c, h, w = x.shape
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        if k == "chunk":
            a, b = x.chunk(2, dim=1)
            return torch.cat([a, F.relu(self.conv(b))], dim=1)
        if k == "gn":
            return self.norm(x)
        if k == "ln_last":
            y = self.fc(self.norm(x.permute(0, 2, 3, 1)))
            return x + y.permute(0, 3, 1, 2)
        if k == "scale":
            return x + self.gamma * x
        if k == "prelu":
            return self.act(x)
        if k == "pool":
            return F.max_pool2d(x, 2) if x.shape[-1] >= 4 else F.avg_pool2d(x, 1)
        if k == "functional":
            return F.conv2d(x, self.weight)
        if k in ("dw", "grouped"):
            return F.relu(self.conv(x))
        if k == "sub_slice":  # spatial slicing keeps channels
            return x[:, :, ::2, ::2] if x.shape[-1] >= 4 else x
        if k == "interp":
            return F.interpolate(x, scale_factor=2, mode="nearest") if x.shape[-1] <= 4 else x
        if k == "sum_branches":
            return self.p(x) - self.q(x)
        raise AssertionError(k)


class RandomNet(nn.Module):
    def __init__(self, plan: list[tuple[str, int]], flatten_head: bool, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        blocks, c = [], 8
        for kind, width in plan:
            block = Block(kind, c, width)
            blocks.append(block)
            c = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.flatten_head = flatten_head
        self.head = nn.Linear(c * (4 if flatten_head else 1), classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.stem(x)))
        x = F.adaptive_avg_pool2d(x, 2 if self.flatten_head else 1)
        return self.head(torch.flatten(x, 1))


plans = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from([4, 8, 12])), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans, flatten_head=st.booleans(), seed=st.integers(0, 10_000))
def test_random_nets_pruned_equal_masked(plan, flatten_head, seed):
    torch.manual_seed(seed)
    model = randomize(RandomNet(plan, flatten_head).double().eval(), seed)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = rlpruner.trace(model, x, strict=True)  # every structure above is supported
    removals = random_removals(graph, seed)
    pruned = prune_channels(model, graph, removals, inplace=False)
    assert_close(outputs(pruned, x)[0], outputs(masked_reference(model, graph, removals), x)[0])
    params0, flops0 = graph.count()
    params1, flops1 = graph.count(removals)
    assert params1 == sum(p.numel() for p in pruned.parameters())
    if removals:
        assert params1 < params0 and flops1 < flops0
