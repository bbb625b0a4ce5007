"""GoogLeNet (Inception v1) for CIFAR: a 3x3 stem instead of the 7x7/max-pool one, the paper's nine
inception modules, and no auxiliary heads."""
from __future__ import annotations

import torch
from torch import nn

from rlpruner.models.layers import ConvBNAct, init_weights
from rlpruner.models.registry import register_model


class Inception(nn.Module):
    """Four parallel branches (1x1 | 1x1->3x3 | 1x1->5x5 | 3x3 max-pool->1x1) concatenated."""

    def __init__(self, in_channels: int, ch1x1: int, reduce3x3: int, ch3x3: int, reduce5x5: int,
                 ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = ConvBNAct(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(ConvBNAct(in_channels, reduce3x3, 1),
                                     ConvBNAct(reduce3x3, ch3x3, 3))
        self.branch3 = nn.Sequential(ConvBNAct(in_channels, reduce5x5, 1),
                                     ConvBNAct(reduce5x5, ch5x5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1),
                                     ConvBNAct(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)


# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module, "M" = 3x3/2 max-pool (paper table 1).
_MODULES: tuple[tuple[int, ...] | str, ...] = (
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, 192, 3)
        layers: list[nn.Module] = []
        channels = 192
        for row in _MODULES:
            if row == "M":
                layers.append(nn.MaxPool2d(3, 2, padding=1))
            else:
                ch1x1, _, ch3x3, _, ch5x5, pool_proj = row
                layers.append(Inception(channels, *row))
                channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.inception = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.inception(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


@register_model("googlenet")
def googlenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return GoogLeNet(num_classes, in_channels)
