"""ConvNeXt-style net at an "atto"-like width for CIFAR: a 2x2/2 patchify stem, stages of blocks
(depthwise 7x7 -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale -> residual),
and 2x2/2 downsampling convs after a channels-first LayerNorm between stages."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.errors import ConfigError
from rlpruner.models.registry import register_model


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor, written out as mean/variance over dim 1."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, layer_scale_init: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)  # pointwise convs as Linear on channels-last tensors
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dims: Sequence[int], depths: Sequence[int], num_classes: int,
                 in_channels: int, layer_scale_init: float) -> None:
        super().__init__()
        self.downsample = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, 2),
                                                       LayerNorm2d(dims[0]))])
        for previous, dim in zip(dims[:-1], dims[1:]):
            self.downsample.append(nn.Sequential(LayerNorm2d(previous), nn.Conv2d(previous, dim, 2, 2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, layer_scale_init) for _ in range(depth)))
            for dim, depth in zip(dims, depths))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample, self.stages):
            x = stage(downsample(x))
        return self.head(self.norm(x.mean((2, 3))))


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def _positive_ints(option: str, values: Sequence[int], length: int | None) -> list[int]:
    if (not isinstance(values, (list, tuple)) or not values or length not in (None, len(values))
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
        count = "one or more" if length is None else str(length)
        raise ConfigError(f"convnext {option} must be {count} positive integers, not {values!r}")
    return list(values)


@register_model("convnext_atto")
def convnext_atto(num_classes: int = 10, in_channels: int = 3,
                  dims: Sequence[int] = (40, 80, 160, 320), depths: Sequence[int] = (2, 2, 6, 2),
                  layer_scale_init: float = 1e-6) -> nn.Module:
    """`layer_scale_init` is the initial per-channel gamma (1e-6 in the paper; larger values make the
    residual branches matter at initialisation, e.g. for tests of pruned outputs)."""
    dims = _positive_ints("dims", dims, None)
    depths = _positive_ints("depths", depths, len(dims))
    if isinstance(layer_scale_init, bool) or not isinstance(layer_scale_init, (int, float)):
        raise ConfigError(f"convnext layer_scale_init must be a number, not {layer_scale_init!r}")
    return ConvNeXt(dims, depths, num_classes, in_channels, layer_scale_init)
