"""Importance criteria: one score per unit of every group, aggregated over all of the group's members.

An importance is any callable `(model, graph) -> {group name: np.ndarray of shape (group.size,)}`;
higher means more important. Build a registered one with `get(name, ...)`; register your own with
``CRITERIA.add(name, builder)`` where ``builder(data=, seed=, loss_fn=)`` returns the callable
(`data` is a `Calibration`: batches of any structure, how the model runs on one, the task loss).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .graph import DependencyGraph, Group, Member
from .registry import Registry

Scores = dict[str, np.ndarray]


class Importance(Protocol):
    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores: ...


def _per_position(values: torch.Tensor | np.ndarray, dim: int) -> np.ndarray:
    """Sum of `values` over every dim but `dim`: one number per position of `dim`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().numpy()
    reduce = tuple(d for d in range(values.ndim) if d != dim)
    return values.sum(axis=reduce) if reduce else values


def _numpy(t: torch.Tensor) -> np.ndarray:
    # numpy on small weight tensors avoids torch's per-op threading overhead (thousands of calls)
    return t.detach().cpu().numpy().astype(np.float64)


def _aggregate(group: Group, per_member: Callable[[Member], np.ndarray | None]) -> np.ndarray:
    score = np.zeros(group.size)
    for m in group.members:
        values = per_member(m)
        if values is not None:
            score += np.bincount(m.units, weights=values[m.positions], minlength=group.size)
    return score


@dataclass(frozen=True)
class Magnitude:
    """Group L_p norm of every weight slice of a unit (producer rows, consumer columns, norm params)."""

    p: int = 2

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores:
        params = dict(model.named_parameters())
        cache: dict[tuple[str, int], np.ndarray] = {}  # a consumer weight appears in many groups

        def per_member(m: Member) -> np.ndarray | None:
            if m.param not in params:
                return None
            key = (m.param, m.dim)
            if key not in cache:
                cache[key] = _per_position(np.abs(_numpy(params[m.param])) ** self.p, m.dim)
            return cache[key]

        return {g.name: _aggregate(g, per_member) ** (1.0 / self.p) for g in graph.prunable_groups()}


@dataclass(frozen=True)
class BNScale:
    """|gamma| of the normalisation layers in the group (Network Slimming); L2 where a group has none."""

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores:
        modules = dict(model.named_modules())
        norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        fallback = Magnitude(2)(model, graph)
        scores = {}
        for g in graph.prunable_groups():
            gammas = [m for m in g.members if m.param.endswith(".weight") and isinstance(modules.get(m.module), norms)]
            if not gammas:
                scores[g.name] = fallback[g.name]
                continue
            ids = {id(m) for m in gammas}
            scores[g.name] = _aggregate(
                g, lambda m: _per_position(modules[m.module].weight.abs(), m.dim) if id(m) in ids else None
            )
        return scores


@dataclass(frozen=True)
class Random:
    seed: int = 0

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores:
        rng = np.random.default_rng(self.seed)
        return {g.name: rng.random(g.size) for g in graph.prunable_groups()}


@dataclass(frozen=True)
class Calibration:
    """Batches for the data-driven criteria, with how the model runs on a batch and the task loss
    (Taylor). The classic form, one `(inputs, targets)` pair with a loss of (outputs, targets), is
    `Calibration.of((inputs, targets), loss_fn)`."""

    batches: tuple[Any, ...]
    forward: Callable[[nn.Module, Any], Any]
    loss: Callable[[Any, Any], torch.Tensor]

    @classmethod
    def of(cls, data: Calibration | tuple[Any, torch.Tensor], loss_fn: Callable | None = None) -> Calibration:
        if isinstance(data, Calibration):
            return data
        fn = loss_fn or nn.functional.cross_entropy
        return cls(batches=(tuple(data),), forward=_call_on_inputs, loss=lambda out, batch: fn(out, batch[1]))


def _call_on_inputs(model: nn.Module, batch: Any) -> Any:
    inputs = batch[0]
    return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)


@dataclass(frozen=True)
class Taylor:
    """First-order Taylor: sum over the unit's weights of |w * dL/dw| on the calibration batches."""

    data: Calibration

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores:
        grads = _gradients(model, self.data)
        params = dict(model.named_parameters())
        cache: dict[tuple[str, int], np.ndarray] = {}

        def per_member(m: Member) -> np.ndarray | None:
            if m.param not in grads:
                return None
            if (m.param, m.dim) not in cache:
                cache[(m.param, m.dim)] = _per_position(np.abs(_numpy(params[m.param]) * _numpy(grads[m.param])), m.dim)
            return cache[(m.param, m.dim)]

        return {g.name: _aggregate(g, per_member) for g in graph.prunable_groups()}


def _gradients(model: nn.Module, data: Calibration) -> dict[str, torch.Tensor]:
    """The task loss's gradients, summed over the calibration batches."""
    was = model.training
    model.eval()  # BN statistics must not move while we measure
    saved = {n: p.grad for n, p in model.named_parameters()}
    try:
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for batch in data.batches:
                data.loss(data.forward(model, batch), batch).backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        for n, p in model.named_parameters():
            p.grad = saved[n]
        model.train(was)


@dataclass(frozen=True)
class Activation:
    """A per-channel statistic of the outputs of the layers that produce or normalise each channel, on
    the calibration batches: mean |output| ('activation'), or variance over samples and positions
    ('variance', the paper's criterion: a channel that barely varies carries little information)."""

    data: Calibration
    statistic: str = "mean_abs"

    def __call__(self, model: nn.Module, graph: DependencyGraph) -> Scores:
        modules = dict(model.named_modules())
        wanted = {m.module for g in graph.prunable_groups() for m in g.members if m.dim == 0 and m.param.endswith("weight")}
        moments = _channel_moments(model, self.data, {n: modules[n] for n in wanted if n in modules})
        stats = {name: _STATISTICS[self.statistic](m) for name, m in moments.items()}
        scores = {}
        for g in graph.prunable_groups():
            scores[g.name] = _aggregate(
                g, lambda m: stats.get(m.module) if (m.dim == 0 and m.param.endswith("weight")) else None
            )
        return scores


def _mean_abs(m: np.ndarray) -> np.ndarray:
    return m[2] / m[3]


def _variance(m: np.ndarray) -> np.ndarray:
    mean = m[0] / m[3]
    return np.maximum(m[1] / m[3] - mean * mean, 0.0)


_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean_abs": _mean_abs, "variance": _variance}


def _channel_moments(model: nn.Module, data: Calibration, layers: dict[str, nn.Module]) -> dict[str, np.ndarray]:
    """Per channel of each layer's output, over all calibration batches (float64): the sum, the sum
    of squares, the sum of absolute values and the count, as rows of one array."""
    moments: dict[str, np.ndarray] = {}

    def hook(name: str, module: nn.Module, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            return
        dim = output.dim() - 1 if isinstance(module, nn.Linear) else 1
        x = output.detach().movedim(dim, 0).reshape(output.shape[dim], -1).double()
        part = torch.stack([x.sum(1), (x * x).sum(1), x.abs().sum(1),
                            torch.full((x.shape[0],), float(x.shape[1]), dtype=x.dtype, device=x.device)])
        part = part.cpu().numpy()
        moments[name] = part if name not in moments else moments[name] + part

    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(n, mod, o)) for n, m in layers.items()]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in data.batches:
                data.forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return moments


# name -> builder(data=, seed=, loss_fn=) -> Importance; a builder uses the options its criterion needs.
CRITERIA: Registry[Callable[..., Importance]] = Registry("importance criterion")
CRITERIA.add("l1", lambda **options: Magnitude(1))
CRITERIA.add("l2", lambda **options: Magnitude(2))
CRITERIA.add("bn_scale", lambda **options: BNScale())
CRITERIA.add("random", lambda *, seed, **options: Random(seed))


@CRITERIA.register("taylor")
def _taylor(*, data: Calibration | None, **options: Any) -> Importance:
    return Taylor(_calibration("taylor", data))


@CRITERIA.register("activation")
def _activation(*, data: Calibration | None, **options: Any) -> Importance:
    return Activation(_calibration("activation", data))


@CRITERIA.register("variance")
def _variance_criterion(*, data: Calibration | None, **options: Any) -> Importance:
    return Activation(_calibration("variance", data), "variance")


def _calibration(name: str, data: Calibration | None) -> Calibration:
    if data is None:
        raise ConfigError(f"importance {name!r} needs calibration data: pass data=(inputs, targets) or a Calibration")
    return data


NAMES = tuple(CRITERIA.names())  # the built-in criteria


def get(name: str | Importance, *, data: Calibration | tuple[Any, torch.Tensor] | None = None, seed: int = 0,
        loss_fn: Callable | None = None) -> Importance:
    """A registered criterion by name (or pass a callable through). `data`: a `Calibration`, or one
    `(inputs, targets)` batch scored with `loss_fn(outputs, targets)` (default cross-entropy)."""
    if callable(name):
        return name
    builder = CRITERIA.get(name)
    return builder(data=None if data is None else Calibration.of(data, loss_fn), seed=seed, loss_fn=loss_fn)


def lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` least important units (ties broken by index, deterministic)."""
    return np.sort(np.argsort(scores, kind="stable")[:count])
