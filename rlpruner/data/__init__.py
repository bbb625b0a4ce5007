"""Datasets with deterministic train / validation / test splits, and their DataLoaders.

    splits = get_dataset("digits", image_size=16)           # Splits(train, val, test, num_classes, ...)
    splits = DataSpec("digits", image_size=16).load()       # the same, from a storable spec
    loaders = make_loaders(splits, batch_size=64, seed=0)   # Loaders(train, val, test)

Validation is for every choice made while training or pruning; test is only ever reported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .augment import AugmentingCollate, augment_batch
from .base import AugmentConfig, ImageDataset, Splits, stratified_split
from .registry import DATASETS, DatasetEntry, default_root, get_dataset, list_datasets
from .spec import DataSpec

__all__ = ["DATASETS", "AugmentConfig", "DataSpec", "DatasetEntry", "ImageDataset", "Loaders", "Splits",
           "augment_batch", "default_root", "get_dataset", "list_datasets", "make_loaders", "stratified_split"]


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader | None = None


def make_loaders(splits: Splits, batch_size: int, *, workers: int = 0, augment: bool = True, seed: int = 0,
                 eval_batch_size: int | None = None) -> Loaders:
    """Seeded loaders: the training one shuffles and augments (with `splits.augment`), the others do not.

    The last incomplete training batch is dropped when the split is larger than one batch, so that
    BatchNorm never sees a batch of one.
    """
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    eval_batch_size = eval_batch_size or max(batch_size, 256)
    collate = AugmentingCollate(splits.augment, seed) if augment else None
    train = DataLoader(splits.train, batch_size=batch_size, shuffle=True, num_workers=workers,
                       collate_fn=collate, drop_last=len(splits.train) > batch_size,
                       generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)

    def evaluation(dataset: ImageDataset) -> DataLoader:
        return DataLoader(dataset, batch_size=eval_batch_size, shuffle=False, num_workers=workers)

    test = None if splits.test is None else evaluation(splits.test)
    return Loaders(train=train, val=evaluation(splits.val), test=test)
