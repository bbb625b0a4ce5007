"""What the model is for: how a batch becomes outputs, the metric that judges it and the loss that
trains it. Everything after tracing (candidate scores, the guard, Taylor importance, recovery, the
report) reaches the user's task only through a `Task`, so any model can be compressed for any task:

    task = Task()                                   # classification: model(batch[0]), top-1, cross-entropy
    task = Task.from_user(metric=miou, loss=seg_loss, forward=lambda m, b: m(b["image"]))

A batch is whatever the user's loader yields: a tensor, a tuple or list, or a dict (nested freely).
`metric(model, batches) -> float` (higher is better) is called with the model in eval mode, without
gradients, on batches already on the model's device. `loss(outputs, batch) -> scalar tensor`.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .batches import Batch
from .errors import ConfigError
from .train import evaluate

Forward = Callable[[nn.Module, Batch], Any]
Metric = Callable[[nn.Module, Iterable[Batch]], float]
Loss = Callable[[Any, Batch], torch.Tensor]


class TaskError(ConfigError):
    """A user's metric, loss, forward or data does not behave as the task contract requires."""


class _Captured(Exception):
    pass


def model_inputs(model: nn.Module, forward: Forward, batch: Batch) -> Any:
    """The inputs `forward(model, batch)` hands the model, captured at the model's call (and the call
    stopped there): a tensor, a tuple of positional inputs or a dict of keyword inputs — what tracing,
    counting and latency measurement feed the model."""
    seen: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Captured

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            forward(model, batch)
    except _Captured:
        pass
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"forward(model, batch) failed on the first validation batch: "
                        f"{type(exc).__name__}: {exc}{_forward_hint(batch)}") from exc
    finally:
        handle.remove()
    if not seen:
        raise TaskError("forward(model, batch) returned without calling the model itself; it must call "
                        "model(...) (not only its submodules)")
    args, kwargs = seen["args"], seen["kwargs"]
    if args and kwargs:
        raise TaskError("forward(model, batch) calls the model with both positional and keyword inputs; "
                        "pass them one way (tracing takes a tuple or a dict)")
    if kwargs:
        return dict(kwargs)
    return args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else tuple(args)


def _forward_hint(batch: Batch) -> str:
    if isinstance(batch, Mapping):
        return f" (the batches are dicts with keys {sorted(batch)}; pass forward= to say which the model takes)"
    return ""


# --------------------------------------------------------------------------------------------------
# The classification defaults
# --------------------------------------------------------------------------------------------------

def classify_forward(model: nn.Module, batch: Batch) -> Any:
    """The default forward: `model(batch[0])` for `(inputs, labels)` batches."""
    if isinstance(batch, Mapping):
        raise TaskError(f"the batches are dicts (keys {sorted(batch)}); the default forward takes "
                        "`model(batch[0])`: pass forward= to say how a batch becomes model outputs")
    return model(batch[0])


def cross_entropy_loss(outputs: Any, batch: Batch) -> torch.Tensor:
    """The default loss: cross-entropy between logits and `batch[1]`."""
    return F.cross_entropy(outputs, labels_of(batch, "loss", "cross-entropy"))


def labels_of(batch: Batch, what: str, default: str) -> torch.Tensor:
    """`batch[1]`: the labels the classification defaults read; a TaskError for other batches."""
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    kind = f"dicts (keys {sorted(batch)})" if isinstance(batch, Mapping) else type(batch).__name__
    raise TaskError(f"the default {what} is {default} against batch[1], but the batches are {kind}; "
                    f"pass {what}= for this task")


def top1(outputs: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> float:
    """Top-1 (fraction) of logits against integer labels, over lists of batches."""
    correct = sum(int((out.argmax(1) == y).sum()) for out, y in zip(outputs, labels))
    return correct / max(1, sum(len(y) for y in labels))


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """How batches, the model, the metric and the loss fit together. `metric=None` is top-1 on
    `(inputs, labels)` batches, computed from outputs the search already has (no extra forward)."""

    forward: Forward = classify_forward
    loss: Loss = cross_entropy_loss
    metric: Metric | None = None
    metric_name: str = "top-1"

    @classmethod
    def from_user(cls, *, metric: Metric | None = None, loss: Loss | None = None,
                  forward: Forward | None = None) -> Task:
        for name, fn in (("metric", metric), ("loss", loss), ("forward", forward)):
            if fn is not None and not callable(fn):
                raise TaskError(f"{name} must be a function, got {type(fn).__name__}")
        return cls(forward=forward or classify_forward, loss=loss or cross_entropy_loss, metric=metric,
                   metric_name="top-1" if metric is None else getattr(metric, "__name__", "metric"))

    @property
    def is_percent(self) -> bool:
        """Whether the metric reads as a percentage (top-1) rather than a plain number."""
        return self.metric is None

    def outputs(self, model: nn.Module, batches: Iterable[Batch]) -> list[Any]:
        """The model's outputs on every batch, in eval mode, without gradients."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [self.forward(model, b) for b in batches]
        finally:
            model.train(was)

    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device | str) -> float:
        """The metric of `model` on `batches` (a whole split: the guard, recovery, the report)."""
        if self.metric is None:
            correct, seen = self.hits(model, batches, device)
            return correct / max(1, seen)
        return self._user_metric(model, batches)

    @property
    def counts(self) -> bool:
        """Whether the metric is a ratio of counts (top-1), which parts of a split add up to: a
        multi-process run then evaluates each rank's part (`hits`) and sums."""
        return self.metric is None

    def hits(self, model: nn.Module, batches: Iterable[Batch], device: torch.device | str) -> tuple[int, int]:
        """(correct, seen) of top-1 on `batches`, batch by batch (a streamed split is never held
        whole), in eval mode."""
        if self.forward is classify_forward:
            result = evaluate(model, batches, device)
            return int(result["correct"]), int(result["samples"])
        was = model.training
        model.eval()
        correct = seen = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    labels = labels_of(batch, "metric", "top-1")
                    correct += int((self.forward(model, batch).argmax(1) == labels).sum())
                    seen += len(labels)
        finally:
            model.train(was)
        return correct, seen

    def score(self, model: nn.Module, batches: Sequence[Batch], outputs: list[Any] | None) -> float:
        """The metric on the scoring set, for ranking candidates: top-1 from the `outputs` the search
        already has (no second forward pass); a user's metric runs on the batches."""
        if self.metric is None:
            labels = [labels_of(b, "metric", "top-1") for b in batches]
            outputs = self.outputs(model, batches) if outputs is None else outputs
            return top1(outputs, labels)
        return self._user_metric(model, batches)

    def _user_metric(self, model: nn.Module, batches: Iterable[Batch]) -> float:
        assert self.metric is not None
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.metric(model, batches)
        finally:
            model.train(was)
        return checked_metric(value, self.metric_name)

    def batch_loss(self, outputs: Any, batch: Batch, where: str) -> torch.Tensor:
        loss = self.loss(outputs, batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise TaskError(f"{where}: loss(outputs, batch) must return a scalar tensor, got {shape}")
        return loss.reshape(())


def checked_metric(value: Any, name: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, bool):  # numpy scalars are Real too
        raise TaskError(f"metric {name!r} must return a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise TaskError(f"metric {name!r} returned {value}; it must be a finite number (higher is better)")
    return float(value)
