"""EfficientNet-B0-style net for CIFAR: MBConv blocks (expand, depthwise, SE, project) with SiLU,
stride-1 stem and the first stride-2 stage made stride 1. No stochastic depth."""
from __future__ import annotations

import torch
from torch import nn

from rlpruner.models.layers import (ConvBNAct, SqueezeExcite, check_dropout, check_width_mult,
                                    init_weights, make_divisible)
from rlpruner.models.registry import register_model


class MBConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int,
                 stride: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=nn.SiLU))
        layers += [ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
                   # the squeeze width follows the block's input, not its expanded width
                   SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), nn.SiLU, nn.Sigmoid),
                   ConvBNAct(hidden, out_channels, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# (expand ratio, kernel, stride, channels, repeats) of B0; the 24-channel stage is stride 1 here.
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 1, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, dropout: float) -> None:
        super().__init__()
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, act=nn.SiLU)]
        for expand_ratio, kernel, stride, width, repeats in _B0_STAGES:
            out_channels = make_divisible(width * width_mult)
            for index in range(repeats):
                layers.append(MBConv(channels, out_channels, expand_ratio, kernel,
                                     stride if index == 0 else 1))
                channels = out_channels
        last = make_divisible(1280 * width_mult)
        layers.append(ConvBNAct(channels, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                    dropout: float = 0.2) -> nn.Module:
    return EfficientNet(num_classes, in_channels, check_width_mult(width_mult),
                        check_dropout(dropout))
