"""scikit-learn's bundled 8x8 handwritten digits: the embedded default dataset (1797 images, no download)."""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import (AugmentConfig, Splits, check_fractions, convert_channels, make_splits, resize,
                   stratified_split)


def load_digits(*, image_size: int = 16, in_channels: int = 1, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.2) -> Splits:
    """Digits resized (bilinear) to `image_size`, split three ways, stratified by class."""
    from sklearn.datasets import load_digits as sklearn_digits  # only this dataset needs scikit-learn

    check_fractions(val_fraction, test_fraction)
    if image_size < 8:
        raise ConfigError(f"digits: image_size must be >= 8 (the images are 8x8), got {image_size}")
    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    images = convert_channels(resize(images, image_size), in_channels, "digits")
    val, test, train = stratified_split(bunch.target, [val_fraction, test_fraction], seed)
    return make_splits("digits", images, labels, [train, val, test], num_classes=10,
                       classes=[str(d) for d in range(10)],
                       augment=AugmentConfig(crop_padding=max(1, image_size // 8), horizontal_flip=False))
