"""Stream a compression run to TensorBoard (``compress(..., tensorboard=DIR)``, CLI ``--tensorboard DIR``).

Per step: the reward, the validation metric after pruning and after recovery, FLOPs/params left,
sparsity, exploration, guard resets, candidates scored, the step's time split, and a histogram of
the fraction of its channels every group keeps. At the end: the final metrics and the summary.
A resumed run drops the events after its last checkpoint (``purge_step``), so the curves never
show a step twice. Needs the ``tensorboard`` package (``pip install tensorboard``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..report import StepRecord


def require_tensorboard() -> None:
    """ConfigError naming the package when TensorBoard logging cannot work here (checked up front)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError as exc:
        raise ConfigError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                          f"(or pip install 'rlpruner[tensorboard]') ({exc})") from None


class TensorBoardLog:
    """One run's event file; `step` after every checkpointed step, `finish` with the results."""

    def __init__(self, log_dir: str | Path, original_sizes: Mapping[str, int], base: Mapping[str, Any],
                 metric_name: str, resumed_after: int = 0) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.original = dict(original_sizes)
        self.metric = metric_name
        try:
            self.writer = SummaryWriter(str(log_dir), purge_step=resumed_after + 1 if resumed_after else None)
        except OSError as exc:
            raise ConfigError(f"--tensorboard {log_dir}: cannot write there ({exc.strerror or exc})") from exc
        if not resumed_after:  # step 0: the original model
            self.writer.add_scalar(f"metric/val_{metric_name}", base["val_acc"], 0)
            self.writer.add_scalar("cost/flops_left", 1.0, 0)
            self.writer.add_scalar("cost/params_left", 1.0, 0)
            self.writer.flush()

    def step(self, record: StepRecord) -> None:
        add, s = self.writer.add_scalar, record.step
        add(f"metric/val_{self.metric}", record.val_acc, s)
        add(f"metric/val_{self.metric}_pruned", record.val_acc_pruned, s)
        add("search/reward", record.reward, s)
        add("search/epsilon", record.epsilon, s)
        add("search/explored", float(record.explored), s)
        add("search/candidates", record.candidates, s)
        add("search/guard_resets", record.guard_resets, s)
        add("cost/flops_left", 1.0 - record.flops_reduction, s)
        add("cost/params_left", 1.0 - record.params_reduction, s)
        add("cost/sparsity", record.sparsity, s)
        if record.latency_ms is not None:
            add("cost/latency_ms", record.latency_ms, s)
        for phase, seconds in record.times.items():
            add(f"time/{phase}", seconds, s)
        kept = np.array([record.widths.get(n, w) / w for n, w in self.original.items() if w], dtype=np.float64)
        if kept.size:
            self.writer.add_histogram("widths/kept_fraction", kept, s, bins=np.linspace(0.0, 1.0, 21))
        if record.guard_reason:
            self.writer.add_text("search/guard_reason", record.guard_reason, s)
        self.writer.flush()

    def finish(self, results: Mapping[str, Any], summary: str) -> None:
        step = int(results.get("steps", 0))
        for split in ("val", "test"):
            value = results["final"].get(f"{split}_acc")
            if value is not None:
                self.writer.add_scalar(f"final/{split}_{self.metric}", value, step)
        for key in ("flops", "params", "latency"):
            self.writer.add_scalar(f"final/{key}_reduction", results["reached"][key], step)
        self.writer.add_text("summary", summary, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
