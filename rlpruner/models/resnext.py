"""ResNeXt-29 for CIFAR: 3 stages x 3 bottleneck blocks whose 3x3 conv is split into `cardinality`
groups. Stage outputs 256-512-1024 (twice the grouped width), projection shortcuts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.models.layers import ConvBNAct, check_positive_int, init_weights
from rlpruner.models.registry import register_model
from rlpruner.models.resnet import Bottleneck


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
                blocks.append(Bottleneck(channels, group_width, stride, groups=cardinality, expansion=2))
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
