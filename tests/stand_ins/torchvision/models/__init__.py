"""get_model / list_models with builders registered by name, as torchvision.models does."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def add(builder):
        _BUILDERS[name] = builder
        return builder
    return add


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def get_model(name: str, **config) -> nn.Module:
    return _BUILDERS[name](**config)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return (x + self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))).relu()


class _SmallResNet(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_Block(width), _Block(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.layer1(self.bn1(self.conv1(x)).relu())
        return self.fc(x.mean((2, 3)))


def _weights(weights) -> None:
    if weights is not None:
        raise RuntimeError("torchvision stand-in: no pretrained weights")


@register_model("resnet18")
def resnet18(*, weights=None, num_classes: int = 1000) -> nn.Module:
    _weights(weights)
    return _SmallResNet(16, num_classes)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(*, weights=None, num_classes: int = 1000) -> nn.Module:
    _weights(weights)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish(),
                         nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes))
