"""Datasets with deterministic train / validation / test splits, and their DataLoaders.

    splits = get_dataset("digits", image_size=16)           # Splits(train, val, test, num_classes, ...)
    splits = DataSpec("digits", image_size=16).load()       # the same, from a storable spec
    loaders = make_loaders(splits, batch_size=64, seed=0)   # Loaders(train, val, test)

Validation is for every choice made while training or pruning; test is only ever reported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from ..distributed import World
from ..errors import ConfigError
from .augment import AugmentingCollate, augment_batch
from .base import AugmentConfig, ImageDataset, Splits, stratified_split
from .imagefolder import StreamingImages
from .registry import DATASETS, DatasetEntry, default_root, get_dataset, list_datasets
from .spec import DataSpec
from .transforms import AugmentSampler, CropConfig

__all__ = ["DATASETS", "AugmentConfig", "CropConfig", "DataSpec", "DatasetEntry", "ImageDataset", "Loaders",
           "Splits", "StreamingImages", "augment_batch", "default_root", "default_workers", "get_dataset",
           "list_datasets", "make_loaders", "stratified_split"]


@dataclass
class Loaders:
    train: DataLoader             # with make_loaders(world=) of several processes: this rank's parts
    val: DataLoader
    test: DataLoader | None = None


def default_workers(dataset: object) -> int:
    """DataLoader workers when none are asked for: up to 8 processes that decode a streamed folder's
    images while the model computes; 0 for anything else (in memory, a worker would only copy tensors)."""
    return max(1, min(8, os.cpu_count() or 1)) if isinstance(dataset, StreamingImages) else 0


def make_loaders(splits: Splits, batch_size: int, *, workers: int | None = 0, augment: bool = True, seed: int = 0,
                 eval_batch_size: int | None = None, pin_memory: bool = False, world: World | None = None) -> Loaders:
    """Seeded loaders: the training one shuffles and augments, the others do not. In-memory images
    are augmented per batch (`splits.augment`); streamed ones per sample, each with its own seed
    (`AugmentSampler`), so the batches do not depend on `workers` (None: `default_workers`).

    The last incomplete training batch is dropped when the split is larger than one batch, so that
    BatchNorm never sees a batch of one. With a `world` of several processes, each rank's training
    loader yields its part of the very batches one process would see: a streamed split reads only
    that part (its batch sampler is cut), an in-memory one cuts each batch after augmentation.
    """
    workers = default_workers(splits.train) if workers is None else workers
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    world = world or World()
    if batch_size < world.size:
        raise ConfigError(f"batch_size {batch_size} is smaller than the number of processes ({world.size}): "
                          "every process needs a part of every batch")
    eval_batch_size = eval_batch_size or max(batch_size, 256)
    generator = torch.Generator().manual_seed(seed)
    per_sample = isinstance(splits.train, StreamingImages)
    own_seeds = per_sample and augment  # AugmentSampler: shuffled indices, each with its augmentation seed
    sampler = AugmentSampler(len(splits.train), generator) if own_seeds else RandomSampler(splits.train,
                                                                                           generator=generator)
    collate = AugmentingCollate(splits.augment, seed) if augment and not per_sample else None
    drop_last = len(splits.train) > batch_size
    # the loader's generator also seeds its workers (one draw before the shuffle, as `shuffle=True` does)
    common = dict(num_workers=workers, collate_fn=collate, persistent_workers=workers > 0, pin_memory=pin_memory,
                  generator=None if own_seeds else generator)
    if per_sample and world.active:
        train = DataLoader(splits.train, batch_sampler=_PartSampler(BatchSampler(sampler, batch_size, drop_last),
                                                                     world), **common)
    else:
        train = world.shard(DataLoader(splits.train, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                                       **common))

    def evaluation(dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=eval_batch_size, shuffle=False, num_workers=workers,
                          pin_memory=pin_memory)

    test = None if splits.test is None else evaluation(splits.test)
    return Loaders(train=train, val=evaluation(splits.val), test=test)


class _PartSampler:
    """A batch sampler cut to one rank's part of every batch (streamed data: each rank decodes only
    its own images)."""

    def __init__(self, batches: BatchSampler, world: World):
        self.batches, self.world = batches, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            block = self.world.share(len(batch))
            yield batch[block.start:block.stop]
