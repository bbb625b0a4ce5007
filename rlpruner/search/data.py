"""The data of a compression run: where batches come from, and the fixed batches drawn once.

Two sources:

- `SplitsSource`: rlpruner's own `Splits` (digits, CIFAR, image folders, synthetic). Fixed batches are
  seeded, class-stratified samples; every recovery gets a freshly seeded, augmenting loader.
- `LoaderSource`: the user's own loaders (`(train_loader, val_loader[, test_loader])`), whose batches
  may be tuples, lists or dicts. Fixed batches are seeded random samples of the loader's dataset
  (batched by its own `collate_fn`), or its first batches when it has no indexable dataset;
  recovery iterates the user's training loader, with torch's generator seeded per recovery, so a
  loader that shuffles without its own `generator` shuffles the same way after a resume.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from ..batches import Batch, CachedBatches, batch_len, first_sample, to_device
from ..data import AugmentConfig, Loaders, Splits, default_workers, make_loaders
from ..data.base import dataset_labels, stratified_subset
from ..distributed import World
from ..errors import ConfigError, DataError
from ..importance import Calibration
from ..task import Task, model_inputs
from .config import CompressConfig


class Source(Protocol):
    name: str

    def recovery(self, seed: int, batch_size: int, augment: bool, world: World) -> Iterable[Batch]:
        """Training batches for one recovery (iterated under torch's generator seeded by the caller):
        this rank's part of each (`World.part`), in a multi-process run."""

    def test(self, batch_size: int) -> Iterable[Batch] | None:
        """The test split, evaluated once at the end; None when there is none."""


@dataclass(frozen=True)
class SplitsSource:
    splits: Splits
    workers: int | None = None   # DataLoader workers for streamed data; None: `default_workers`
    pin_memory: bool = False

    @property
    def name(self) -> str:
        return self.splits.name

    def recovery(self, seed: int, batch_size: int, augment: bool, world: World) -> Iterable[Batch]:
        splits = self.splits
        if splits.test is None:  # make_loaders builds a test loader too; it is never iterated here
            splits = replace(splits, test=splits.val)
        return make_loaders(splits, batch_size, augment=augment, seed=seed, workers=self.workers_for(splits.train),
                            pin_memory=self.pin_memory, world=world).train

    def workers_for(self, dataset: Any) -> int:
        """In-memory data is always read in the main process (its batch augmentation draws would
        otherwise depend on the worker count); streamed data by `workers` processes, which never
        changes its batches (`AugmentSampler`)."""
        default = default_workers(dataset)
        return default if self.workers is None or default == 0 else self.workers

    def evaluation(self, dataset: Any, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=self.workers_for(dataset),
                          pin_memory=self.pin_memory)

    def test(self, batch_size: int) -> Iterable[Batch] | None:
        test = self.splits.test
        return self.evaluation(test, batch_size) if test is not None and len(test) > 0 else None


@dataclass(frozen=True)
class LoaderSource:
    train: Iterable[Batch]
    val: Iterable[Batch]
    test_batches: Iterable[Batch] | None = None
    name: str = "loaders"

    def recovery(self, seed: int, batch_size: int, augment: bool, world: World) -> Iterable[Batch]:
        return world.shard(self.train)  # the user's batch size and augmentation

    def test(self, batch_size: int) -> Iterable[Batch] | None:
        return self.test_batches


@dataclass(frozen=True)
class Data:
    source: Source
    example: Any                 # the model's inputs for one sample: tracing, counting, latency
    calibration: Calibration     # training batches for data-driven importance
    val_batches: CachedBatches   # the whole validation split: guard, choices, report (cached on the
                                 # device while it fits in `val_cache_mb`, else streamed every pass)
    score_batches: list[Batch]   # what scores candidates: a subset of validation, or of training images
    bn_batches: list[Batch]      # training batches that recalibrate BatchNorm; [] off
    val_part: CachedBatches | None = None  # this rank's part of validation (several processes, a
                                           # metric of counts: each rank evaluates its part, sums add up)

    @property
    def input_shape(self) -> list[int] | None:
        return list(self.example.shape[1:]) if isinstance(self.example, torch.Tensor) else None


def as_source(data: Any) -> Source:
    """Splits and rlpruner `Loaders` (or any object with `.train`/`.val` loaders: their datasets are
    used, with rlpruner's seeded loaders) are rlpruner's own data; a tuple or list
    `(train, val[, test])` or a mapping with 'train', 'val' (and 'test') holds the user's loaders."""
    if isinstance(data, Splits):
        return SplitsSource(data)
    if isinstance(data, Loaders) or (hasattr(data, "train") and hasattr(data.train, "dataset")
                                     and hasattr(data, "val")):
        test = getattr(data, "test", None)
        return SplitsSource(Splits(name="loaders", train=data.train.dataset, val=data.val.dataset,
                                   test=None if test is None else test.dataset, num_classes=0, in_channels=0,
                                   image_size=0, augment=getattr(data.train.collate_fn, "config", AugmentConfig())))
    if isinstance(data, Mapping) and {"train", "val"} <= set(data):
        return LoaderSource(data["train"], data["val"], data.get("test"))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) in (2, 3):
        return LoaderSource(data[0], data[1], data[2] if len(data) == 3 else None)
    raise ConfigError("compress: data must be (train_loader, val_loader[, test_loader]), a dict with 'train' "
                      f"and 'val' loaders, rlpruner.data.Splits or Loaders; got {type(data).__name__}")


def prepare_data(source: Source, config: CompressConfig, device: torch.device, task: Task,
                 model: nn.Module, world: World | None = None) -> Data:
    """The fixed batches of the run: the calibration batch (importance), validation, the scoring set of
    candidates (a subset of validation, or of training images) and the BatchNorm recalibration
    batches (training data: unaugmented for rlpruner's own data; a user dataset's samples as its
    `__getitem__` gives them, drawn once).
    With several processes and a metric of counts, also this rank's part of validation."""
    world = world or World()
    if isinstance(source, SplitsSource):
        source = replace(source, workers=config.workers, pin_memory=device.type == "cuda")
        val, score, calibration, bn = _from_splits(source, config, device)
    else:
        with torch.random.fork_rng():  # a dataset that augments on access draws from torch's generator
            torch.manual_seed(config.seed)
            val, score, calibration, bn = _from_loaders(source, config, device)
    example = first_sample(model_inputs(model, task.forward, val.first()))
    losses = Calibration(batches=tuple(calibration), forward=task.forward,
                         loss=lambda outputs, batch: task.batch_loss(outputs, batch, "importance"))
    part = _val_part(source, config, device, world) if world.active and task.counts else None
    return Data(source=source, example=example, calibration=losses, val_batches=val, score_batches=score,
                bn_batches=bn, val_part=part)


def _val_part(source: Source, config: CompressConfig, device: torch.device, world: World) -> CachedBatches:
    """This rank's contiguous block of the validation split (rlpruner's data: only its images are
    read), or its part of every batch of the user's validation loader."""
    limit = config.val_cache_bytes // world.size
    if isinstance(source, SplitsSource):
        block = world.share(len(source.splits.val))
        part = Subset(source.splits.val, list(block))
        return CachedBatches(source.evaluation(part, config.eval_batch_size), device, limit)
    return CachedBatches(world.shard(source.val), device, limit)  # type: ignore[attr-defined]


def _from_splits(source: SplitsSource, config: CompressConfig, device: torch.device
                 ) -> tuple[CachedBatches, list, list, list]:
    """Seeded, class-stratified samples."""
    splits = source.splits
    if splits.val is None or len(splits.val) == 0:
        raise DataError(f"{splits.name}: the validation split is empty; RL-Pruner scores candidates on "
                        "validation (never on test), so use val_fraction > 0")
    if len(splits.train) == 0:
        raise DataError(f"{splits.name}: the training split is empty")
    rl, seed = config.rl, config.seed
    val = CachedBatches(source.evaluation(splits.val, config.eval_batch_size), device, config.val_cache_bytes)
    train_labels, workers = dataset_labels(splits.train), source.workers_for(splits.train)
    calibration = subset_batches(splits.train, stratified_subset(train_labels, rl.calibration_samples, seed + 1),
                                 len(splits.train), device, workers)[:1]
    bn_indices = bn_subset(train_labels, rl.bn_samples, seed)
    bn = subset_batches(splits.train, bn_indices, config.eval_batch_size, device, workers) if len(bn_indices) else []
    if rl.score_split == "train":
        picked = train_scoring_subset(train_labels, bn_indices, rl.score_samples, seed)
        score = subset_batches(splits.train, picked, config.eval_batch_size, device, workers)
    elif rl.score_samples is None or rl.score_samples >= len(splits.val):
        score = list(val)
    else:
        score = subset_batches(splits.val, stratified_subset(dataset_labels(splits.val), rl.score_samples, seed),
                               config.eval_batch_size, device, source.workers_for(splits.val))
    return val, score, calibration, bn


def bn_subset(train_labels: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Indices of the training images that re-estimate BatchNorm statistics (class-stratified, seeded);
    none for 0."""
    return stratified_subset(train_labels, samples, seed + 2) if samples else np.zeros(0, int)


def train_scoring_subset(train_labels: np.ndarray, bn_indices: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Indices of `samples` training images that score candidates (`score_split="train"`): class-stratified,
    seeded, and none of the BatchNorm images, so a candidate is never scored on what recalibrated it."""
    free = np.setdiff1d(np.arange(len(train_labels)), bn_indices)
    return free[stratified_subset(train_labels[free], samples, seed + 3)]


def subset_batches(dataset: Any, indices: np.ndarray, batch_size: int, device: torch.device | str = "cpu",
                   workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`(inputs, labels)` batches of `dataset[indices]`, in order, on `device`."""
    loader = DataLoader(Subset(dataset, indices.tolist()), batch_size=batch_size, num_workers=workers)
    return [(x.to(device), torch.as_tensor(y).to(device)) for x, y in loader]


def _from_loaders(source: LoaderSource, config: CompressConfig, device: torch.device
                  ) -> tuple[CachedBatches, list, list, list]:
    """Seeded random samples of the loaders' datasets (no labels to stratify by in general)."""
    rl, seed = config.rl, config.seed
    val = CachedBatches(source.val, device, config.val_cache_bytes)
    total = sum(batch_len(b) for b in val)
    if not total:
        raise DataError("the validation loader yields no batches; RL-Pruner scores candidates on validation")
    if rl.score_split == "train":  # a seeded sample of the training set
        score = _sample(source.train, rl.score_samples, seed + 3, None, device)
    elif rl.score_samples is None or rl.score_samples >= total:
        score = list(val)
    else:
        score = _sample(source.val, rl.score_samples, seed, None, device)
    calibration = _sample(source.train, rl.calibration_samples, seed + 1, rl.calibration_samples, device)
    if not calibration:
        raise DataError("the training loader yields no batches")
    bn = _sample(source.train, rl.bn_samples, seed + 2, None, device) if rl.bn_samples else []
    return val, score, calibration, bn


def _sample(loader: Iterable[Batch], size: int, seed: int, batch_size: int | None,
            device: torch.device) -> list[Batch]:
    """`size` samples of `loader`: a seeded random subset of its dataset, batched by its own collate
    function (`batch_size`, else the loader's), or its first batches when it has no indexable dataset."""
    dataset = getattr(loader, "dataset", None)
    if isinstance(loader, DataLoader) and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
        n = len(dataset)
        picked = np.arange(n) if size >= n else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        subset = DataLoader(Subset(dataset, picked.tolist()), batch_size=batch_size or loader.batch_size or 1,
                            collate_fn=loader.collate_fn)
        return [to_device(b, device) for b in subset]
    taken: list[Batch] = []
    for batch in loader:
        taken.append(to_device(batch, device))
        if sum(batch_len(b) for b in taken) >= size:
            break
    return taken
