"""CIFAR ResNets: 6n+2 nets (ResNet-8/20/32/56/110, widths 16-32-64) and ResNet-18 (basic) / -50
(bottleneck) with a 3x3 stem and no max-pool, or with `stem="imagenet"` the 7x7 stride-2 stem and
max-pool of the ImageNet models (at 224x224: 3.6 / 8.2 GFLOPs, i.e. 1.8 / 4.1 G multiply-adds). Projection (1x1 conv + BN) shortcuts where the
shape changes ("option B"), identity elsewhere."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.errors import ConfigError
from rlpruner.models.layers import ConvBNAct, init_weights
from rlpruner.models.registry import register_model


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)  # one module, called twice
        self.shortcut = shortcut(in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1 to `expansion` x width, plus the shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, groups: int = 1,
                 expansion: int | None = None) -> None:
        super().__init__()
        out_channels = width * (expansion or self.expansion)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Sequential):
    """stem -> layer1..layerN (first stride 1, then 2) -> global average pool -> fc."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: Sequence[int],
                 widths: Sequence[int], num_classes: int, in_channels: int, stem: str = "cifar") -> None:
        if stem == "cifar":
            parts: list[tuple[str, nn.Module]] = [("stem", ConvBNAct(in_channels, widths[0], 3))]
        elif stem == "imagenet":
            parts = [("stem", ConvBNAct(in_channels, widths[0], 7, stride=2)),
                     ("maxpool", nn.MaxPool2d(3, stride=2, padding=1))]
        else:
            raise ConfigError(f"ResNet stem must be 'cifar' (3x3, no pooling) or 'imagenet' (7x7 stride 2 and "
                              f"max-pool), got {stem!r}")
        channels = widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            parts.append((f"layer{index + 1}", nn.Sequential(*blocks)))
        parts += [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
                  ("fc", nn.Linear(channels, num_classes))]
        super().__init__(OrderedDict(parts))
        init_weights(self)


def _cifar_resnet(blocks_per_stage: int, num_classes: int, in_channels: int) -> nn.Module:
    return ResNet(BasicBlock, [blocks_per_stage] * 3, (16, 32, 64), num_classes, in_channels)


@register_model("resnet8")
def resnet8(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _cifar_resnet(1, num_classes, in_channels)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _cifar_resnet(3, num_classes, in_channels)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _cifar_resnet(5, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _cifar_resnet(9, num_classes, in_channels)


@register_model("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return _cifar_resnet(18, num_classes, in_channels)


@register_model("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3, stem: str = "cifar") -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels, stem)


@register_model("resnet50")
def resnet50(num_classes: int = 10, in_channels: int = 3, stem: str = "cifar") -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, in_channels, stem)
