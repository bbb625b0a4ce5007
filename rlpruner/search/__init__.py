"""The RL-Pruner loop: prune step by step with a learned pruning distribution until a target is met.

    result = rlpruner.compress(model, splits, CompressConfig(target=Target("flops", 0.6)), out_dir="runs/x")

The files read as the loop's story:

- `config.py`      what the user asks for: Target, Reward, RLConfig, CompressConfig
- `targets.py`     what a target kind means (goal, amount kept, reached), one class per kind
- `context.py`     run preparation: data, the original model's groups and measurements, the goal
- `step.py`        one step: plan, allocate (rlpruner.allocation), trim to the target, cut, recover
- `measured.py`    a latency target checked by timing once the table says it is reached
- `checkpoint.py`  the run's state, saved after every step; resume and replay
- `run.py`         `compress`: the loop, the final fine-tune, results and report

Candidates are scored on the VALIDATION split only; the test split is evaluated once, at the end.
All randomness of step k is drawn from generators seeded by (seed, k, ...), so a resumed run needs
no saved generator state to replay bit for bit. `CompressConfig.method` picks the allocator
("rl", "uniform", "global", or one a user registered) inside the same loop.
"""
from .config import DEFAULT_REWARD_WEIGHT, STRATEGIES, TARGET_KINDS, CompressConfig, Reward, RLConfig, Target
from .run import CompressResult, compress
from .step import step_line
from .targets import TARGETS, Measure, TargetKind

__all__ = ["DEFAULT_REWARD_WEIGHT", "STRATEGIES", "TARGETS", "TARGET_KINDS", "CompressConfig", "CompressResult",
           "Measure", "RLConfig", "Reward", "Target", "TargetKind", "compress", "step_line"]
