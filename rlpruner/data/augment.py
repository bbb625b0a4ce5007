"""Batch augmentation as tensor ops (random crop with zero padding, horizontal flip), no torchvision."""
from __future__ import annotations

import torch
from torch.utils.data import default_collate, get_worker_info

from .base import AugmentConfig


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each (C, H, W) image of the batch at its own offset out of the zero-padded image.

    Zero is the channel mean after normalisation, so the padding reads as "no signal".
    """
    if padding <= 0:
        return images
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0:1] + torch.arange(h)).view(n, 1, h, 1)
    cols = (offsets[:, 1:2] + torch.arange(w)).view(n, 1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    images = random_crop(images, config.crop_padding, generator)
    return random_flip(images, generator) if config.horizontal_flip else images


class AugmentingCollate:
    """Collates (image, label) samples and augments the image batch with its own seeded generator.

    In the main process the generator is seeded from `seed` once, so successive epochs differ but a
    run is reproducible. In a DataLoader worker it is re-seeded from that worker's seed, which the
    loader derives from its own seeded generator: workers never repeat each other's draws.
    """

    def __init__(self, config: AugmentConfig, seed: int):
        self.config = config
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._worker_seed: int | None = None

    def _current_generator(self) -> torch.Generator:
        info = get_worker_info()
        worker_seed = None if info is None else info.seed
        if self._generator is None or worker_seed != self._worker_seed:
            seed = self.seed if worker_seed is None else worker_seed % 2**63
            self._generator = torch.Generator().manual_seed(seed)
            self._worker_seed = worker_seed
        return self._generator

    def __call__(self, samples: list) -> list[torch.Tensor]:
        images, labels = default_collate(samples)
        return [augment_batch(images, self.config, self._current_generator()), labels]
