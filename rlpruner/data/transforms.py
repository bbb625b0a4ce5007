"""Per-sample image crops with Pillow (no torchvision): the usual ImageNet-style training crop
(random-resized crop and horizontal flip) and evaluation crop (the shorter side resized to
size / 0.875, then a centre crop).

The crop boxes are pure functions of the image size and a seeded `torch.Generator`, so a sample's
augmentation depends only on its seed (see `AugmentSampler`), never on the DataLoader worker that
reads it. Pillow crops and resizes in one call (`Image.resize(box=...)`), with its antialiased filters.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError, DataError

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the source image


@dataclass(frozen=True)
class CropConfig:
    size: int                                        # output side (square)
    resize_ratio: float = 0.875                      # evaluation: shorter side -> size / ratio, centre crop
    scale: tuple[float, float] = (0.08, 1.0)         # training: share of the image area the crop covers
    ratio: tuple[float, float] = (3 / 4, 4 / 3)      # training: aspect ratio range of the crop
    horizontal_flip: bool = True

    def __post_init__(self) -> None:
        low, high = self.scale
        if self.size < 1 or not 0 < self.resize_ratio <= 1 or not 0 < low <= high <= 1 \
                or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"crop: need size >= 1, resize_ratio in (0, 1], 0 < scale[0] <= scale[1] <= 1 and "
                              f"0 < ratio[0] <= ratio[1]; got {self}")


def centre_box(width: int, height: int, config: CropConfig) -> Box:
    """The region that, resized to `size`, equals "resize the shorter side to size / ratio, then crop
    the centre size x size"."""
    side = min(width, height) * config.resize_ratio
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def random_resized_box(width: int, height: int, config: CropConfig, generator: torch.Generator) -> Box:
    """A random region of `scale` x the area and an aspect ratio in `ratio` (log-uniform), at a random
    place; after 10 misses the largest centred region whose aspect ratio is in range."""
    area = width * height
    log_low, log_high = math.log(config.ratio[0]), math.log(config.ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (config.scale[0] + u[0] * (config.scale[1] - config.scale[0]))
        aspect = math.exp(log_low + u[1] * (log_high - log_low))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            return (left, top, left + w, top + h)
    aspect = width / height
    if aspect < config.ratio[0]:
        w, h = width, round(width / config.ratio[0])
    elif aspect > config.ratio[1]:
        w, h = round(height * config.ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) / 2, (height - h) / 2
    return (left, top, left + w, top + h)


def read_crop(path: Path, in_channels: int, config: CropConfig, generator: torch.Generator | None) -> np.ndarray:
    """One image file as uint8 (C, size, size): the evaluation crop when `generator` is None, else
    the random training crop (and a flip with probability 1/2)."""
    from PIL import Image  # Pillow comes with matplotlib

    mode = "L" if in_channels == 1 else "RGB"
    try:
        with Image.open(path) as img:
            if generator is None:  # JPEG: decode at a reduced scale that still covers the crop
                side = math.ceil(config.size / config.resize_ratio)
                img.draft(mode, (side, side))
            img = img.convert(mode)
            box = (centre_box(*img.size, config) if generator is None
                   else random_resized_box(*img.size, config, generator))
            img = img.resize((config.size, config.size), Image.Resampling.BILINEAR, box=box)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    if generator is not None and config.horizontal_flip and float(torch.rand(1, generator=generator)) < 0.5:
        array = array[:, ::-1]
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


class AugmentSampler(Sampler):
    """Shuffled indices, each paired with its own augmentation seed, both drawn from one seeded
    generator: `dataset[(index, seed)]`. A sample's crop depends on the run's seed and its place in
    the epoch only, so any number of DataLoader workers yields the same batches."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        seeds = torch.randint(0, 2**62, (self.size,), generator=self.generator).tolist()
        return iter(zip(order, seeds))
