"""A generated dataset: each class is a smooth random pattern, seen shifted, rescaled and noisy.

Deterministic by seed and learnable by a small CNN; `difficulty` in [0, 1] blends every class towards
one shared pattern and raises the noise, which gives the benchmarks a harder generated dataset.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import AugmentConfig, Splits, check_fractions, make_splits, stratified_split


def smooth_patterns(count: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random low-frequency images (count, C, size, size), each scaled to unit std."""
    coarse = torch.randn(count, channels, 4, 4, generator=generator)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return (fine - fine.mean(dim=(1, 2, 3), keepdim=True)) / fine.std(dim=(1, 2, 3), keepdim=True)


def random_shifts(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image circularly shifted by its own random (dy, dx) in [-max_shift, max_shift]."""
    shifts = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator)
    return torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])


def generate(num_classes: int, per_class: int, channels: int, size: int, difficulty: float,
             seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (N, C, size, size) and labels, N = num_classes * per_class."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = smooth_patterns(num_classes, channels, size, gen)
    shared = smooth_patterns(1, channels, size, gen)
    templates = (1.0 - 0.7 * difficulty) * prototypes + 0.7 * difficulty * shared
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    contrast = torch.empty(len(labels), 1, 1, 1).uniform_(0.6, 1.4, generator=gen)
    clean = random_shifts(templates[labels] * contrast, max(1, size // 8), gen)
    noise = (0.3 + 1.5 * difficulty) * torch.randn(clean.shape, generator=gen)
    return torch.sigmoid(clean + noise), labels


def load_synthetic(*, image_size: int = 32, in_channels: int = 3, num_classes: int = 10,
                   samples_per_class: int = 200, difficulty: float = 0.3, seed: int = 0,
                   val_fraction: float = 0.1, test_fraction: float = 0.2) -> Splits:
    check_fractions(val_fraction, test_fraction)
    if not 0.0 <= difficulty <= 1.0:
        raise ConfigError(f"synthetic: difficulty must be in [0, 1], got {difficulty}")
    if num_classes < 2 or samples_per_class < 3 or image_size < 4 or in_channels < 1:
        raise ConfigError(f"synthetic: need num_classes >= 2, samples_per_class >= 3, image_size >= 4, "
                          f"in_channels >= 1; got {num_classes}, {samples_per_class}, {image_size}, "
                          f"{in_channels}")
    images, labels = generate(num_classes, samples_per_class, in_channels, image_size, difficulty, seed)
    val, test, train = stratified_split(labels.numpy(), [val_fraction, test_fraction], seed)
    return make_splits("synthetic", images, labels, [train, val, test], num_classes=num_classes,
                       classes=[f"class_{i}" for i in range(num_classes)],
                       augment=AugmentConfig(crop_padding=max(1, image_size // 8), horizontal_flip=False))
