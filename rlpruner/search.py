"""The RL-Pruner loop: prune step by step with a learned pruning distribution until a target is met.

    result = rlpruner.compress(model, splits, CompressConfig(target=Target("flops", 0.6)), out_dir="runs/x")

Per step: trace the current model, score its channels once (Taylor by default), then for `lr_epoch`
rounds sample `sample_num` distributions around the policy's PD, turn each into per-group removal
counts, build the candidate as a cheap structural copy that shares every unchanged tensor, and
score it on the VALIDATION split (never test) with FLOPs/params from the dependency graph's
analytic count. The policy moves towards each round's best; the step's model is chosen
epsilon-greedily from the replay buffer, guarded against accuracy collapse, then recovered by
knowledge distillation. Every step is checkpointed atomically; `resume=True` continues a killed run
and ends exactly where an uninterrupted run with the same seed ends.

All randomness of step k is drawn from generators seeded by (seed, k, ...), so a resumed run needs
no saved generator state to replay bit for bit.

`CompressConfig.method` swaps the learned distribution for a baseline rule (rlpruner.baselines:
"uniform" or "global" magnitude) inside the same loop: same step budget, trimming and recovery.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import baselines, policy
from .data import Loaders, Splits, make_loaders
from .distill import DistillConfig, distill
from .errors import ConfigError, DataError, PruningError
from .report import StepRecord
from .train import evaluate, resolve_device

TARGET_KINDS = ("sparsity", "flops", "params", "latency")
STRATEGIES = ("accuracy", "flops", "params", "latency")
DEFAULT_REWARD_WEIGHT = 0.25  # the paper's alpha/beta for its FLOPs- and params-aware rewards


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Stop when this fraction of the original is removed: channel sparsity (of prunable channels),
    FLOPs, parameters, or measured latency."""

    kind: str = "flops"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target kind {self.kind!r} is not one of {', '.join(TARGET_KINDS)}")
        if not 0.0 < self.value < 1.0:
            raise ConfigError(f"target {self.kind} reduction must be in (0, 1), got {self.value}")


@dataclass(frozen=True)
class Reward:
    """Q = val_top1 + alpha·FLOPs_reduction + beta·params_reduction + lambda·latency_reduction.

    A weight left at None takes 0.25 when it matches `strategy`, else 0."""

    strategy: str = "accuracy"
    flops_weight: float | None = None
    params_weight: float | None = None
    latency_weight: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"reward strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")

    def weights(self) -> tuple[float, float, float]:
        def pick(value: float | None, kind: str) -> float:
            if value is not None:
                return value
            return DEFAULT_REWARD_WEIGHT if self.strategy == kind else 0.0

        return (pick(self.flops_weight, "flops"), pick(self.params_weight, "params"),
                pick(self.latency_weight, "latency"))

    @property
    def needs_latency(self) -> bool:
        return self.weights()[2] != 0.0


@dataclass(frozen=True)
class RLConfig:
    prune_filter_ratio: float = 0.01     # step budget: this share of the original prunable channels
    lr_epoch: int = 10                   # sampling rounds per step
    sample_num: int = 10                 # candidates per round = replay buffer size
    noise: float = 0.04
    step_length: float = 0.1             # lambda of the policy update
    clip: float | None = 0.2             # PPO-style ratio clip delta; None: no clip
    epsilon: float = 0.4
    epsilon_schedule: str = "cosine"
    epsilon_decay_fraction: float = 0.1  # epsilon reaches 0 after this share of the planned steps
    sample_step: int = 1                 # look-ahead depth; > 1 adds gamma·max Q of deeper candidates
    lookahead_samples: int = 2           # candidates drawn per look-ahead level
    gamma: float = 0.9
    guard_threshold: float | None = 0.1  # relative val-accuracy drop that resets the policy; None: off
    guard_retries: int = 2               # resets per step before the step is accepted anyway
    importance: str = "taylor"
    calibration_samples: int = 128       # training images for data-driven importance criteria
    eval_batches: int | None = None      # validation batches per candidate; None: the whole split
    min_keep: int = 1                    # units every group keeps at least
    round_to: int = 1                    # removals per group in multiples of this

    def __post_init__(self) -> None:
        checks = [
            ("prune_filter_ratio", 0 < self.prune_filter_ratio <= 1, "in (0, 1]"),
            ("lr_epoch", self.lr_epoch >= 1, ">= 1"), ("sample_num", self.sample_num >= 1, ">= 1"),
            ("noise", self.noise >= 0, ">= 0"), ("step_length", 0 <= self.step_length <= 1, "in [0, 1]"),
            ("clip", self.clip is None or 0 < self.clip < 1, "in (0, 1) or None"),
            ("epsilon", 0 <= self.epsilon <= 1, "in [0, 1]"),
            ("epsilon_schedule", self.epsilon_schedule in policy.EPSILON_SCHEDULES,
             f"one of {', '.join(policy.EPSILON_SCHEDULES)}"),
            ("epsilon_decay_fraction", 0 <= self.epsilon_decay_fraction <= 1, "in [0, 1]"),
            ("sample_step", self.sample_step >= 1, ">= 1"),
            ("lookahead_samples", self.lookahead_samples >= 1, ">= 1"), ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("guard_threshold", self.guard_threshold is None or 0 < self.guard_threshold < 1, "in (0, 1) or None"),
            ("guard_retries", self.guard_retries >= 0, ">= 0"),
            ("calibration_samples", self.calibration_samples >= 1, ">= 1"),
            ("eval_batches", self.eval_batches is None or self.eval_batches >= 1, ">= 1 or None"),
            ("min_keep", self.min_keep >= 1, ">= 1"), ("round_to", self.round_to >= 1, ">= 1"),
        ]
        for option, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"{option} must be {requirement}, got {getattr(self, option)!r}")


@dataclass(frozen=True)
class CompressConfig:
    target: Target = field(default_factory=Target)
    reward: Reward = field(default_factory=Reward)
    rl: RLConfig = field(default_factory=RLConfig)
    kd: DistillConfig = field(default_factory=DistillConfig)
    post_train_period: int = 1           # KD recovery after every this many steps; 0: none while searching
    final_epochs: int = 3                # KD fine-tune of the final model
    keep: tuple[str, ...] = ()           # module paths never pruned
    eval_batch_size: int = 256
    latency_batch: int = 1
    latency_repeats: int = 20
    latency_warmup: int = 3
    latency_threads: int | None = 1      # single-threaded timing is stable on a busy machine; None: torch's
    seed: int = 0
    device: str = "cpu"
    progress: bool | None = None         # tqdm bars; None: only on a terminal
    method: str = "rl"                   # "rl": the learned distribution; "uniform" / "global": baselines

    def __post_init__(self) -> None:
        baselines.check_method(self.method)
        for option, value, minimum in (("post_train_period", self.post_train_period, 0),
                                       ("final_epochs", self.final_epochs, 0),
                                       ("eval_batch_size", self.eval_batch_size, 1),
                                       ("latency_batch", self.latency_batch, 1),
                                       ("latency_repeats", self.latency_repeats, 1),
                                       ("latency_warmup", self.latency_warmup, 0),
                                       ("latency_threads", self.latency_threads or 1, 1)):
            if value < minimum:
                raise ConfigError(f"{option} must be >= {minimum}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(self)
        data["keep"] = list(self.keep)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompressConfig":
        return cls(target=Target(**data["target"]), reward=Reward(**data["reward"]), rl=RLConfig(**data["rl"]),
                   kd=DistillConfig(**data["kd"]), keep=tuple(data["keep"]),
                   **{k: v for k, v in data.items() if k not in ("target", "reward", "rl", "kd", "keep")})


# --------------------------------------------------------------------------------------------------
# Run context (fixed for the whole run) and search state (what a checkpoint holds)
# --------------------------------------------------------------------------------------------------

_IMPORTANCE, _KD, _FINAL = 1, 2, 3  # purposes mixed into derived seeds
OVERHEAD_KEYS = ("trace", "importance", "policy", "surgery")  # the search's work besides evaluation


@dataclass
class _Timer:
    """Wall seconds per activity. 'eval': candidate forward passes (and latency measurements); the
    search overhead: 'trace', 'importance', 'policy' (sampling, allocation, updates), 'surgery'
    (structural copies and analytic counts); then 'recovery' and 'checkpoint'."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


@dataclass
class _Data:
    splits: Splits
    example: torch.Tensor                            # one validation image: tracing and latency
    calibration: tuple[torch.Tensor, torch.Tensor]   # fixed training batch for data-driven importance
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    candidate_batches: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Context:
    config: CompressConfig
    device: torch.device
    data: _Data
    original: nn.Module
    fingerprint: str
    names: tuple[str, ...]                 # prunable groups of the original model, in model order
    original_sizes: dict[str, int]
    base: dict[str, Any]                   # params, flops, val_acc, candidate_acc, latency_ms
    goal: float                            # units to remove (sparsity) or the most flops/params/ms allowed
    step_budget: int
    planned_steps: int
    out_dir: Path
    timer: _Timer
    log: Callable[[str], None]

    @property
    def total_units(self) -> int:
        return sum(self.original_sizes.values())


@dataclass(frozen=True)
class _Teacher:
    model: nn.Module
    step: int | None                       # the step whose student it is; None: the original model
    val: float                             # its validation accuracy

    @property
    def label(self) -> str:
        return "original" if self.step is None else f"step {self.step}"


@dataclass
class _State:
    step: int
    pd: np.ndarray
    model: nn.Module
    teacher: _Teacher
    acc_ref: float                         # current model's accuracy on the candidate batches (guard)
    removals: list[dict[str, list[int]]]   # per step, in that step's unit numbering (for replay)
    records: list[StepRecord]
    done: bool = False


@dataclass
class _Plan:
    graph: Any                             # rlpruner.graph.DependencyGraph of the current model
    sizes: np.ndarray
    capacity: np.ndarray
    budget: int
    order: dict[str, np.ndarray]           # per open group: units from least to most important


@dataclass(frozen=True)
class _Candidate:
    counts: np.ndarray
    pd: np.ndarray
    acc: float
    params: int
    flops: int
    latency_ms: float | None
    q: float


@dataclass
class CompressResult:
    model: nn.Module                       # the compressed, recovered model (eval mode)
    results: dict[str, Any]                # what results.json holds
    records: list[StepRecord]
    paths: dict[str, Path] = field(default_factory=dict)


def _derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


@contextlib.contextmanager
def _seeded(ctx: _Context, *keys: int) -> Iterator[None]:
    """Torch's global generator seeded from (seed, keys) inside, the caller's state restored after."""
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_derived_seed(ctx.config.seed, *keys))
        yield


def _accuracy(model: nn.Module, batches: list, device: torch.device) -> float:
    return evaluate(model, batches, device)["top1"] / 100.0


# --------------------------------------------------------------------------------------------------
# Preparation: data, the original model's groups, the goal
# --------------------------------------------------------------------------------------------------

def _as_splits(data: Splits | Loaders) -> Splits:
    """Datasets are what the search needs: it builds its own seeded loaders for every recovery."""
    if isinstance(data, Splits):
        return data
    if isinstance(data, Loaders) or (hasattr(data, "train") and hasattr(data.train, "dataset")):
        from .data import AugmentConfig

        test = getattr(data, "test", None)
        return Splits(name="loaders", train=data.train.dataset, val=data.val.dataset,
                      test=None if test is None else test.dataset, num_classes=0, in_channels=0, image_size=0,
                      augment=getattr(data.train.collate_fn, "config", AugmentConfig()))
    raise ConfigError(f"compress: data must be rlpruner.data.Splits or Loaders, not {type(data).__name__}")


def _prepare_data(splits: Splits, config: CompressConfig, device: torch.device) -> _Data:
    from torch.utils.data import DataLoader

    if splits.val is None or len(splits.val) == 0:
        raise DataError(f"{splits.name}: the validation split is empty; RL-Pruner scores candidates on "
                        "validation (never on test), so use val_fraction > 0")
    if len(splits.train) == 0:
        raise DataError(f"{splits.name}: the training split is empty")
    batches = [(x.to(device), y.to(device)) for x, y in DataLoader(splits.val, batch_size=config.eval_batch_size)]
    limit = config.rl.eval_batches
    n = min(config.rl.calibration_samples, len(splits.train))
    samples = [splits.train[i] for i in range(n)]
    calibration = (torch.stack([s[0] for s in samples]).to(device),
                   torch.as_tensor([int(s[1]) for s in samples], device=device))
    return _Data(splits=splits, example=splits.val[0][0].unsqueeze(0).to(device), calibration=calibration,
                 val_batches=batches, candidate_batches=batches if limit is None else batches[:limit])


def _fingerprint(model: nn.Module) -> str:
    """Names, shapes and values of the original weights: a resumed run must start from the same model."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16
                      else tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _measure_ms(config: CompressConfig, model: nn.Module, example: torch.Tensor, device: torch.device) -> float:
    from .metrics import measure_latency

    return measure_latency(model, example, batch_size=config.latency_batch, warmup=config.latency_warmup,
                           repeats=config.latency_repeats, device=device, threads=config.latency_threads).median_ms


def _prepare(model: nn.Module, data: Splits | Loaders, config: CompressConfig, out_dir: Path,
             log: Callable[[str], None]) -> _Context:
    from . import importance
    from .graph import trace

    device = resolve_device(config.device)
    prepared = _prepare_data(_as_splits(data), config, device)
    importance.get(config.rl.importance, data=prepared.calibration)  # an unknown criterion fails here
    original = copy.deepcopy(model).to(device).eval()
    graph = trace(original, prepared.example, keep=config.keep)
    groups = graph.prunable_groups()
    if not groups:
        raise PruningError(f"{type(model).__name__} has no prunable channel group (all frozen or kept)")
    sizes = {g.name: g.size for g in groups}
    params, flops = graph.count()
    val_acc = _accuracy(original, prepared.val_batches, device)
    needs_latency = config.reward.needs_latency or config.target.kind == "latency"
    base = {"params": params, "flops": flops, "val_acc": val_acc,
            "candidate_acc": val_acc if config.rl.eval_batches is None else
            _accuracy(original, prepared.candidate_batches, device),
            "latency_ms": _measure_ms(config, original, prepared.example, device) if needs_latency else None}
    ctx = _Context(config=config, device=device, data=prepared, original=original, fingerprint=_fingerprint(original),
                   names=tuple(sizes), original_sizes=sizes, base=base, goal=0.0, step_budget=0, planned_steps=1,
                   out_dir=out_dir, timer=_Timer(), log=log)
    ctx.step_budget = _initial_budget(ctx)
    ctx.goal, units = _goal(ctx, graph)
    ctx.planned_steps = max(1, math.ceil(units / ctx.step_budget))
    return ctx


def _initial_budget(ctx: _Context) -> int:
    multiple = ctx.config.rl.round_to
    chunks = round(ctx.config.rl.prune_filter_ratio * ctx.total_units / multiple)
    return max(1, chunks) * multiple


def _first_units(names: tuple[str, ...], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Any `counts` units per group: enough for counting params/FLOPs, which depend on counts only."""
    return {n: np.arange(c) for n, c in zip(names, counts) if c > 0}


def _count(graph: Any, removals: Mapping[str, np.ndarray], kind: str) -> int:
    params, flops = graph.count(removals)
    return flops if kind == "flops" else params


def _goal(ctx: _Context, graph: Any) -> tuple[float, int]:
    """(the goal in absolute terms, an estimate of the units to remove); ConfigError if unreachable."""
    target, rl = ctx.config.target, ctx.config.rl
    sizes = np.array(list(ctx.original_sizes.values()))
    capacity = policy.capacity(sizes, rl.min_keep, rl.round_to)
    limit = f"pruning every group down to min_keep={rl.min_keep} unit(s)"
    if target.kind == "sparsity":
        units = math.ceil(target.value * ctx.total_units - 1e-9)
        if units > capacity.sum():
            raise ConfigError(f"target sparsity {target.value:.1%} is unreachable: {limit} removes at most "
                              f"{capacity.sum() / ctx.total_units:.1%} of the {ctx.total_units} prunable channels")
        return float(units), units
    everything = _first_units(ctx.names, capacity)
    proxy = "flops" if target.kind == "latency" else target.kind  # latency: plan the steps by FLOPs
    if target.kind == "latency":
        from .surgery import prune_channels

        smallest = prune_channels(ctx.original, graph, everything, inplace=False)
        most = 1.0 - _measure_ms(ctx.config, smallest, ctx.data.example, ctx.device) / ctx.base["latency_ms"]
    else:
        most = 1.0 - _count(graph, everything, target.kind) / ctx.base[target.kind]
    if target.value > most:
        raise ConfigError(f"target {target.kind} reduction {target.value:.1%} is unreachable: {limit} "
                          f"reduces {target.kind} by at most {max(most, 0.0):.1%}")
    key = "latency_ms" if target.kind == "latency" else target.kind
    return (1.0 - target.value) * ctx.base[key], _units_for(ctx, graph, sizes, capacity, proxy)


def _units_for(ctx: _Context, graph: Any, sizes: np.ndarray, capacity: np.ndarray, kind: str) -> int:
    """Units the density-proportional distribution must remove to reach the target: sets the planned
    number of steps, which only the epsilon schedule uses."""
    multiple = ctx.config.rl.round_to
    pd = policy.density_init(sizes, capacity)
    goal = (1.0 - ctx.config.target.value) * ctx.base[kind]
    lo, hi = 0, int(capacity.sum()) // multiple
    while hi - lo > 1:
        mid = (lo + hi) // 2
        counts = policy.allocate(pd, mid * multiple, capacity, multiple)
        lo, hi = (lo, mid) if _count(graph, _first_units(ctx.names, counts), kind) <= goal else (mid, hi)
    return hi * multiple


# --------------------------------------------------------------------------------------------------
# One step: plan, explore, choose (with the guard), trim to the target
# --------------------------------------------------------------------------------------------------

def _group_table(ctx: _Context, graph: Any) -> tuple[np.ndarray, np.ndarray]:
    """Current size and removable capacity of every group of the original model, in `ctx.names` order."""
    groups = {g.name: g for g in graph.groups}
    sizes = np.array([groups[n].size if n in groups else 0 for n in ctx.names], dtype=np.int64)
    open_ = np.array([n in groups and groups[n].prunable for n in ctx.names])
    rl = ctx.config.rl
    return sizes, np.where(open_, policy.capacity(sizes, rl.min_keep, rl.round_to), 0)


def _importance_order(ctx: _Context, model: nn.Module, graph: Any, capacity: np.ndarray,
                      step: int) -> dict[str, np.ndarray]:
    """Units of each open group from least to most important, scored once per step."""
    from . import importance

    criterion = importance.get(ctx.config.rl.importance, data=ctx.data.calibration,
                               seed=_derived_seed(ctx.config.seed, step, _IMPORTANCE))
    with _seeded(ctx, step, _IMPORTANCE):
        scores = criterion(model, graph)
    return {n: np.argsort(np.asarray(scores[n]), kind="stable") for n, c in zip(ctx.names, capacity) if c > 0}


def _plan_step(ctx: _Context, state: _State, step: int) -> _Plan:
    from .graph import trace

    with ctx.timer("trace"):
        graph = trace(state.model, ctx.data.example, keep=ctx.config.keep)
    with ctx.timer("policy"):
        sizes, capacity = _group_table(ctx, graph)
        budget = min(ctx.step_budget, int(capacity.sum()))
        if ctx.config.target.kind == "sparsity":
            multiple = ctx.config.rl.round_to
            remaining = int(ctx.goal) - (ctx.total_units - int(sizes.sum()))
            budget = min(budget, math.ceil(remaining / multiple) * multiple)
        if budget <= 0:
            raise PruningError(f"step {step}: no channel can be removed any more (every group is at "
                               f"min_keep={ctx.config.rl.min_keep}) and the target is not reached")
    with ctx.timer("importance"):
        order = _importance_order(ctx, state.model, graph, capacity, step)
    return _Plan(graph, sizes, capacity, budget, order)


def _removals(ctx: _Context, plan: _Plan, counts: np.ndarray) -> dict[str, np.ndarray]:
    return {n: plan.order[n][:c] for n, c in zip(ctx.names, counts) if c > 0}


def _reward(ctx: _Context, acc: float, params: int, flops: int, latency_ms: float | None) -> float:
    alpha, beta, lam = ctx.config.reward.weights()
    q = acc + alpha * (1.0 - flops / ctx.base["flops"]) + beta * (1.0 - params / ctx.base["params"])
    if lam and latency_ms is not None:
        q += lam * (1.0 - latency_ms / ctx.base["latency_ms"])
    return q


def _score(ctx: _Context, model: nn.Module, plan: _Plan, counts: np.ndarray, pd: np.ndarray) -> _Candidate:
    """Build one candidate as a structural copy and score it on the candidate validation batches."""
    from .surgery import apply_slices

    with ctx.timer("surgery"):
        slices = plan.graph.slices(_removals(ctx, plan, counts))
        candidate = apply_slices(model, slices, inplace=False)
        params, flops = plan.graph.count(slices=slices)
    with ctx.timer("eval"):
        acc = _accuracy(candidate, ctx.data.candidate_batches, ctx.device)
        latency = (_measure_ms(ctx.config, candidate, ctx.data.example, ctx.device)
                   if ctx.config.reward.needs_latency else None)
    return _Candidate(counts, pd, acc, params, flops, latency, _reward(ctx, acc, params, flops, latency))


def _lookahead(ctx: _Context, model: nn.Module, plan: _Plan, parent: _Candidate, depth: int,
               rng: np.random.Generator) -> list[float]:
    """Q of `lookahead_samples` candidates one more budget deeper than `parent` (recursively)."""
    rl = ctx.config.rl
    room = plan.capacity - parent.counts
    budget = min(plan.budget, int(room.sum()))
    if budget <= 0:
        return []
    qs = []
    for _ in range(rl.lookahead_samples):
        with ctx.timer("policy"):
            pd = policy.sample(parent.pd, rl.noise, rng, room)
            counts = parent.counts + policy.allocate(pd, budget, room, rl.round_to)
        child = _score(ctx, model, plan, counts, pd)
        deeper = _lookahead(ctx, model, plan, child, depth - 1, rng) if depth > 1 else []
        qs.append(policy.lookahead_q(child.q, deeper, rl.gamma))
    return qs


def _explore(ctx: _Context, model: nn.Module, plan: _Plan, pd: np.ndarray, rng: np.random.Generator,
             bar: Any) -> tuple[policy.ReplayBuffer, np.ndarray]:
    """`lr_epoch` rounds of `sample_num` candidates; the policy moves when a round beats the step's best."""
    rl = ctx.config.rl
    buffer, step_best = policy.ReplayBuffer(rl.sample_num), -math.inf
    for _ in range(rl.lr_epoch):
        round_best: policy.Entry | None = None
        for _ in range(rl.sample_num):
            with ctx.timer("policy"):
                sampled = policy.sample(pd, rl.noise, rng, plan.capacity)
                counts = policy.allocate(sampled, plan.budget, plan.capacity, rl.round_to)
            candidate = _score(ctx, model, plan, counts, sampled)
            deeper = _lookahead(ctx, model, plan, candidate, rl.sample_step - 1, rng) if rl.sample_step > 1 else []
            entry = policy.Entry(policy.lookahead_q(candidate.q, deeper, rl.gamma), sampled, candidate)
            buffer = buffer.add(entry)
            round_best = entry if round_best is None or entry.q > round_best.q else round_best
            bar.update(1)
        if round_best.q > step_best:
            with ctx.timer("policy"):
                pd = policy.update(pd, round_best.pd, rl.step_length, rl.clip, plan.capacity)
            step_best = round_best.q
    return buffer, pd


def _choose(ctx: _Context, state: _State, plan: _Plan, step: int, bar: Any) -> tuple[_Candidate, np.ndarray, dict]:
    """Explore, then pick epsilon-greedily; on an accuracy collapse reset the policy and redo the step."""
    rl = ctx.config.rl
    mass = (state.pd * (plan.capacity > 0)).sum()
    pd = policy.masked(state.pd, plan.capacity) if mass > 0 else policy.density_init(plan.sizes, plan.capacity)
    epsilon = policy.epsilon_at(step, ctx.planned_steps, rl.epsilon, rl.epsilon_schedule, rl.epsilon_decay_fraction)
    fallback: policy.Entry | None = None
    for attempt in range(rl.guard_retries + 1):
        rng = np.random.default_rng([ctx.config.seed, step, attempt])
        buffer, pd = _explore(ctx, state.model, plan, pd, rng, bar)
        entry = policy.choose(buffer, epsilon, rng)
        explored = entry is not buffer.best()
        collapsed = (rl.guard_threshold is not None and
                     policy.accuracy_dropped(state.acc_ref, entry.payload.acc, rl.guard_threshold))
        if not collapsed:
            break
        fallback = max((e for e in (fallback, buffer.best()) if e is not None), key=lambda e: e.q)
        if attempt == rl.guard_retries:
            entry, explored = fallback, False  # out of resets: the best candidate of all attempts
            break
        ctx.log(f"step {step}: validation accuracy would fall from {state.acc_ref:.2%} to "
                f"{entry.payload.acc:.2%}; resetting the pruning distribution and redoing the step")
        pd = policy.density_init(plan.sizes, plan.capacity)
        bar.reset(total=bar.total)
    info = {"epsilon": epsilon, "explored": explored, "guard_resets": attempt}
    return replace(entry.payload, q=entry.q), pd, info  # q with its look-ahead term


def _latency_if_needed(ctx: _Context, model: nn.Module, plan: _Plan, candidate: _Candidate) -> float | None:
    if candidate.latency_ms is not None or ctx.config.target.kind != "latency":
        return candidate.latency_ms
    from .surgery import prune_channels

    pruned = prune_channels(model, plan.graph, _removals(ctx, plan, candidate.counts), inplace=False)
    with ctx.timer("eval"):
        return _measure_ms(ctx.config, pruned, ctx.data.example, ctx.device)


def _reaches(ctx: _Context, candidate: _Candidate, latency_ms: float | None, removed_total: int) -> bool:
    kind = ctx.config.target.kind
    value = {"sparsity": -removed_total, "flops": candidate.flops, "params": candidate.params,
             "latency": latency_ms}[kind]
    goal = -ctx.goal if kind == "sparsity" else ctx.goal
    return value <= goal


def _trim(ctx: _Context, model: nn.Module, plan: _Plan, chosen: _Candidate,
          counts_at: Callable[[int], np.ndarray]) -> tuple[_Candidate, float | None]:
    """When the chosen candidate passes the FLOPs/params/latency goal, remove only as many units as
    needed (bisection over the step budget; `counts_at(budget)` allocates a smaller budget the way
    the candidate was allocated)."""
    latency = _latency_if_needed(ctx, model, plan, chosen)
    removed_before = ctx.total_units - int(plan.sizes.sum())
    if ctx.config.target.kind == "sparsity" or not _reaches(ctx, chosen, latency, 0):
        return chosen, latency
    multiple = ctx.config.rl.round_to
    lo, hi, best = 0, plan.budget // multiple, (chosen, latency)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        counts = counts_at(mid * multiple)
        with ctx.timer("surgery"):
            params, flops = plan.graph.count(_removals(ctx, plan, counts))
        probe = replace(chosen, counts=counts, params=params, flops=flops, latency_ms=None)
        probe_latency = _latency_if_needed(ctx, model, plan, probe)
        if _reaches(ctx, probe, probe_latency, removed_before + int(counts.sum())):
            hi, best = mid, (probe, probe_latency)
        else:
            lo = mid
    if best[0] is chosen:
        return best
    rescored = _score(ctx, model, plan, best[0].counts, chosen.pd)
    return rescored, best[1] if rescored.latency_ms is None else rescored.latency_ms


# --------------------------------------------------------------------------------------------------
# Applying a step: surgery, recovery, the step's record
# --------------------------------------------------------------------------------------------------

def _recovery_loaders(ctx: _Context, seed: int, batch_size: int) -> Any:
    """A freshly seeded training loader per recovery (so a resumed run shuffles identically)."""
    from types import SimpleNamespace

    splits = ctx.data.splits
    if splits.test is None:  # make_loaders builds a test loader too; it is never iterated here
        splits = replace(splits, test=splits.val)
    loaders = make_loaders(splits, batch_size, augment=ctx.config.kd.augment, seed=seed)
    return SimpleNamespace(train=loaders.train, val=ctx.data.val_batches)


def _distill(ctx: _Context, model: nn.Module, teacher: _Teacher, epochs: int, *keys: int) -> float:
    """KD fine-tuning for `epochs`; returns the student's validation accuracy."""
    kd = replace(ctx.config.kd, epochs=epochs, progress=ctx.config.progress if ctx.config.kd.progress is None
                 else ctx.config.kd.progress)
    with ctx.timer("recovery"), _seeded(ctx, *keys):
        loaders = _recovery_loaders(ctx, _derived_seed(ctx.config.seed, *keys), kd.batch_size)
        result = distill(model, teacher.model, loaders, kd, device=ctx.device, teacher_val=teacher.val,
                         desc=f"KD {'final' if keys[-1] == _FINAL else f'step {keys[0]}'}")
    return result.student_val


def _recover(ctx: _Context, teacher: _Teacher, model: nn.Module, step: int) -> tuple[float, _Teacher]:
    """(validation accuracy, teacher) after this step's recovery, when one is due."""
    period, kd = ctx.config.post_train_period, ctx.config.kd
    if not period or step % period or kd.epochs == 0:
        with ctx.timer("recovery"):
            return _accuracy(model, ctx.data.val_batches, ctx.device), teacher
    val = _distill(ctx, model, teacher, kd.epochs, step, _KD)
    if kd.switch_teacher and val > teacher.val:
        return val, _Teacher(copy.deepcopy(model).eval(), step, val)
    return val, teacher


def _rl_step(ctx: _Context, state: _State, plan: _Plan, step: int
             ) -> tuple[_Candidate, np.ndarray, dict, float | None]:
    """Explore and choose with the learned distribution, then trim to the target along it."""
    from tqdm import tqdm

    rl, progress = ctx.config.rl, ctx.config.progress
    with tqdm(total=rl.lr_epoch * rl.sample_num, desc=f"step {step}", leave=False, dynamic_ncols=True,
              disable=not (_on_terminal() if progress is None else progress)) as bar:
        chosen, pd, info = _choose(ctx, state, plan, step, bar)
    along = chosen.pd
    chosen, latency = _trim(ctx, state.model, plan, chosen,
                            lambda budget: policy.allocate(along, budget, plan.capacity, rl.round_to))
    return chosen, pd, info, latency


def _baseline_step(ctx: _Context, state: _State, plan: _Plan) -> tuple[_Plan, _Candidate, float | None]:
    """A step allocated by a fixed rule (rlpruner.baselines) instead of the learned distribution:
    the same budget, trimming and recovery, one candidate. 'global' also picks units by its score."""
    multiple = ctx.config.rl.round_to
    if ctx.config.method == "global":
        with ctx.timer("importance"):
            scores = baselines.global_scores(state.model, plan.graph, list(plan.order))
        plan = replace(plan, order={n: np.argsort(s, kind="stable") for n, s in scores.items()})
        per_group = [scores.get(n, np.zeros(0)) for n in ctx.names]

        def counts_at(budget: int) -> np.ndarray:
            return baselines.global_counts(per_group, plan.capacity, budget, multiple)
    else:
        def counts_at(budget: int) -> np.ndarray:
            return baselines.uniform_counts(plan.sizes, plan.capacity, budget, multiple)
    with ctx.timer("policy"):
        counts = counts_at(plan.budget)
    chosen = _score(ctx, state.model, plan, counts, counts / max(int(counts.sum()), 1))
    chosen, latency = _trim(ctx, state.model, plan, chosen, counts_at)
    return plan, chosen, latency


def _run_step(ctx: _Context, state: _State) -> _State:
    from .surgery import prune_channels

    step, before = state.step + 1, ctx.timer.snapshot()
    start = time.perf_counter()
    plan = _plan_step(ctx, state, step)
    rl = ctx.config.rl
    if ctx.config.method == "rl":
        chosen, pd, info, latency = _rl_step(ctx, state, plan, step)
    else:
        plan, chosen, latency = _baseline_step(ctx, state, plan)
        pd, info = chosen.pd, {"epsilon": 0.0, "explored": False, "guard_resets": 0}
    removals = _removals(ctx, plan, chosen.counts)
    with ctx.timer("surgery"):
        model = prune_channels(state.model, plan.graph, removals, inplace=True)
    val, teacher = _recover(ctx, state.teacher, model, step)
    acc_ref = val if rl.eval_batches is None else _accuracy(model, ctx.data.candidate_batches, ctx.device)
    widths = plan.sizes - chosen.counts
    done = _reaches(ctx, chosen, latency, ctx.total_units - int(widths.sum()))
    if not done and int((plan.capacity - chosen.counts).sum()) == 0:
        ctx.log(f"step {step}: every group is down to min_keep={rl.min_keep}; stopping short of the target")
        done = True
    times = {k: v - before.get(k, 0.0) for k, v in ctx.timer.snapshot().items()}
    times["wall_s"] = time.perf_counter() - start
    record = _step_record(ctx, step, chosen, widths, pd, info, val=val, latency=latency, teacher=teacher,
                          times=times)
    return _State(step=step, pd=pd, model=model, teacher=teacher, acc_ref=acc_ref,
                  removals=state.removals + [{n: r.tolist() for n, r in removals.items()}],
                  records=state.records + [record], done=done)


def _step_record(ctx: _Context, step: int, chosen: _Candidate, widths: np.ndarray, pd: np.ndarray, info: dict,
                 *, val: float, latency: float | None, teacher: _Teacher, times: dict[str, float]) -> StepRecord:
    removed_total = ctx.total_units - int(widths.sum())
    return StepRecord(
        step=step, removed=int(chosen.counts.sum()), removed_total=removed_total,
        sparsity=removed_total / ctx.total_units, flops=int(chosen.flops), params=int(chosen.params),
        flops_reduction=1.0 - chosen.flops / ctx.base["flops"],
        params_reduction=1.0 - chosen.params / ctx.base["params"], val_acc_pruned=chosen.acc, val_acc=val,
        reward=chosen.q, epsilon=info["epsilon"], explored=info["explored"], guard_resets=info["guard_resets"],
        teacher=teacher.label, latency_ms=latency, widths={n: int(w) for n, w in zip(ctx.names, widths)},
        pd={n: float(p) for n, p in zip(ctx.names, pd)}, times=times)


def _on_terminal() -> bool:
    import sys

    return sys.stderr.isatty()


def step_line(record: StepRecord) -> str:
    """The one-line log of a step, as the CLI prints it."""
    latency = "" if record.latency_ms is None else f"  latency {record.latency_ms:.3f} ms"
    guard = f"  guard resets {record.guard_resets}" if record.guard_resets else ""
    return (f"step {record.step:3d}  removed {record.removed:4d} (total {record.removed_total}, "
            f"sparsity {record.sparsity:.1%})  FLOPs left {1 - record.flops_reduction:.1%}  "
            f"params left {1 - record.params_reduction:.1%}  val {record.val_acc:.2%} "
            f"(pruned {record.val_acc_pruned:.2%})  reward {record.reward:.4f}{latency}{guard}")


# --------------------------------------------------------------------------------------------------
# Checkpoints: weights per step (named by step, so state.json always points at complete files)
# --------------------------------------------------------------------------------------------------

STATE_FORMAT, STATE_VERSION = "rlpruner.compress-state", 1


def _write_weights(model: nn.Module, path: Path, meta: Mapping[str, Any]) -> None:
    """`rlpruner.io.save` when the model knows how to rebuild itself, else plain safetensors."""
    from . import io

    if getattr(model, "rlpruner_spec", None) is not None:
        io.save(model, path, meta=meta)
        return
    from safetensors.torch import save as safetensors_bytes

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    io.atomic_write_bytes(path, safetensors_bytes(tensors))


def _read_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load as safetensors_load

    from .errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the run directory is incomplete")
    try:
        tensors = safetensors_load(path.read_bytes())
        model.load_state_dict(tensors, strict=True)
    except Exception as exc:  # safetensors' own errors and load_state_dict's RuntimeError alike
        raise CheckpointError(f"{path}: does not fit the model rebuilt from the run's removals: "
                              f"{str(exc).splitlines()[0]}") from exc


def _save_checkpoint(ctx: _Context, state: _State) -> None:
    from .io import atomic_write_json
    from .report import write_logs

    folder = ctx.out_dir / "checkpoint"
    weights = folder / f"step_{state.step:04d}.rlp"
    _write_weights(state.model, weights, {"step": state.step})
    teacher = None
    if state.teacher.step is not None:
        teacher = folder / f"teacher_step_{state.teacher.step:04d}.rlp"
        if not teacher.exists():
            _write_weights(state.teacher.model, teacher, {"step": state.teacher.step})
    atomic_write_json(ctx.out_dir / "state.json", {
        "format": STATE_FORMAT, "version": STATE_VERSION, "config": ctx.config.to_dict(),
        "fingerprint": ctx.fingerprint, "step": state.step, "pd": state.pd.tolist(), "done": state.done,
        "teacher_step": state.teacher.step, "teacher_val": state.teacher.val, "acc_ref": state.acc_ref,
        "weights": weights.relative_to(ctx.out_dir).as_posix(),
        "teacher_weights": None if teacher is None else teacher.relative_to(ctx.out_dir).as_posix(),
        "removals": state.removals, "records": [r.to_dict() for r in state.records]})
    write_logs(ctx.out_dir, state.records)
    for stale in folder.glob("*.rlp"):  # only after state.json points at the new files
        if stale not in (weights, teacher):
            stale.unlink(missing_ok=True)


def _read_state(ctx: _Context) -> dict[str, Any]:
    import json

    from .errors import CheckpointError

    path = ctx.out_dir / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{ctx.out_dir}: nothing to resume (no state.json); run without --resume")
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT or saved.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: not a {STATE_FORMAT} v{STATE_VERSION} file")
    if saved["fingerprint"] != ctx.fingerprint:
        raise CheckpointError(f"{path}: the run was started from a different model (weights or architecture "
                              "differ); resume with the same model or use a new output directory")
    _check_same_config(ctx.config, saved["config"], path)
    return saved


def _check_same_config(config: CompressConfig, saved: Mapping[str, Any], path: Path) -> None:
    """A resumed run must use the options it started with (progress bars excepted)."""
    from .errors import CheckpointError

    def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            elif not key.endswith("progress"):
                out[prefix + key] = value
        return out

    now, then = flat(config.to_dict()), flat(saved)
    changed = [f"{k} (run: {then.get(k)!r}, now: {now.get(k)!r})" for k in sorted(set(now) | set(then))
               if now.get(k) != then.get(k)]
    if changed:
        raise CheckpointError(f"{path}: cannot resume with different options: {'; '.join(changed[:5])}")


def _replay(ctx: _Context, removals: list[dict[str, list[int]]], teacher_step: int | None
            ) -> tuple[nn.Module, nn.Module]:
    """Rebuild the architecture of every step by re-applying its removals to the original model."""
    from .errors import CheckpointError, RLPrunerError
    from .graph import trace
    from .surgery import prune_channels

    model, teacher = copy.deepcopy(ctx.original), ctx.original
    for step, step_removals in enumerate(removals, start=1):
        try:
            graph = trace(model, ctx.data.example, keep=ctx.config.keep)
            model = prune_channels(model, graph, {n: np.asarray(u, dtype=np.int64) for n, u in step_removals.items()})
        except RLPrunerError as exc:
            raise CheckpointError(f"{ctx.out_dir}: step {step} of the saved run does not apply to this model: "
                                  f"{exc}") from exc
        if step == teacher_step:
            teacher = copy.deepcopy(model)
    return model, teacher


def _resumed_state(ctx: _Context) -> _State:
    saved = _read_state(ctx)
    model, teacher = _replay(ctx, saved["removals"], saved["teacher_step"])
    _read_weights(model, ctx.out_dir / saved["weights"])
    if saved["teacher_step"] is not None:
        _read_weights(teacher, ctx.out_dir / saved["teacher_weights"])
    return _State(step=saved["step"], pd=np.asarray(saved["pd"], dtype=np.float64), model=model,
                  teacher=_Teacher(teacher.eval(), saved["teacher_step"], saved["teacher_val"]),
                  acc_ref=saved["acc_ref"], removals=saved["removals"],
                  records=[StepRecord.from_dict(r) for r in saved["records"]], done=saved["done"])


def _fresh_state(ctx: _Context) -> _State:
    sizes = np.array(list(ctx.original_sizes.values()))
    capacity = policy.capacity(sizes, ctx.config.rl.min_keep, ctx.config.rl.round_to)
    return _State(step=0, pd=policy.density_init(sizes, capacity), model=copy.deepcopy(ctx.original),
                  teacher=_Teacher(ctx.original, None, ctx.base["val_acc"]),
                  acc_ref=ctx.base["candidate_acc"], removals=[], records=[])


# --------------------------------------------------------------------------------------------------
# The public entry point and the final fine-tune / report
# --------------------------------------------------------------------------------------------------

def compress(model: nn.Module, data: Splits | Loaders, config: CompressConfig | None = None, *,
             out_dir: str | Path, resume: bool = False, overwrite: bool = False,
             log: Callable[[str], None] | None = None, on_step: Callable[[StepRecord], None] | None = None,
             evaluate_test: bool = True, meta: Mapping[str, Any] | None = None) -> CompressResult:
    """Compress `model` with RL-Pruner until `config.target` is met; returns the recovered model.

    `data`: `Splits` (or `Loaders`, whose datasets are used). Candidates are scored on `data.val`;
    `data.test`, when present and `evaluate_test`, is evaluated ONCE, on the final model, for the
    report. `out_dir` receives the checkpoint (after every step), logs, plots, results.json,
    summary.md and the final model (model.rlp). `resume=True` continues the run saved in `out_dir`;
    a fresh run refuses a directory holding another run unless `overwrite`. `log` receives one line
    per step; `on_step` is called with each step's record after its checkpoint is written. `meta`
    is added to the saved model's metadata (e.g. the data spec). The input model is not modified.
    """
    config = config or CompressConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, resume, overwrite)
    ctx = _prepare(model, data, config, out_dir, log or (lambda line: None))
    if not resume:
        _clear_run(out_dir)  # only once the new run's options and target have been checked
    state = _resumed_state(ctx) if resume else _fresh_state(ctx)
    if resume:
        ctx.log(f"resuming {out_dir} after step {state.step}")
    while not state.done:
        state = _run_step(ctx, state)
        with ctx.timer("checkpoint"):
            _save_checkpoint(ctx, state)
        ctx.log(step_line(state.records[-1]))
        if on_step is not None:
            on_step(state.records[-1])
    return _finish(ctx, state, evaluate_test, dict(meta or {}))


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output directory {out_dir} is a file")
    state = out_dir / "state.json"
    if resume or not state.exists():
        return
    if not overwrite:
        raise ConfigError(f"{out_dir} already holds a compression run; resume it (--resume), overwrite it "
                          "(--overwrite) or choose another output directory")


def _clear_run(out_dir: Path) -> None:
    (out_dir / "state.json").unlink(missing_ok=True)
    for old in (out_dir / "checkpoint").glob("*.rlp"):
        old.unlink()


def _finish(ctx: _Context, state: _State, evaluate_test: bool, meta: dict[str, Any]) -> CompressResult:
    """Final fine-tune, final measurements (test split once, here), the saved model and the report."""
    from .graph import trace
    from .report import write_report

    model, start = state.model, time.perf_counter()
    if ctx.config.final_epochs > 0:
        _distill(ctx, model, state.teacher, ctx.config.final_epochs, state.step, _FINAL)
    model.eval()
    params, flops = trace(model, ctx.data.example, keep=ctx.config.keep).count()
    final = {"params": params, "flops": flops, "val_acc": _accuracy(model, ctx.data.val_batches, ctx.device),
             "latency_ms": _measure_ms(ctx.config, model, ctx.data.example, ctx.device)}
    base = {k: ctx.base[k] for k in ("params", "flops", "val_acc")}
    base["latency_ms"] = _measure_ms(ctx.config, ctx.original, ctx.data.example, ctx.device)
    test = ctx.data.splits.test
    if evaluate_test and test is not None and len(test) > 0:
        from torch.utils.data import DataLoader

        loader = DataLoader(test, batch_size=ctx.config.eval_batch_size)
        base["test_acc"] = _accuracy(ctx.original, loader, ctx.device)
        final["test_acc"] = _accuracy(model, loader, ctx.device)
    model_path = ctx.out_dir / ("model.rlp" if getattr(model, "rlpruner_spec", None) else "model.safetensors")
    meta.update(input_shape=list(ctx.data.example.shape[1:]),
                compress={"target": ctx.config.to_dict()["target"], "steps": state.step})
    _write_weights(model, model_path, meta)
    results = _results(ctx, state, base, final, model_path, time.perf_counter() - start)
    paths = write_report(ctx.out_dir, results, state.records, ctx.original_sizes)
    paths["model"] = model_path
    ctx.log(f"done: {state.step} steps; FLOPs {base['flops']:,} -> {flops:,}, params {base['params']:,} -> "
            f"{params:,}, val {base['val_acc']:.2%} -> {final['val_acc']:.2%}; wrote {ctx.out_dir}")
    return CompressResult(model=model, results=results, records=state.records, paths=paths)


def _results(ctx: _Context, state: _State, base: dict, final: dict, model_path: Path,
             final_s: float) -> dict[str, Any]:
    timing: dict[str, float] = {}
    for record in state.records:  # per-step times survive a resume; this session's final phase is added
        for key, value in record.times.items():
            timing[key] = timing.get(key, 0.0) + value
    eval_s = timing.get("eval", 0.0)
    search_s = sum(timing.get(k, 0.0) for k in OVERHEAD_KEYS)
    checkpoint_s = ctx.timer.seconds.get("checkpoint", 0.0)  # this session's: not part of the step records
    spec = getattr(ctx.original, "rlpruner_spec", None) or {}
    return {
        "model": spec.get("name", type(ctx.original).__name__), "dataset": ctx.data.splits.name,
        "method": ctx.config.method,
        "target": {"kind": ctx.config.target.kind, "value": ctx.config.target.value},
        "reached": {"sparsity": state.records[-1].sparsity if state.records else 0.0,
                    "flops": 1.0 - final["flops"] / base["flops"], "params": 1.0 - final["params"] / base["params"],
                    "latency": 1.0 - final["latency_ms"] / base["latency_ms"]},
        "steps": state.step, "time_s": timing.get("wall_s", 0.0) + final_s + checkpoint_s,
        "base": base, "final": final, "model_path": model_path.name,
        "timing": {"eval_s": eval_s, "search_s": search_s, "overhead": search_s / eval_s if eval_s else None,
                   **{f"{k}_s": timing.get(k, 0.0) for k in OVERHEAD_KEYS},
                   "recovery_s": timing.get("recovery", 0.0), "final_s": final_s, "checkpoint_s": checkpoint_s},
        "widths": {n: [ctx.original_sizes[n], state.records[-1].widths[n] if state.records else ctx.original_sizes[n]]
                   for n in ctx.names},
        "config": ctx.config.to_dict(),
    }
