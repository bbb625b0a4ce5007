"""The in-memory image dataset every loader produces, its train/val/test `Splits`, and the split maths."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, applied to whole batches as tensor ops (see `augment.py`)."""

    crop_padding: int = 0          # random crop of the original size out of a zero-padded image
    horizontal_flip: bool = False  # flip with probability 1/2 (off for digits: mirrored digits are wrong)


class ImageDataset(Dataset):
    """Images held as one tensor (N, C, H, W), normalised per channel on access.

    uint8 images (CIFAR, image folders) are kept as uint8 to save memory and scaled to [0, 1] when
    read; float images are taken as already in [0, 1].
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        if images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"images must be (N, C, H, W) with one label each, got {tuple(images.shape)} "
                            f"and {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = mean.float().view(-1, 1, 1)
        self.std = std.float().view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (to_unit_float(self.images[index]) - self.mean) / self.std, self.labels[index]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples at once, normalised: (inputs, labels)."""
        return (to_unit_float(self.images) - self.mean) / self.std, self.labels


@dataclass
class Splits:
    """A dataset cut into disjoint train / validation / test parts.

    Validation exists so that model selection and RL rewards never see the test split.
    """

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None  # None only for data handed in without a test split
    num_classes: int
    in_channels: int
    image_size: int
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classes: tuple[str, ...] = ()

    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """The first `batch_size` validation images: real data for tracing, counting and calibration."""
        return torch.stack([self.val[i][0] for i in range(min(batch_size, len(self.val)))])


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 disjoint parts, class by class; the last part takes the rest.

    Each class is shuffled with a generator seeded by `seed`, so the split depends only on the labels
    and the seed. Every part gets at least one sample of a class when the class is large enough.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for part, fraction in zip(parts, fractions):
            take = int(round(fraction * len(idx)))
            if fraction > 0 and take == 0 and len(idx) - start > 1:
                take = 1
            part.append(idx[start:start + take])
            start += take
        parts[-1].append(idx[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` indices (all when there are fewer) drawn class by class in proportion to the class sizes
    (largest remainder), each class shuffled by a generator seeded with `seed`; sorted."""
    labels = np.asarray(labels)
    if size >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = size * counts / counts.sum()
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((classes, -(quota - take)))  # larger remainder first, then lower class
    take[order[: size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def dataset_labels(dataset: Any) -> np.ndarray:
    """The integer label of every sample: the dataset's `labels` tensor when it has one, else read
    sample by sample (`dataset[i][1]`)."""
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and len(labels) == len(dataset):
        return labels.numpy()
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> None:
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{option} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, C, H, W) images scaled to [0, 1]."""
    mean = torch.zeros(images.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(mean)
    for chunk in images.split(4096):  # chunked: CIFAR as float64 at once would need ~1.2 GB
        x = to_unit_float(chunk).double()
        mean += x.sum(dim=(0, 2, 3))
        sq += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean /= n
    std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.clamp_min(1e-3).float()


def make_splits(name: str, images: torch.Tensor, labels: torch.Tensor, parts: Sequence[np.ndarray], *,
                num_classes: int, augment: AugmentConfig, classes: Sequence[str] = (),
                test: tuple[torch.Tensor, torch.Tensor] | None = None) -> Splits:
    """Build `Splits` from index arrays (train, val[, test]) into `images`; normalised by train stats.

    `test` gives a separate official test set (CIFAR) instead of a third index array.
    """
    train_idx, val_idx = torch.as_tensor(parts[0]), torch.as_tensor(parts[1])
    if test is None:
        test_idx = torch.as_tensor(parts[2])
        test = (images[test_idx], labels[test_idx])
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test[1]) == 0:
        raise DataError(f"dataset '{name}' is too small for a train/val/test split "
                        f"({len(train_idx)}/{len(val_idx)}/{len(test[1])} samples)")
    mean, std = channel_stats(images[train_idx])

    def subset(x: torch.Tensor, y: torch.Tensor) -> ImageDataset:
        return ImageDataset(x, y, mean, std)

    return Splits(name=name, train=subset(images[train_idx], labels[train_idx]),
                  val=subset(images[val_idx], labels[val_idx]), test=subset(*test),
                  num_classes=num_classes, in_channels=images.shape[1], image_size=images.shape[-1],
                  augment=augment, classes=tuple(classes))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to size x size; float in [0, 1] out (uint8 is kept if no resize)."""
    if images.shape[-2:] == (size, size):
        return images
    x = torch.nn.functional.interpolate(to_unit_float(images), size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=size < images.shape[-1])
    return x.clamp_(0.0, 1.0)


def convert_channels(images: torch.Tensor, channels: int, source: str) -> torch.Tensor:
    """Grey -> 3 channels by replication, RGB -> 1 channel by ITU-R 601 luma."""
    have = images.shape[1]
    if channels not in (1, 3):
        raise ConfigError(f"{source}: in_channels={channels} is not supported (use 1 or 3)")
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        grey = (to_unit_float(images) * weights).sum(1, keepdim=True)
        return (grey * 255).round().to(torch.uint8) if images.dtype == torch.uint8 else grey
    raise ConfigError(f"{source}: cannot convert {have}-channel images to in_channels={channels} "
                      "(supported: 1 or 3)")
