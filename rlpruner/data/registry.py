"""The dataset registry and `get_dataset`: a name (and options) -> deterministic train/val/test splits."""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import Splits
from .cifar import load_cifar
from .digits import load_digits
from .imagefolder import load_imagefolder
from .synthetic import load_synthetic


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[..., Splits]
    needs_root: bool     # reads files from a folder (CIFAR archives, image folders)
    image_size: int      # defaults when the caller gives None
    in_channels: int


DATASETS: Registry[DatasetEntry] = Registry("dataset")
DATASETS.add("digits", DatasetEntry(load_digits, False, 16, 1))
DATASETS.add("synthetic", DatasetEntry(load_synthetic, False, 32, 3))
DATASETS.add("cifar10", DatasetEntry(partial(load_cifar, "cifar10"), True, 32, 3))
DATASETS.add("cifar100", DatasetEntry(partial(load_cifar, "cifar100"), True, 32, 3))
DATASETS.add("imagefolder", DatasetEntry(load_imagefolder, True, 32, 3))


def list_datasets() -> list[str]:
    return DATASETS.names()


def default_root() -> Path:
    """Where archives are looked for when no root is given: $RLPRUNER_DATA, else ./data."""
    return Path(os.environ.get("RLPRUNER_DATA", "data"))


def get_dataset(name: str, root: str | Path | None = None, *, image_size: int | None = None,
                in_channels: int | None = None, seed: int = 0, val_fraction: float = 0.1,
                **options: Any) -> Splits:
    """Load dataset `name` split into train / val / test. None picks the dataset's own default.

    `options` go to the dataset (e.g. test_fraction; synthetic: num_classes, samples_per_class,
    difficulty); an option the dataset does not take is a ConfigError naming the valid ones.
    """
    entry = DATASETS.get(name)
    image_size = entry.image_size if image_size is None else image_size
    in_channels = entry.in_channels if in_channels is None else in_channels
    if image_size < 1 or in_channels < 1:
        raise ConfigError(f"{name}: image_size and in_channels must be positive, "
                          f"got {image_size} and {in_channels}")
    accepted = set(inspect.signature(entry.load).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = ", ".join(sorted(accepted - {"root", "image_size", "in_channels", "seed", "val_fraction"}))
        raise ConfigError(f"dataset '{name}' has no option {', '.join(unknown)}; valid: {valid or '(none)'}")
    if entry.needs_root:
        options["root"] = default_root() if root is None else Path(root)
    return entry.load(image_size=image_size, in_channels=in_channels, seed=seed, val_fraction=val_fraction,
                      **options)
