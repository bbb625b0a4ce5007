"""MobileNetV2 and MobileNetV3-Large/-Small for CIFAR: stride-1 stem and the first stride-2 block made
stride 1, so 32x32 inputs end at 4x4 (MobileNetV2 `strides="imagenet"`: the paper's strides, for 224x224). `width_mult`
scales every width (rounded to multiples of 8)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rlpruner.models.layers import (ActivationFactory, ConvBNAct, SqueezeExcite, check_dropout,
                                    check_width_mult, init_weights, make_divisible)
from rlpruner.errors import ConfigError
from rlpruner.models.registry import register_model


class InvertedResidualV2(nn.Module):
    """1x1 expand (skipped at ratio 1) -> 3x3 depthwise -> linear 1x1 project; residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=nn.ReLU6))
        layers += [ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   ConvBNAct(hidden, out_channels, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_residual:
            return x + out
        return out


# (expand ratio, channels, repeats, stride of the first repeat); the paper's table 2, CIFAR strides.
_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, dropout: float,
                 strides: str = "cifar") -> None:
        super().__init__()
        if strides not in ("cifar", "imagenet"):
            raise ConfigError(f"MobileNetV2 strides must be 'cifar' (stride-1 stem and second stage) or "
                              f"'imagenet' (the paper's: 224x224 inputs end at 7x7), got {strides!r}")
        imagenet = strides == "imagenet"
        channels = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stride=2 if imagenet else 1, act=nn.ReLU6)]
        for stage, (expand_ratio, width, repeats, stride) in enumerate(_V2_STAGES):
            stride = 2 if imagenet and stage == 1 else stride
            out_channels = make_divisible(width * width_mult)
            for index in range(repeats):
                layers.append(InvertedResidualV2(channels, out_channels, stride if index == 0 else 1,
                                                 expand_ratio))
                channels = out_channels
        last = make_divisible(1280 * max(1.0, width_mult))
        layers.append(ConvBNAct(channels, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BlockV3(NamedTuple):
    kernel: int
    expanded: int
    out: int
    use_se: bool
    hard_swish: bool
    stride: int


class InvertedResidualV3(nn.Module):
    """V2's block with a k x k depthwise conv, an optional hard-sigmoid SE gate, and ReLU/hard-swish."""

    def __init__(self, in_channels: int, block: BlockV3, expanded: int, out_channels: int) -> None:
        super().__init__()
        act: ActivationFactory = nn.Hardswish if block.hard_swish else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, block.kernel, block.stride, groups=expanded,
                                act=act))
        if block.use_se:
            layers.append(SqueezeExcite(expanded, make_divisible(expanded / 4), nn.ReLU,
                                        nn.Hardsigmoid))
        layers.append(ConvBNAct(expanded, out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = block.stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


# The paper's tables 1 and 2 (kernel, expanded, out, SE, hard-swish, stride); first stride 2 -> 1.
_V3_LARGE = tuple(BlockV3(*row) for row in (
    (3, 16, 16, False, False, 1), (3, 64, 24, False, False, 1), (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1)))
_V3_SMALL = tuple(BlockV3(*row) for row in (
    (3, 16, 16, True, False, 1), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)))


class MobileNetV3(nn.Module):
    def __init__(self, blocks: tuple[BlockV3, ...], head: int, num_classes: int, in_channels: int,
                 width_mult: float, dropout: float) -> None:
        super().__init__()
        channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, act=nn.Hardswish)]
        for block in blocks:
            out_channels = make_divisible(block.out * width_mult)
            expanded = make_divisible(block.expanded * width_mult)
            layers.append(InvertedResidualV3(channels, block, expanded, out_channels))
            channels = out_channels
        last = 6 * channels
        layers.append(ConvBNAct(channels, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(head, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                dropout: float = 0.2, strides: str = "cifar") -> nn.Module:
    return MobileNetV2(num_classes, in_channels, check_width_mult(width_mult), check_dropout(dropout), strides)


@register_model("mobilenetv3_large")
def mobilenetv3_large(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                      dropout: float = 0.2) -> nn.Module:
    return MobileNetV3(_V3_LARGE, 1280, num_classes, in_channels, check_width_mult(width_mult),
                       check_dropout(dropout))


@register_model("mobilenetv3_small")
def mobilenetv3_small(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                      dropout: float = 0.2) -> nn.Module:
    return MobileNetV3(_V3_SMALL, 1024, num_classes, in_channels, check_width_mult(width_mult),
                       check_dropout(dropout))
