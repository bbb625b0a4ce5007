"""Building blocks shared by the zoo: conv-BN-activation, squeeze-excitation, channel rounding, init."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rlpruner.errors import ConfigError

ActivationFactory = Callable[[], nn.Module]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never losing more than 10% (MobileNet rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def check_positive_int(model: str, option: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{model} {option} must be a positive integer, not {value!r}")
    return value


def check_width_mult(width_mult: float) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ConfigError(f"width_mult must be a positive number, not {width_mult!r}")
    return float(width_mult)


def check_dropout(dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), not {dropout!r}")
    return float(dropout)


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding for odd kernels) -> BatchNorm2d -> activation (or none)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, act: ActivationFactory | None = nn.ReLU) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act() if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Channel gate: global average -> 1x1 reduce -> act -> 1x1 expand -> gate, multiplied into x."""

    def __init__(self, channels: int, reduced: int, act: ActivationFactory = nn.ReLU,
                 gate: ActivationFactory = nn.Sigmoid) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.expand(self.act(self.reduce(scale))))
        return x * scale


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal convs (fan-out, as for ReLU nets), zero conv biases, BN/GN/LN at weight 1, bias 0.

    Linear layers keep PyTorch's default initialisation.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model
