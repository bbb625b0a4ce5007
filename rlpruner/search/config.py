"""The typed configuration of a compression run: what to reach (`Target`), how candidates are
rewarded (`Reward`), the RL-Pruner knobs (`RLConfig`) and the run as a whole (`CompressConfig`).

All are frozen dataclasses validated on construction; `CompressConfig.to_dict`/`from_dict` is the
form saved in a run's state.json (a resumed run must use the same options).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..allocation import ALLOCATORS, policy
from ..distill import DistillConfig
from ..errors import ConfigError, UnknownNameError
from ..latency import RUNTIMES
from ..precision import AMP_MODES
from ..registry import unknown_name_message
from .judges import JUDGES
from .targets import TARGETS, TargetKind

TARGET_KINDS = tuple(TARGETS.names())
STRATEGIES = ("accuracy", "flops", "params", "latency")
SCORE_SPLITS = ("val", "train")
DEFAULT_REWARD_WEIGHT = 0.25  # the paper's alpha/beta for its FLOPs- and params-aware rewards
AUTO = "auto"


@dataclass(frozen=True)
class Target:
    """Stop when this fraction of the original is removed: channel sparsity (of prunable channels),
    FLOPs, parameters, or measured latency."""

    kind: str = "flops"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in TARGETS:
            raise UnknownNameError(unknown_name_message("target kind", self.kind, TARGETS.names()))
        if not 0.0 < self.value < 1.0:
            raise ConfigError(f"target {self.kind} reduction must be in (0, 1), got {self.value}")

    @classmethod
    def parse(cls, text: str) -> "Target":
        """The short form 'kind:fraction', e.g. 'flops:0.5'."""
        kind, sep, value = str(text).partition(":")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise ConfigError(f"target {text!r} must look like 'flops:0.5' (kind:fraction removed)")
        return cls(kind.strip(), number)

    @property
    def rule(self) -> TargetKind:
        return TARGETS.get(self.kind)


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
    prune_filter_ratio: float = 0.02     # step size: the cost of this share of the original prunable channels
                                         # (the paper: 0.01; 0.02 halves the steps, see benchmarks/search_cost.py)
    equal_cost: bool = True              # every candidate of a step removes the same amount of the target's
                                         # unit (FLOPs, params); False: the same number of channels (the paper)
    lr_epoch: int = 10                   # sampling rounds per step, at most
    patience: int | None = 2             # end a step's rounds once this many in a row found no better candidate
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
    guard_threshold: float | None = 0.1  # relative drop of the chosen candidate's accuracy against the previous
                                         # step's chosen candidate (pruned vs pruned) that resets the policy
    guard_retries: int = 2               # resets per step before the step is accepted anyway
    anchor_margin: float | None = None   # each step also scores the allocation along the distribution itself (no
                                         # noise); a sampled candidate moves the distribution and is chosen only if
                                         # it scores more than this above it (the judge's unit, e.g. 0.02 = 2 points
                                         # of top-1): best-of-many on a small scoring set wins partly by noise.
                                         # None: off (the paper)
    importance: str = "taylor"
    calibration_samples: int = 256       # training images (seeded, class-stratified) for data-driven importance
    # judge, score_samples and bn_samples follow benchmarks/judges.py (docs/benchmarks.md): after BN
    # recalibration, top-1 on 128 stratified images ranks candidates about as well as the whole split
    judge: str = "accuracy"              # how candidates are scored: rlpruner.search.judges.JUDGES
    score_samples: int | None = 128      # images (seeded, class-stratified) that score candidates; None: the
                                         # whole split. The guard and final choices use all of validation
    score_split: str = "val"             # where they come from: "val", or "train" (training images the BN
                                         # recalibration does not use: many more than a small validation split)
    bn_samples: int = 256                # training images that re-estimate BatchNorm statistics of every
                                         # candidate before it is scored; 0: off
    probe_steps: int = 0                 # KD steps (on the BN images, against the run's teacher) each candidate
                                         # takes before it is scored: a look past the step at how it recovers
    probe_lr: float = 0.01               # their learning rate (the benchmark's KD rate; a step at 1e-3 barely moves)
    min_keep: int = 1                    # units every group keeps at least
    max_group_ratio: float = 1.0         # largest share of a group's original width the whole run may remove
                                         # (every method; Torch-Pruning's max_pruning_ratio); 1: min_keep only
    round_to: int | str = "auto"         # every group keeps a width that is a multiple of this; "auto": 1,
                                         # unless the run optimises latency: then the multiple the latency
                                         # runtime likes, measured per layer (rlpruner.latency.choose_round_to)
                                         # and on whole models through the latency table (aligned_model_costs)

    def __post_init__(self) -> None:
        checks = [
            ("prune_filter_ratio", 0 < self.prune_filter_ratio <= 1, "in (0, 1]"),
            ("lr_epoch", self.lr_epoch >= 1, ">= 1"), ("sample_num", self.sample_num >= 1, ">= 1"),
            ("patience", self.patience is None or self.patience >= 1, ">= 1 or None"),
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
            ("judge", self.judge in JUDGES, f"one of {', '.join(JUDGES.names())}"),
            ("score_samples", self.score_samples is None or self.score_samples >= 1, ">= 1 or None"),
            ("score_split", self.score_split in SCORE_SPLITS, f"one of {', '.join(SCORE_SPLITS)}"),
            ("score_samples", self.score_split == "val" or self.score_samples is not None,
             "a number of images when score_split is 'train' (the whole training split would be scored)"),
            ("bn_samples", self.bn_samples >= 0, ">= 0"),
            ("probe_steps", self.probe_steps >= 0, ">= 0"),
            ("anchor_margin", self.anchor_margin is None or (self.anchor_margin >= 0 and np.isfinite(self.anchor_margin)),
             ">= 0 or None"),
            ("probe_lr", self.probe_lr > 0 and np.isfinite(self.probe_lr), "a finite number > 0"),
            ("probe_steps", self.probe_steps == 0 or self.bn_samples > 0, "0 when bn_samples is 0 (it trains on them)"),
            ("min_keep", self.min_keep >= 1, ">= 1"),
            ("max_group_ratio", 0 < self.max_group_ratio <= 1, "in (0, 1]"),
            ("round_to", self.round_to == AUTO or (isinstance(self.round_to, int) and self.round_to >= 1),
             f">= 1 or {AUTO!r}"),
        ]
        for option, ok, requirement in checks:
            if not ok:
                raise ConfigError(f"{option} must be {requirement}, got {getattr(self, option)!r}")

    def capacity(self, sizes: Any, original: Any = None) -> np.ndarray:
        """Units each group of these widths may lose: it keeps `min_keep` units and at least
        1 - `max_group_ratio` of its `original` width (default: `sizes`), in multiples of `round_to`."""
        sizes = np.asarray(sizes)
        floor = policy.ratio_floor(sizes if original is None else original, self.max_group_ratio)
        return policy.capacity(sizes, self.min_keep, self.multiple, floor)

    @property
    def floor_text(self) -> str:
        """What every group keeps, for messages (`policy.floor_text`)."""
        return policy.floor_text(self.min_keep, self.max_group_ratio)

    @property
    def multiple(self) -> int:
        """`round_to` as a number; "auto" must have been resolved (`search.context.prepare` does)."""
        if not isinstance(self.round_to, int):
            raise ConfigError(f"round_to={self.round_to!r} must be resolved to a multiple before use")
        return self.round_to


# Options a run may be resumed with different values of: they change what is shown, or how fast the
# data is read, not what is searched.
PRESENTATION_OPTIONS = ("progress", "report_batch", "workers", "val_cache_mb")


@dataclass(frozen=True)
class CompressConfig:
    target: Target = field(default_factory=Target)
    reward: Reward = field(default_factory=Reward)
    rl: RLConfig = field(default_factory=RLConfig)
    kd: DistillConfig = field(default_factory=DistillConfig)
    post_train_period: int = 1           # KD recovery after every this many steps; 0: none while searching
    final_epochs: int = 3                # KD fine-tune of the final model
    refit: bool = False                  # the final model is the original pruned afresh, one-shot, to the widths
                                         # the search found (rlpruner.search.refit), not the model the steps cut:
                                         # the search decides the widths, the final fine-tune gets one fresh
                                         # model (AMC/EagleEye); pair with post_train_period=0
    keep: tuple[str, ...] = ()           # module paths never pruned
    eval_batch_size: int = 256
    latency_batch: int = 1
    latency_repeats: int = 20
    latency_warmup: int = 3
    latency_threads: int | None = 1      # single-threaded timing is stable on a busy machine; None: torch's
    latency_runtime: str = AUTO          # where latency is measured and predicted (rlpruner.latency.RUNTIMES):
                                         # torch-cpu, torch-cuda, onnxruntime-cpu; auto: torch on `device`
    latency_cache: str | None = None     # directory of latency tables; None: ~/.cache/rlpruner/latency
    latency_points: int = 6              # widths timed per layer and axis in a latency table
    latency_checks: int = 2              # a latency target is checked by timing: when the search reaches the
                                         # table's goal, the model is timed, and if it misses the target by more
                                         # than latency_slack the search goes on towards a goal corrected by
                                         # the measurement, at most this many times; 0: trust the table
    latency_slack: float = 0.01          # how far (a fraction of the original's latency) the measured
                                         # reduction may fall short of a latency target; a miss counts only
                                         # when the timing's 95 % interval lies wholly below target - slack
    latency_fresh: bool | None = None    # time those two in a fresh child process (CPU runtimes; a model
                                         # without an architecture spec falls back to this process): the run's
                                         # heap, fragmented by training, slows small models' calls and shrinks
                                         # their measured reductions. None: when the run optimises latency
    latency_pair_s: float = 5.0          # how long two models are timed against each other at latency_batch
                                         # (a latency target's check, the report's latency change), in turns of
                                         # 5 calls each; at least max(8, latency_repeats x 4/5) turns
    report_batch: int = 32               # the report also times both models at this batch size
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"                    # autocast: auto (bf16 on CUDA, fp16 + grad scaler on older GPUs, off
                                         # on CPU), off, bf16 or fp16
    channels_last: bool | None = None    # convolution memory format; None: on for CUDA
    workers: int | None = None           # DataLoader workers for streamed image folders; None: up to 8
    val_cache_mb: int = 1024             # the validation split stays on the device when it fits in this;
                                         # else it is read again for every full evaluation
    progress: bool | None = None         # tqdm bars; None: only on a terminal
    method: str = "rl"                   # an allocator registered in rlpruner.allocation.ALLOCATORS

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.latency_runtime != AUTO and self.latency_runtime not in RUNTIMES:
            raise UnknownNameError(unknown_name_message("latency runtime", self.latency_runtime,
                                                        [AUTO, *RUNTIMES.names()]))
        if self.method not in ALLOCATORS:
            raise UnknownNameError(unknown_name_message("pruning method", self.method, ALLOCATORS.names()))
        for option, value, minimum in (("post_train_period", self.post_train_period, 0),
                                       ("final_epochs", self.final_epochs, 0),
                                       ("eval_batch_size", self.eval_batch_size, 1),
                                       ("latency_batch", self.latency_batch, 1),
                                       ("report_batch", self.report_batch, 1),
                                       ("latency_repeats", self.latency_repeats, 1),
                                       ("latency_warmup", self.latency_warmup, 0),
                                       ("latency_threads", self.latency_threads or 1, 1),
                                       ("latency_points", self.latency_points, 2),
                                       ("latency_checks", self.latency_checks, 0),
                                       ("workers", 0 if self.workers is None else self.workers, 0),
                                       ("val_cache_mb", self.val_cache_mb, 0)):
            if value < minimum:
                raise ConfigError(f"{option} must be >= {minimum}, got {value}")
        if not self.latency_pair_s > 0.0:
            raise ConfigError(f"latency_pair_s must be > 0 seconds, got {self.latency_pair_s}")
        if not 0.0 <= self.latency_slack < 1.0:
            raise ConfigError(f"latency_slack must be in [0, 1), got {self.latency_slack}")

    @property
    def val_cache_bytes(self) -> int:
        return self.val_cache_mb * 2**20

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep"] = list(self.keep)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompressConfig":
        return cls(target=Target(**data["target"]), reward=Reward(**data["reward"]), rl=RLConfig(**data["rl"]),
                   kd=DistillConfig(**data["kd"]), keep=tuple(data["keep"]),
                   **{k: v for k, v in data.items() if k not in ("target", "reward", "rl", "kd", "keep")})
