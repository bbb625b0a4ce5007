"""Peer rows: Torch-Pruning's global pruning under the accuracy benchmark's rules.

    "tp-l2"      tp.importance.GroupMagnitudeImportance(p=2)
    "tp-taylor"  tp.importance.GroupTaylorImportance (gradients of a fixed, seeded training batch)

Both with `global_pruning=True` and the classifier's output layer ignored. What the loop methods get,
the peers get too: the same base model, the same FLOPs schedule (rlpruner's planned number of steps,
each removing the same share of the original FLOPs, the last one ending at the target), BatchNorm
statistics re-estimated on the same training images after each step's pruning, `kd_epochs` of KD
after every step (the student replaces the teacher once it beats it, as in the loop) and the rest of
`kd_budget` as the final fine-tune (benchmarks/accuracy.py `finish`).

Within a step Torch-Pruning ranks every channel group globally, once, and removes the least
important; the harness only chooses the step's pruning ratio: the smallest that reaches the step's
FLOPs goal, found by bisection on copies of the model. FLOPs and parameters are measured with
`rlpruner.count`, as for every other row.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PEER_IMPORTANCE = {"tp-l2": "magnitude", "tp-taylor": "taylor"}
MAX_STEP_RATIO = 0.9      # the largest share of the remaining channels one step may try to remove
BISECTION_ROUNDS = 12     # pruning-ratio resolution: MAX_STEP_RATIO / 2**12


@dataclass(frozen=True)
class PeerStep:
    step: int
    flops_reduction: float
    params_reduction: float


def importance(method: str) -> Any:
    import torch_pruning as tp

    kind = PEER_IMPORTANCE.get(method)
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(f"unknown peer method {method!r}; peers: {', '.join(PEER_IMPORTANCE)}")


def output_layer(model: nn.Module) -> str:
    """Name of the classifier's output layer (the last Linear, else the last conv): never pruned."""
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)] or \
             [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return layers[-1]


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every conv and linear layer, by module name."""
    return {name: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}


def taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Gradients of the cross-entropy on `batch` in every parameter's .grad (eval mode: BatchNorm
    running statistics are left alone)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    inputs, labels = batch
    F.cross_entropy(model(inputs), labels).backward()


def _prune_copy(model: nn.Module, example: torch.Tensor, method: str, ratio: float) -> nn.Module:
    """A copy of `model` with `ratio` of its prunable channels removed by one global Torch-Pruning step."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    for mine, theirs in zip(pruned.parameters(), model.parameters()):  # deepcopy drops .grad
        mine.grad = None if theirs.grad is None else theirs.grad.clone()
    ignored = [dict(pruned.named_modules())[output_layer(pruned)]]
    pruner = tp.pruner.MetaPruner(pruned, example, importance=importance(method), global_pruning=True,
                                  pruning_ratio=ratio, iterative_steps=1, ignored_layers=ignored)
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def prune_step(model: nn.Module, example: torch.Tensor, method: str, goal_flops: int,
               calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """The model pruned by one global Torch-Pruning step with the smallest ratio whose FLOPs are at
    most `goal_flops`; the least-FLOPs copy tried when no ratio gets there (the caller checks)."""
    import rlpruner

    if method == "tp-taylor":
        if calibration is None:
            raise ValueError("tp-taylor needs a calibration batch for its gradients")
        taylor_gradients(model, calibration)
    tried: dict[float, tuple[nn.Module, int]] = {}

    def attempt(ratio: float) -> tuple[nn.Module, int]:
        if ratio not in tried:
            pruned = _prune_copy(model, example, method, ratio)
            tried[ratio] = pruned, rlpruner.count(pruned, example).flops
        return tried[ratio]

    try:
        # Torch-Pruning skips a group that would lose all its channels, so FLOPs are not monotone in the
        # ratio at the very top: take the first passing ratio of a coarse scan as the upper end
        upper = next((r for r in (0.25, 0.5, 0.75, MAX_STEP_RATIO) if attempt(r)[1] <= goal_flops), None)
        if upper is None:
            return min(tried.values(), key=lambda pair: pair[1])[0]
        low, high = 0.0, upper
        for _ in range(BISECTION_ROUNDS):
            middle = (low + high) / 2
            low, high = (low, middle) if attempt(middle)[1] <= goal_flops else (middle, high)
        return attempt(high)[0]
    finally:
        model.zero_grad(set_to_none=True)


AfterStep = Callable[[nn.Module, PeerStep], nn.Module]


def prune_schedule(model: nn.Module, example: torch.Tensor, method: str, goals: list[float],
                   calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
                   after_step: AfterStep | None = None) -> tuple[nn.Module, list[PeerStep]]:
    """Prune step by step to the FLOPs reductions `goals` (rising; the last is the target).

    `after_step(model, step)` runs after each step's pruning (BatchNorm, recovery) and returns the
    model to go on with. A goal already passed is skipped; the schedule stops early when a step
    cannot reach its goal any more."""
    import rlpruner

    base = rlpruner.count(model, example)
    steps: list[PeerStep] = []
    for goal in goals:
        reached = 1.0 - rlpruner.count(model, example).flops / base.flops
        if reached >= goal:
            continue
        model = prune_step(model, example, method, int(base.flops * (1.0 - goal)), calibration)
        now = rlpruner.count(model, example)
        steps.append(PeerStep(len(steps) + 1, 1.0 - now.flops / base.flops, 1.0 - now.params / base.params))
        if after_step is not None:
            model = after_step(model, steps[-1])
        if steps[-1].flops_reduction < goal:
            break
    return model, steps


def flops_goals(step_cost: float, target: float, steps: int) -> list[float]:
    """FLOPs reduction after each of `steps` equal-cost steps (`step_cost`: a step's share of the
    original FLOPs), the last one exactly the target."""
    return [min(step_cost * k, target) for k in range(1, steps)] + [target]


# --------------------------------------------------------------------------------------------------
# One benchmark run (in a worker process)
# --------------------------------------------------------------------------------------------------

def run_peer(job: Any) -> dict[str, Any]:
    """One accuracy-benchmark row for a peer method: the same schedule, recoveries and KD budget as
    the loop methods (`job` is a benchmarks.accuracy.RunJob)."""
    import rlpruner
    from rlpruner import io
    from rlpruner.batchnorm import recalibrate
    from rlpruner.search.context import prepare
    from rlpruner.train import evaluate

    from .accuracy import KD_STEP, compress_config, finish, kd, plan_fields
    from .settings import ALLOW_IMPORTS, kd_plan, portable, recovery_due

    torch.set_num_threads(1)
    settings = job.base.settings
    splits = job.base.dataset.load()
    base = io.load(job.base.path, allow_imports=ALLOW_IMPORTS).eval()
    start = time.perf_counter()
    # the loop's own preparation: its step cost and planned steps, calibration batch and BatchNorm images
    config = compress_config(settings, "uniform", job.target, job.seed, job.recovery)
    ctx = prepare(base, splits, config, job.out_dir, lambda line: None)
    data, example = ctx.data, ctx.data.example
    goals = flops_goals(ctx.step_cost / ctx.base["flops"], job.target, ctx.planned_steps)
    teacher = {"model": base, "val": ctx.base["val_acc"]}
    trajectory: list[list[float]] = []

    def after_step(model: nn.Module, step: PeerStep) -> nn.Module:
        recalibrate(model, data.bn_batches, ctx.task.forward)
        pruned_val = evaluate(model, data.val_batches)["top1"]
        val = pruned_val
        if job.recovery and recovery_due(settings, step.step):
            val = kd(model, teacher["model"], splits, settings, settings.kd_epochs, job.seed, step.step, KD_STEP,
                     teacher_val=teacher["val"]).student_val
            if val > teacher["val"] + 0.005:  # DistillConfig.switch_margin, as the loop's recovery
                teacher.update(model=copy.deepcopy(model).eval(), val=val)
        trajectory.append([step.flops_reduction, pruned_val, val])
        return model

    model, steps = prune_schedule(copy.deepcopy(base), example, job.method, goals, data.calibration.batches[0],
                                 after_step)
    plan = kd_plan(settings, len(steps), job.recovery)
    final = finish(model, base, splits, settings, plan, job.seed, job.out_dir)
    before, after = rlpruner.count(base, example), rlpruner.count(model, example)
    original, pruned = layer_widths(base), layer_widths(model)
    return {"model": job.base.model.label, "dataset": job.base.dataset.label, "method": job.method,
            "target": job.target, "seed": job.seed, "recovery": job.recovery, **final,
            "base_val_acc": ctx.base["val_acc"], "flops_reduction": 1.0 - after.flops / before.flops,
            "params_reduction": 1.0 - after.params / before.params, **plan_fields(plan),
            "seconds": time.perf_counter() - start, "trajectory": trajectory,
            "widths": {name: [original[name], pruned[name]] for name in original},
            "run_dir": portable(job.out_dir)}
