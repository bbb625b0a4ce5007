"""A small plain CNN for demos and tests: trains on 16x16 digits in seconds."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlpruner.errors import ConfigError
from rlpruner.models.layers import ConvBNAct, init_weights
from rlpruner.models.registry import register_model


class SimpleCNN(nn.Module):
    """Conv-BN-ReLU blocks (the first at full resolution, the rest stride 2), a 2x2 adaptive average
    pool, then flatten: the classifier sees channels x 2 x 2 features, not one per channel."""

    def __init__(self, num_classes: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        blocks = []
        channels = in_channels
        for index, width in enumerate(widths):
            blocks.append(ConvBNAct(channels, width, 3, stride=1 if index == 0 else 2))
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Linear(channels * 2 * 2, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("simple_cnn")
def simple_cnn(num_classes: int = 10, in_channels: int = 3,
               widths: Sequence[int] = (16, 32, 64)) -> nn.Module:
    if (not isinstance(widths, (list, tuple)) or not widths
            or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise ConfigError(f"simple_cnn widths must be a non-empty list of positive integers, "
                          f"not {widths!r}")
    return SimpleCNN(num_classes, in_channels, widths)
