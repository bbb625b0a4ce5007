"""ShuffleNetV2 x1.0 for CIFAR (stride-1 stem, no max-pool): units split the channels in two, transform
one half, concatenate and shuffle the channels so that the halves mix in the next unit."""
from __future__ import annotations

import torch
from torch import nn

from rlpruner.models.layers import ConvBNAct, init_weights
from rlpruner.models.registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*k, H, W) -> (N, k*g, H, W) with channel g_i*k + k_i moved to k_i*g + g_i."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2).contiguous()
    return x.view(batch, channels, height, width)


class ChannelSplit(nn.Module):
    """Splits the channels into two equal halves (a module with a tuple output)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = x.chunk(2, dim=1)
        return left, right


def _branch(in_channels: int, channels: int, stride: int) -> nn.Sequential:
    """1x1 conv-BN-ReLU -> 3x3 depthwise conv-BN (stride) -> 1x1 conv-BN-ReLU."""
    return nn.Sequential(ConvBNAct(in_channels, channels, 1),
                         ConvBNAct(channels, channels, 3, stride, groups=channels, act=None),
                         ConvBNAct(channels, channels, 1))


class BasicUnit(nn.Module):
    """Stride 1: the left half passes through untouched, the right half goes through the branch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = ChannelSplit()
        self.branch = _branch(channels // 2, channels // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.split(x)
        return channel_shuffle(torch.cat([left, self.branch(right)], dim=1), 2)


class DownsampleUnit(nn.Module):
    """Stride 2: both branches see the whole input, which doubles the channel count."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.branch1 = nn.Sequential(
            ConvBNAct(in_channels, in_channels, 3, 2, groups=in_channels, act=None),
            ConvBNAct(in_channels, half, 1))
        self.branch2 = _branch(in_channels, half, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.branch1(x), self.branch2(x)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, stage_channels: tuple[int, ...], repeats: tuple[int, ...], last: int,
                 num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, 24, 3)
        stages: list[nn.Module] = []
        channels = 24
        for out_channels, count in zip(stage_channels, repeats):
            units = [DownsampleUnit(channels, out_channels)]
            units += [BasicUnit(out_channels) for _ in range(count - 1)]
            stages.append(nn.Sequential(*units))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvBNAct(channels, last, 1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stages(self.stem(x)))
        return self.fc(x.mean((2, 3)))


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The x1.0 widths: stages of 116-232-464 channels, repeated 4-8-4 times, then 1024."""
    return ShuffleNetV2((116, 232, 464), (4, 8, 4), 1024, num_classes, in_channels)
