"""Supervised training: SGD with momentum, warm-up then cosine LR per iteration, best-on-validation.

The pieces are public so that distillation reuses them with its own loss:

    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, epochs=..., steps_per_epoch=..., warmup_epochs=...)
    stats = train_one_epoch(model, loader, optimizer, scheduler, loss_fn, device)
    metrics = evaluate(model, loader, device)   # {"top1", "top5", "loss", "samples", "correct"}

Accuracies are fractions in [0, 1] everywhere (returned dicts, EpochStats, JSON files); only printed
tables show percent.
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .batches import batch_len, to_device
from .data import Loaders, Splits, make_loaders
from .distributed import World, join
from .errors import CheckpointError, ConfigError, DivergenceError
from .precision import AMP_MODES, Precision

# loss_fn(model_outputs, targets, inputs) -> scalar loss; `inputs` lets distillation run a teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0       # the cosine ends at lr * min_lr_ratio
    label_smoothing: float = 0.0
    nesterov: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    workers: int | None = None      # DataLoader workers; None: 0 for in-memory data, more for streamed folders
    amp: str = "auto"               # autocast: auto (bf16 on CUDA, fp16 + scaler on older GPUs, off on CPU)
    channels_last: bool | None = None  # convolution memory format; None: on for CUDA
    progress: bool | None = None    # tqdm bars; None: only when stderr is a terminal

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"in [0, epochs={self.epochs}]"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("workers", self.workers is None or self.workers >= 0, ">= 0 or None"),
            ("amp", self.amp in AMP_MODES, f"one of {', '.join(AMP_MODES)}"),
        ]
        for option, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"{option} must be {requirement}, got {getattr(self, option)}")


@dataclass
class EpochStats:
    """One training epoch; accuracies are fractions."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    val_loss: float
    val_top1: float
    val_top5: float
    seconds: float


@dataclass
class TrainResult:
    best_epoch: int
    best_val: dict[str, float]
    test: dict[str, float] | None      # of the best-on-validation model; reported, never used to select
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)

    return loss_fn


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD; no weight decay on biases and normalisation scales (1-d tensors), as usual for CNNs."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Linear warm-up from ~0 to 1 over `warmup_steps`, then cosine down to `min_lr_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                   warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: call `scheduler.step()` after every optimizer step."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, int(round(warmup_epochs * steps_per_epoch)))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, min_lr_ratio))


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


# batch_loss(model, batch) -> (scalar loss, outputs): one training step's forward and loss, any task
BatchLoss = Callable[[nn.Module, Any], tuple[torch.Tensor, Any]]


def fit_epoch(model: nn.Module, loader: Iterable[Any], optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler | None, batch_loss: BatchLoss,
              device: str | torch.device, *, progress: bool | None = None, desc: str = "train",
              on_batch: Callable[[Any, Any], dict[str, str]] | None = None,
              max_batches: int | None = None, scaler: torch.amp.GradScaler | None = None,
              world: World | None = None) -> dict[str, float]:
    """One pass over `loader` (its first `max_batches` batches when given; batches of any structure,
    moved to `device`), one optimizer step per batch; returns the mean loss. `on_batch(outputs,
    batch)` may add fields to the progress bar; `scaler` scales fp16 gradients (mixed precision).
    With a `world` of several processes, `model` is DDP-wrapped (`World.training`) and `loader`
    yields this rank's parts: each part's loss is weighted by its share of the whole batch."""
    world = world or World()
    model.train()
    total_loss, seen = 0.0, 0
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    bar = tqdm(batches, desc=desc, leave=False, disable=not (_progress_enabled(progress) and world.main),
               dynamic_ncols=True, total=max_batches)
    for batch in bar:
        batch = to_device(batch, device)
        loss, outputs = batch_loss(model, batch)
        n, finite = batch_len(batch), bool(torch.isfinite(loss))
        weight = world.weight(n, finite, desc)  # 1.0 in one process; all ranks fail together
        if not finite:
            raise DivergenceError(f"{desc}: the training loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        objective = loss if weight == 1.0 else loss * weight
        if scaler is None:
            objective.backward()
            optimizer.step()
        else:  # fp16: scale the loss so small gradients do not underflow; skip steps that overflow
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * n
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", **(on_batch(outputs, batch) if on_batch else {}))
    return {"loss": total_loss / max(1, seen)}


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, loss_fn: LossFn,
                    device: str | torch.device, *, progress: bool | None = None,
                    desc: str = "train", precision: Precision | None = None,
                    world: World | None = None) -> dict[str, float]:
    """One pass over `(inputs, targets)` batches; returns the mean loss and top-1 (fraction) on the
    (augmented) training batches (this rank's parts, with several processes). `precision`: autocast
    and the fp16 gradient scaler."""
    hits = {"correct": 0, "seen": 0}
    precision = precision or Precision()

    def batch_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        with precision.autocast():
            outputs = model(batch[0])
        outputs = outputs.float()
        return loss_fn(outputs, batch[1], batch[0]), outputs

    def count(outputs: Any, batch: Any) -> dict[str, str]:
        hits["correct"] += (outputs.detach().argmax(1) == batch[1]).sum().item()
        hits["seen"] += len(batch[1])
        return {"top1": f"{hits['correct'] / hits['seen']:.1%}"}

    fit = fit_epoch(model, loader, optimizer, scheduler, batch_loss, device, progress=progress, desc=desc,
                    on_batch=count, scaler=precision.scaler(), world=world)
    return {"loss": fit["loss"], "top1": hits["correct"] / max(1, hits["seen"])}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: str | torch.device = "cpu") -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions in [0, 1]) and mean cross-entropy over `loader`, in eval mode,
    with the counts behind them (`correct` top-1 of `samples`).

    With fewer than 5 classes, top-5 is top-k over all classes (1.0). The model's train/eval mode
    is restored afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss, top1, top5, seen = 0.0, 0, 0, 0
    try:
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            total_loss += F.cross_entropy(outputs, targets, reduction="sum").item()
            ranked = outputs.topk(min(5, outputs.shape[1]), dim=1).indices
            hits = ranked == targets[:, None]
            top1 += hits[:, 0].sum().item()
            top5 += hits.any(dim=1).sum().item()
            seen += len(targets)
    finally:
        model.train(was_training)
    n = max(1, seen)
    return {"top1": top1 / n, "top5": top5 / n, "loss": total_loss / n, "samples": seen, "correct": top1}


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' or 'auto' (CUDA when available, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: '{name}' is not a device (use cpu, cuda, cuda:N, mps or auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' requested but CUDA is not available here (use --device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: '{name}' requested but MPS is not available here (use --device cpu)")
    return device


def _is_better(val: dict[str, float], best: dict[str, float] | None) -> bool:
    """Higher validation top-1 wins; on a tie (small val sets tie often) the lower loss wins."""
    if best is None:
        return True
    return val["top1"] > best["top1"] or (val["top1"] == best["top1"] and val["loss"] < best["loss"])


def _save_best(model: nn.Module, path: str | Path, meta: dict[str, Any]) -> None:
    from .io import save  # only needed when a checkpoint is asked for

    try:
        save(model, path, meta=meta)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc


def train(model: nn.Module, data: Splits | Loaders, config: TrainConfig, *,
          on_epoch: Callable[[EpochStats], None] | None = None, checkpoint_path: str | Path | None = None,
          checkpoint_meta: dict[str, Any] | None = None, loss_fn: LossFn | None = None) -> TrainResult:
    """Train `model` in place and leave it holding the weights of its best epoch on VALIDATION.

    `data` is a `Splits` (loaders are built from `config`) or ready `Loaders`. With `checkpoint_path`,
    the best model so far is saved there (atomically) each time validation improves, with
    `checkpoint_meta` plus {"epoch", "val"} as its metadata. The test split is evaluated once, at the
    end, on the selected model.

    Under `torchrun` (several processes), every rank trains its part of the batches one process
    would see, with DistributedDataParallel (`rlpruner.distributed`); rank 0 evaluates, chooses
    and writes the checkpoint, and every rank ends with the same weights and result.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    world = join(device)
    device = world.device(device)
    loaders = replace(data, train=world.shard(data.train)) if isinstance(data, Loaders) else make_loaders(
        data, config.batch_size, workers=config.workers, augment=config.augment, seed=config.seed,
        pin_memory=device.type == "cuda", world=world)
    if len(loaders.train) == 0:
        raise ConfigError("the training split yields no batches")
    precision = Precision.resolve(config.amp, config.channels_last, device)
    precision.prepare(world.sync(model.to(device)))
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, epochs=config.epochs, steps_per_epoch=len(loaders.train),
                               warmup_epochs=config.warmup_epochs, min_lr_ratio=config.min_lr_ratio)
    loss_fn = loss_fn or cross_entropy(config.label_smoothing)
    start = time.perf_counter()
    history: list[EpochStats] = []
    best_val, best_state, best_epoch = None, None, 0
    with world.training(model, device) as trainee:
        for epoch in range(1, config.epochs + 1):
            t0, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            fit = train_one_epoch(trainee, loaders.train, optimizer, scheduler, loss_fn, device,
                                  progress=config.progress, desc=f"epoch {epoch}/{config.epochs}",
                                  precision=precision, world=world)
            val = world.first(lambda: evaluate(model, loaders.val, device), f"epoch {epoch}: validation")
            stats = EpochStats(epoch, lr, fit["loss"], fit["top1"], val["loss"], val["top1"], val["top5"],
                               time.perf_counter() - t0)
            history.append(stats)
            if _is_better(val, best_val):
                best_val, best_epoch = val, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if checkpoint_path is not None:
                    world.first(lambda: _save_best(model, checkpoint_path, {**(checkpoint_meta or {}), "epoch": epoch,
                                                                            "val": val}), "writing the checkpoint")
            if on_epoch is not None and world.main:
                on_epoch(stats)
    model.load_state_dict(best_state)
    test = (world.first(lambda: evaluate(model, loaders.test, device), "the test split")
            if loaders.test is not None else None)
    return TrainResult(best_epoch=best_epoch, best_val=best_val, test=test, history=history,
                       seconds=time.perf_counter() - start)
