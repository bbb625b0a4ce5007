"""DenseNet-121 for CIFAR (growth 32, blocks 6-12-24-16, bottleneck width 4x growth, compression 0.5):
a 3x3 stem, every layer sees the concatenation of all earlier feature maps in its block."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.models.layers import init_weights
from rlpruner.models.registry import register_model


class DenseLayer(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 conv (to 4*growth), BN-ReLU-3x3 conv (to growth)."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, dim=1)
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.ModuleList):
    def __init__(self, num_layers: int, in_channels: int, growth: int) -> None:
        super().__init__(DenseLayer(in_channels + i * growth, growth) for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    def __init__(self, block_sizes: tuple[int, ...], growth: int, num_classes: int,
                 in_channels: int) -> None:
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for index, size in enumerate(block_sizes):
            layers.append(DenseBlock(size, channels, growth))
            channels += size * growth
            if index < len(block_sizes) - 1:
                layers.append(Transition(channels, channels // 2))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


@register_model("densenet121")
def densenet121(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DenseNet((6, 12, 24, 16), 32, num_classes, in_channels)
