"""ResNeXt-29 for CIFAR: 3 stages x 3 bottleneck blocks whose 3x3 conv is split into `cardinality`
groups. Stage outputs 256-512-1024 (twice the grouped width), projection shortcuts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.models.layers import ConvBNAct, check_positive_int, init_weights
from rlpruner.models.registry import register_model
from rlpruner.models.resnet import shortcut


class ResNeXtBlock(nn.Module):
    def __init__(self, in_channels: int, group_width: int, cardinality: int, stride: int) -> None:
        super().__init__()
        out_channels = 2 * group_width
        self.conv1 = nn.Conv2d(in_channels, group_width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.conv2 = nn.Conv2d(group_width, group_width, 3, stride, padding=1, groups=cardinality,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(group_width)
        self.conv3 = nn.Conv2d(group_width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNeXt29(nn.Module):
    def __init__(self, cardinality: int, bottleneck_width: int, num_classes: int,
                 in_channels: int) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, 64, 3)
        stages = []
        channels = 64
        for index in range(3):
            group_width = cardinality * bottleneck_width * 2 ** index
            blocks = []
            for position in range(3):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(ResNeXtBlock(channels, group_width, cardinality, stride))
                channels = 2 * group_width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("resnext29_32x4d")
def resnext29_32x4d(num_classes: int = 10, in_channels: int = 3, cardinality: int = 32,
                    bottleneck_width: int = 4) -> nn.Module:
    return ResNeXt29(check_positive_int("resnext29", "cardinality", cardinality),
                     check_positive_int("resnext29", "bottleneck_width", bottleneck_width),
                     num_classes, in_channels)
