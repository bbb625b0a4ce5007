"""VGG-11/13/16/19 with batch norm for CIFAR: 3x3 conv-BN-ReLU stacks and five 2x2 max-pools
(ceil mode, so inputs smaller than 32x32 still work), then a 512-512-classes MLP head."""
from __future__ import annotations

import torch
from torch import nn

from rlpruner.models.layers import check_dropout, check_positive_int, init_weights
from rlpruner.models.registry import register_model

# Numbers are conv widths, "M" is a 2x2 max-pool (the VGG paper's configurations A, B, D, E).
_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


def _features(config: tuple[int | str, ...], in_channels: int) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers), channels


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, hidden: int,
                 dropout: float) -> None:
        super().__init__()
        self.features, channels = _features(_CONFIGS[depth], in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def _vgg(depth: int, num_classes: int, in_channels: int, hidden: int, dropout: float) -> nn.Module:
    return VGG(depth, num_classes, in_channels, check_positive_int(f"vgg{depth}_bn", "hidden", hidden),
               check_dropout(dropout))


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10, in_channels: int = 3, hidden: int = 512,
             dropout: float = 0.5) -> nn.Module:
    return _vgg(11, num_classes, in_channels, hidden, dropout)


@register_model("vgg13_bn")
def vgg13_bn(num_classes: int = 10, in_channels: int = 3, hidden: int = 512,
             dropout: float = 0.5) -> nn.Module:
    return _vgg(13, num_classes, in_channels, hidden, dropout)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, hidden: int = 512,
             dropout: float = 0.5) -> nn.Module:
    return _vgg(16, num_classes, in_channels, hidden, dropout)


@register_model("vgg19_bn")
def vgg19_bn(num_classes: int = 10, in_channels: int = 3, hidden: int = 512,
             dropout: float = 0.5) -> nn.Module:
    return _vgg(19, num_classes, in_channels, hidden, dropout)
