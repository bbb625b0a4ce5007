"""Knowledge-distillation fine-tuning: how RL-Pruner recovers accuracy after pruning.

    loss = (1 - s) · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + s · CE(student, y)

with T = 2 and s = 0.25 by default. The optimiser, warm-up + cosine schedule, training epoch and
evaluation are `rlpruner.train`'s; only the loss differs. Model selection uses the validation split;
the test split is never touched here.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .errors import ConfigError
from .train import LossFn, TrainConfig, evaluate, make_optimizer, make_scheduler, train_one_epoch


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 1                  # per recovery; the paper uses 20 on a GPU
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: float = 0.1       # short warm-up, then cosine
    min_lr_ratio: float = 0.0
    temperature: float = 2.0
    ce_weight: float = 0.25          # s: weight of the hard-label cross-entropy
    batch_size: int = 64
    augment: bool = True
    switch_teacher: bool = True      # the student becomes the teacher once it beats it on validation
    switch_margin: float = 0.005     # ... by more than this (accuracy, a fraction): noise does not switch
    progress: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= max(self.epochs, 1), f"in [0, epochs={self.epochs}]"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("ce_weight", 0 <= self.ce_weight <= 1, "in [0, 1]"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("switch_margin", 0 <= self.switch_margin < 1, "in [0, 1)"),
        ]
        for option, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"KD {option} must be {requirement}, got {getattr(self, option)}")

    def optimizer_config(self) -> TrainConfig:
        """The optimiser settings in `rlpruner.train`'s terms (for `make_optimizer`)."""
        return TrainConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov, batch_size=self.batch_size, warmup_epochs=0.0)


class TrainValLoaders(Protocol):
    train: DataLoader
    val: DataLoader


@dataclass
class DistillResult:
    student_val: float               # top-1 (fraction) of the returned student on validation
    teacher_val: float
    best_epoch: int                  # 0: no epoch beat the student as it came in
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float = 2.0, ce_weight: float = 0.25) -> torch.Tensor:
    """(1 - s)·T²·KL(softmax(t/T) ‖ softmax(student/T)) + s·CE; T² keeps gradients comparable across T."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1), reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student_logits, targets)
    return (1.0 - ce_weight) * temperature ** 2 * soft + ce_weight * hard


def distillation_loss(teacher: nn.Module, temperature: float, ce_weight: float) -> LossFn:
    """A `rlpruner.train` loss function that runs `teacher` (frozen, eval mode) on the same inputs."""
    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        return kd_loss(outputs, teacher_logits, targets, temperature, ce_weight)

    return loss_fn


def top1(model: nn.Module, loader: DataLoader, device: str | torch.device) -> float:
    """Validation top-1 as a fraction."""
    return evaluate(model, loader, device)["top1"]


def distill(student: nn.Module, teacher: nn.Module, loaders: TrainValLoaders, config: DistillConfig, *,
            device: str | torch.device = "cpu", teacher_val: float | None = None,
            desc: str = "KD") -> DistillResult:
    """Fine-tune `student` in place against `teacher` for `config.epochs` epochs.

    The student keeps the weights of its best validation epoch (the later one on ties, which is
    further down the cosine schedule). `teacher_val` saves one evaluation when the caller knows it.
    """
    start = time.perf_counter()
    teacher_mode = teacher.training
    teacher.eval()
    teacher_val = top1(teacher, loaders.val, device) if teacher_val is None else teacher_val
    history: list[dict[str, float]] = []
    if config.epochs == 0 or len(loaders.train) == 0:
        student_val, best_epoch = top1(student, loaders.val, device), 0
    else:
        student_val, best_epoch = _fit(student, teacher, loaders, config, device, desc, history)
    teacher.train(teacher_mode)
    student.eval()
    return DistillResult(student_val=student_val, teacher_val=teacher_val, best_epoch=best_epoch,
                         history=history, seconds=time.perf_counter() - start)


def _fit(student: nn.Module, teacher: nn.Module, loaders: TrainValLoaders, config: DistillConfig,
         device: str | torch.device, desc: str, history: list[dict[str, float]]) -> tuple[float, int]:
    optimizer = make_optimizer(student, config.optimizer_config())
    scheduler = make_scheduler(optimizer, epochs=config.epochs, steps_per_epoch=len(loaders.train),
                               warmup_epochs=config.warmup_epochs, min_lr_ratio=config.min_lr_ratio)
    loss_fn = distillation_loss(teacher, config.temperature, config.ce_weight)
    best_val, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, config.epochs + 1):
        fit = train_one_epoch(student, loaders.train, optimizer, scheduler, loss_fn, device,
                              progress=config.progress, desc=f"{desc} {epoch}/{config.epochs}")
        val = top1(student, loaders.val, device)
        history.append({"epoch": epoch, "train_loss": fit["loss"], "val_top1": val})
        if val >= best_val:
            best_val, best_epoch = val, epoch
            if epoch < config.epochs:  # the last epoch's weights are already in place
                best_state = copy.deepcopy(student.state_dict())
    if best_epoch != config.epochs:
        student.load_state_dict(best_state)
    return best_val, best_epoch
