"""Knowledge-distillation fine-tuning: how RL-Pruner recovers accuracy after pruning.

    loss = (1 - s) · D(student outputs, teacher outputs) + s · task loss(student outputs, batch)

with s = 0.25 by default. D depends on what the model returns (`OUTPUT_KD`, chosen by
`DistillConfig.outputs`):

- ``logits``     T² · KL(softmax(teacher / T) ‖ softmax(student / T)) over dim 1, T = 2: classifiers, and
                 per-pixel class scores (segmentation), averaged over positions;
- ``mse``        mean squared error to the teacher, averaged over every output tensor (tuples and
                 dicts of tensors: detection heads, regression);
- ``smooth_l1``  the same with the smooth-L1 (Huber) distance, less sensitive to outliers;
- ``auto``       (default) ``logits`` when the outputs are one float tensor (N, C, ...) and the batch
                 holds integer labels (N, ...) — a class per sample or per pixel — as its second item
                 or as a value of a dict batch; else ``mse``.

The task loss is cross-entropy for classifiers, or the user's (`rlpruner.task.Task`). The
optimiser, warm-up + cosine schedule and epoch loop are `rlpruner.train`'s. Model selection uses the
validation split and the task's metric; the test split is never touched here.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .batches import batch_len, tensors_of
from .distributed import World
from .errors import ConfigError, DivergenceError
from .precision import Precision
from .registry import Registry
from .task import Task, TaskError
from .train import TrainConfig, fit_epoch, make_optimizer, make_scheduler


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 1                  # per recovery; the paper uses 20 on a GPU
    max_batches: int | None = None   # training batches per epoch at most (ImageNet-size data); None: all
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: float = 0.1       # short warm-up, then cosine
    min_lr_ratio: float = 0.0
    temperature: float = 2.0
    ce_weight: float = 0.25          # s: weight of the task loss (hard-label cross-entropy for classifiers)
    batch_size: int = 64
    augment: bool = True
    switch_teacher: bool = True      # the student becomes the teacher once it beats it on validation
    switch_margin: float = 0.005     # ... by more than this (accuracy, a fraction): noise does not switch
    outputs: str = "auto"            # how outputs are distilled: auto, or one of OUTPUT_KD
    retries: int = 2                 # after a NaN/inf loss: restart from the weights it came in with, lr / 10
    progress: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("max_batches", self.max_batches is None or self.max_batches >= 1, "an integer >= 1 or None"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a finite number > 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_epochs", 0 <= self.warmup_epochs <= max(self.epochs, 1), f"in [0, epochs={self.epochs}]"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("ce_weight", 0 <= self.ce_weight <= 1, "in [0, 1]"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("switch_margin", 0 <= self.switch_margin < 1, "in [0, 1)"),
            ("retries", self.retries >= 0, "an integer >= 0"),
            ("outputs", self.outputs == "auto" or self.outputs in OUTPUT_KD, f"auto or one of {OUTPUT_KD.names()}"),
        ]
        for option, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"KD {option} must be {requirement}, got {getattr(self, option)}")

    def optimizer_config(self) -> TrainConfig:
        """The optimiser settings in `rlpruner.train`'s terms (for `make_optimizer`)."""
        return TrainConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov, batch_size=self.batch_size, warmup_epochs=0.0)


class OutputKD:
    """How a student's outputs are pulled towards the teacher's."""

    name = ""

    def loss(self, student: Any, teacher: Any, weight: float) -> torch.Tensor:
        """`weight` · the distance, differentiable (the training loss term)."""
        raise NotImplementedError

    def distance(self, student: Any, teacher: Any) -> float:
        """The distance summed over the batch's samples (the label-free candidate judge)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LogitsKD(OutputKD):
    temperature: float = 2.0
    name = "logits"

    def loss(self, student: Any, teacher: Any, weight: float) -> torch.Tensor:
        student, teacher = _one_tensor(student, self.name), _one_tensor(teacher, self.name)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True)
        if student.dim() > 2:  # per position (segmentation): the mean over pixels, not their sum
            soft = soft / student[0, 0].numel()
        return weight * t ** 2 * soft

    def distance(self, student: Any, teacher: Any) -> float:
        student, teacher = _one_tensor(student, self.name), _one_tensor(teacher, self.name)
        kl = float(F.kl_div(F.log_softmax(student.float(), 1), F.log_softmax(teacher.float(), 1),
                            reduction="sum", log_target=True))
        return kl / max(1, student[0, 0].numel()) if student.dim() > 2 else kl


@dataclass(frozen=True)
class RegressionKD(OutputKD):
    name: str = "mse"

    def _per_tensor(self, s: torch.Tensor, t: torch.Tensor, reduction: str) -> torch.Tensor:
        fn = F.mse_loss if self.name == "mse" else F.smooth_l1_loss
        return fn(s.float(), t.float(), reduction=reduction)

    def loss(self, student: Any, teacher: Any, weight: float) -> torch.Tensor:
        pairs = _float_pairs(student, teacher, self.name)
        return weight * sum(self._per_tensor(s, t, "mean") for s, t in pairs) / len(pairs)

    def distance(self, student: Any, teacher: Any) -> float:
        pairs = _float_pairs(student, teacher, self.name)
        n = batch_len(student)
        return float(sum(self._per_tensor(s, t, "mean") for s, t in pairs)) / len(pairs) * n


OUTPUT_KD: Registry[Callable[[DistillConfig], OutputKD]] = Registry("output distillation")
OUTPUT_KD.add("logits", lambda config: LogitsKD(config.temperature))
OUTPUT_KD.add("mse", lambda config: RegressionKD("mse"))
OUTPUT_KD.add("smooth_l1", lambda config: RegressionKD("smooth_l1"))


def _one_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        raise TaskError(f"KD outputs={name!r} needs one tensor of class scores (N, C, ...) from the model, got "
                        f"{_describe(value)}; use outputs='mse' for other outputs")
    return value


def _float_pairs(student: Any, teacher: Any, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    s, t = tensors_of(student), tensors_of(teacher)
    pairs = [(a, b) for a, b in zip(s, t) if a.is_floating_point()]
    if len(s) != len(t) or not pairs or any(a.shape != b.shape for a, b in pairs):
        raise TaskError(f"KD outputs={name!r}: the model's outputs ({_describe(student)}) cannot be compared with "
                        f"the teacher's ({_describe(teacher)}); return tensors, or tuples/dicts of tensors")
    return pairs


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {list(value)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def output_kd(config: DistillConfig, outputs: Any, batch: Any) -> OutputKD:
    """The configured output distillation; `auto` looks at one batch and the model's outputs on it."""
    name = config.outputs
    if name == "auto":
        name = "logits" if _class_scores(outputs, batch) else "mse"
    return OUTPUT_KD.get(name)(config)


def _class_scores(outputs: Any, batch: Any) -> bool:
    """Outputs (N, C, ...) of floats, and integer labels (N, ...) in the batch: its second item, or
    any value of a dict batch."""
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point() or outputs.dim() < 2:
        return False
    if isinstance(batch, Mapping):
        candidates = list(batch.values())
    elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
        candidates = [batch[1]]
    else:
        return False
    wanted = tuple(outputs.shape[:1]) + tuple(outputs.shape[2:])
    return any(isinstance(c, torch.Tensor) and not c.is_floating_point() and c.dtype != torch.bool
               and tuple(c.shape) == wanted for c in candidates)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            temperature: float = 2.0, ce_weight: float = 0.25) -> torch.Tensor:
    """(1 - s)·T²·KL(softmax(t/T) ‖ softmax(student/T)) + s·CE; T² keeps gradients comparable across T."""
    soft = LogitsKD(temperature).loss(student_logits, teacher_logits, 1.0 - ce_weight)
    return soft + ce_weight * F.cross_entropy(student_logits, targets)


class TrainValLoaders(Protocol):
    train: Iterable[Any]
    val: Iterable[Any]


@dataclass
class DistillResult:
    student_val: float               # the task metric (top-1 fraction for classifiers) of the returned student
    teacher_val: float
    best_epoch: int                  # 0: no epoch beat the student as it came in
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    retries: int = 0                 # restarts after a diverged (NaN/inf) loss
    lr: float = 0.0                  # the learning rate of the attempt that finished

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distill(student: nn.Module, teacher: nn.Module, loaders: TrainValLoaders, config: DistillConfig, *,
            device: str | torch.device = "cpu", teacher_val: float | None = None, desc: str = "KD",
            task: Task | None = None, outputs: OutputKD | None = None,
            precision: Precision | None = None, world: World | None = None,
            evaluate: Callable[[nn.Module], float] | None = None) -> DistillResult:
    """Fine-tune `student` in place against `teacher` for `config.epochs` epochs.

    `task` says how batches become outputs, the task loss and the metric (default: classification);
    `outputs` how outputs are distilled (default: `config.outputs` resolved on the first batch);
    `precision` gives the fp16 gradient scaler (its autocast is already in `task`'s forward). The
    student keeps the weights of its best validation epoch (the later one on ties, which is further
    down the cosine schedule). `teacher_val` saves one evaluation when the caller knows it. With a
    `world` of several processes, `loaders.train` yields this rank's parts of the batches and training
    is DDP (`World.training`). `evaluate(model)` is the validation metric (default: the task's on
    `loaders.val`; rank 0's with several processes).
    """
    start = time.perf_counter()
    task, world = task or Task(), world or World()

    def validation(model: nn.Module) -> float:
        if evaluate is not None:
            return evaluate(model)
        return world.first(lambda: task.evaluate(model, loaders.val, device), f"{desc}: validation")

    teacher_mode = teacher.training
    teacher.eval()
    teacher_val = validation(teacher) if teacher_val is None else teacher_val
    history: list[dict[str, float]] = []
    retries, lr = 0, config.lr
    if config.epochs == 0 or _empty(loaders.train):
        student_val, best_epoch = validation(student), 0
    else:
        came_in = copy.deepcopy(student.state_dict())
        while True:
            try:
                student_val, best_epoch = _fit(student, teacher, loaders, replace(config, lr=lr), device, desc,
                                               history, task, outputs, precision or Precision(), validation,
                                               world)
                break
            except DivergenceError as exc:  # roll back to the weights it came in with; retry gentler
                student.load_state_dict(came_in)
                history.clear()
                if retries == config.retries:
                    raise DivergenceError(f"{exc} (after {retries} restart(s) from the last good weights, the last "
                                          f"at lr {lr:g}): lower the KD learning rate") from None
                retries, lr = retries + 1, lr / 10
    teacher.train(teacher_mode)
    student.eval()
    return DistillResult(student_val=student_val, teacher_val=teacher_val, best_epoch=best_epoch,
                         history=history, seconds=time.perf_counter() - start, retries=retries, lr=lr)


def _empty(batches: Iterable[Any]) -> bool:
    try:
        return len(batches) == 0  # type: ignore[arg-type]
    except TypeError:
        return False


def _fit(student: nn.Module, teacher: nn.Module, loaders: TrainValLoaders, config: DistillConfig,
         device: str | torch.device, desc: str, history: list[dict[str, float]], task: Task,
         outputs: OutputKD | None, precision: Precision, validation: Callable[[nn.Module], float],
         world: World) -> tuple[float, int]:
    optimizer = make_optimizer(student, config.optimizer_config())
    scaler = precision.scaler()
    steps = _steps_per_epoch(loaders.train)
    steps = steps if config.max_batches is None else min(steps, config.max_batches)
    scheduler = make_scheduler(optimizer, epochs=config.epochs, steps_per_epoch=steps,
                               warmup_epochs=config.warmup_epochs, min_lr_ratio=config.min_lr_ratio)
    chosen: list[OutputKD] = [outputs] if outputs is not None else []

    def batch_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        out = task.forward(model, batch)
        with torch.no_grad():
            reference = task.forward(teacher, batch)
        if not chosen:
            chosen.append(output_kd(config, reference, batch))
        loss = chosen[0].loss(out, reference, 1.0 - config.ce_weight)
        return loss + config.ce_weight * task.batch_loss(out, batch, desc), out

    best_val, best_epoch, best_state = -math.inf, 0, None
    with world.training(student, torch.device(device)) as trainee:
        for epoch in range(1, config.epochs + 1):
            fit = fit_epoch(trainee, loaders.train, optimizer, scheduler, batch_loss, device,
                            progress=config.progress, desc=f"{desc} {epoch}/{config.epochs}", max_batches=steps,
                            scaler=scaler, world=world)
            val = validation(student)
            history.append({"epoch": epoch, "train_loss": fit["loss"], "val_top1": val})
            if val >= best_val:
                best_val, best_epoch = val, epoch
                if epoch < config.epochs:  # the last epoch's weights are already in place
                    best_state = copy.deepcopy(student.state_dict())
    if best_epoch != config.epochs:
        student.load_state_dict(best_state)
    return best_val, best_epoch


def _steps_per_epoch(batches: Iterable[Any]) -> int:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TaskError("the training loader has no length; recovery's learning-rate schedule needs the "
                        "number of batches per epoch (give a DataLoader or a sized iterable)") from exc


def probe(student: nn.Module, batches: list[Any], references: list[Any], config: DistillConfig, task: Task,
          outputs: OutputKD | None, steps: int) -> nn.Module:
    """A copy of `student` after `steps` KD steps on fixed `batches` (cycled) against the teacher's
    `references` on them, at `config.lr`, then BatchNorm re-estimated on the same batches: a cheap
    look at how a candidate starts to recover (the search's probe; `student` is not changed)."""
    from .batchnorm import recalibrate

    trainee = copy.deepcopy(student)  # a structural copy shares tensors with the model it came from
    optimizer = make_optimizer(trainee, config.optimizer_config())
    trainee.train()
    for i in range(steps):
        batch, reference = batches[i % len(batches)], references[i % len(batches)]
        out = task.forward(trainee, batch)
        kd = outputs or output_kd(config, reference, batch)
        loss = kd.loss(out, reference, 1.0 - config.ce_weight) + config.ce_weight * task.batch_loss(out, batch, "probe")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return recalibrate(trainee, batches, task.forward)
