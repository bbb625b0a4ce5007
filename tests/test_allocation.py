"""Targets and allocators are objects: their behaviour, and that a new one is one class away."""
import dataclasses

import numpy as np
import pytest
import torch

from rlpruner.allocation import ALLOCATORS, Proposal, StepTask
from rlpruner.allocation.budget import smallest_passing
from rlpruner.data import get_dataset
from rlpruner.distill import DistillConfig
from rlpruner.errors import ConfigError, UnknownNameError
from rlpruner.models import create_model
from rlpruner.search import TARGETS, CompressConfig, Measure, RLConfig, Target, compress
from rlpruner.train import TrainConfig, train

# --- targets ---------------------------------------------------------------------------------------


def test_target_short_form_and_errors():
    assert Target.parse("flops:0.5") == Target("flops", 0.5)
    assert Target.parse("sparsity: 0.25") == Target("sparsity", 0.25)
    for bad in ("flops", "flops:half", "0.5"):
        with pytest.raises(ConfigError, match="kind:fraction"):
            Target.parse(bad)
    with pytest.raises(UnknownNameError, match="closest first\\): flops"):
        Target("flop", 0.5)
    with pytest.raises(ConfigError, match="must be in \\(0, 1\\)"):
        Target.parse("params:1.5")


def test_each_kind_reads_its_own_amount_and_goal():
    base = Measure(units=100, params=1000, flops=5000, latency_ms=2.0)
    half = Measure(units=60, params=500, flops=2400, latency_ms=1.2)
    flops, params, latency, sparsity = (TARGETS.get(k) for k in ("flops", "params", "latency", "sparsity"))
    assert flops.goal(0.5, base) == 2500 and flops.reached(half, 2500)
    assert params.goal(0.5, base) == 500 and params.reached(half, 500)
    assert not latency.reached(half, latency.goal(0.5, base))          # 1.2 ms > 1.0 ms
    assert latency.needs_latency and latency.proxy.name == "latency"   # steps of equal predicted latency
    assert sparsity.goal(0.4, base) == 60 and sparsity.reached(half, 60)
    assert sparsity.goal(0.401, base) == 59 and not sparsity.reached(half, 59)
    # sparsity fixes the step budget exactly: the units still to remove, in multiples
    assert sparsity.budget_cap(half, 57.0, 1) == 3 and sparsity.budget_cap(half, 57.0, 4) == 4
    assert flops.budget_cap(half, 2500, 1) is None and not sparsity.trims and flops.trims


def test_unreachable_goal_is_explained():
    base, smallest = Measure(100, 1000, 5000), Measure(20, 300, 1500)
    assert TARGETS.get("flops").unreachable(0.6, base, smallest, "x") is None
    assert "by at most 70.0%" in TARGETS.get("flops").unreachable(0.8, base, smallest, "x")
    assert "at most 80.0% of the 100 prunable channels" in TARGETS.get("sparsity").unreachable(0.9, base, smallest, "x")


def test_smallest_passing_is_a_bisection():
    calls = []

    def at_least(k):
        calls.append(k)
        return k >= 37

    assert smallest_passing(100, at_least) == 37
    assert len(calls) <= 7 and 100 not in calls and 0 not in calls
    assert smallest_passing(1, at_least) == 1 and smallest_passing(0, at_least) == 0


# --- allocators ------------------------------------------------------------------------------------


def test_unknown_allocator_names_the_registered_ones():
    assert {"rl", "uniform", "global"} <= set(ALLOCATORS.names())
    with pytest.raises(UnknownNameError, match="closest first\\): uniform"):
        CompressConfig(method="unifrom")


class _LargestFirst:
    """A user's allocator: the whole step budget from the currently widest open group."""

    learned = False

    def __init__(self, options):
        self.multiple = options.round_to

    def propose(self, task: StepTask) -> Proposal:
        plan = task.plan

        def counts_at(budget):
            counts = np.zeros(len(plan.sizes), dtype=np.int64)
            order = np.argsort(-np.where(plan.capacity > 0, plan.sizes, -1), kind="stable")
            for i in order:
                take = min(budget - int(counts.sum()), int(plan.capacity[i]))
                counts[i] = take - take % self.multiple
            return counts

        counts = counts_at(plan.budget)
        chosen = task.score(counts, counts / max(int(counts.sum()), 1), plan)
        return Proposal(chosen=chosen, pd=chosen.pd, counts_at=counts_at, plan=plan)


@pytest.fixture
def largest_first():
    ALLOCATORS.add("largest-first", _LargestFirst)
    yield
    ALLOCATORS.remove("largest-first")


def test_a_registered_allocator_runs_in_the_loop(tmp_path, largest_first):
    splits = get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=30,
                         val_fraction=0.2)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    train(model, splits, TrainConfig(epochs=2, lr=0.05, batch_size=16))
    config = CompressConfig(target=Target("flops", 0.3), method="largest-first",
                            rl=RLConfig(prune_filter_ratio=0.1), kd=DistillConfig(epochs=0), final_epochs=0,
                            latency_repeats=1, latency_warmup=0, progress=False)
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False)
    assert result.results["method"] == "largest-first"
    assert result.results["reached"]["flops"] >= 0.3
    first = result.records[0]
    assert sum(1 for n, w in first.widths.items() if w < result.results["widths"][n][0]) == 1  # one group cut
    # trimmed to the goal along the allocator's own rule: one step less would not have reached it
    assert result.records[-2].flops > 0.7 * result.results["base"]["flops"] >= result.records[-1].flops


def test_config_round_trips_through_its_saved_form():
    config = CompressConfig(target=Target.parse("params:0.4"), method="global", keep=("fc",))
    assert CompressConfig.from_dict(config.to_dict()) == config
    assert dataclasses.asdict(config)["target"] == {"kind": "params", "value": 0.4}


@pytest.mark.parametrize("method", ["rl", "uniform", "global", "halp"])
def test_round_to_keeps_every_width_a_multiple_in_the_search(tmp_path, method):
    splits = get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=20,
                         val_fraction=0.2)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[10, 18])  # neither a multiple of 4
    config = CompressConfig(target=Target("flops", 0.4), method=method,
                            rl=RLConfig(prune_filter_ratio=0.15, lr_epoch=1, sample_num=2, round_to=4),
                            kd=DistillConfig(epochs=0), final_epochs=0, latency_repeats=1, latency_warmup=0,
                            progress=False)
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False)
    assert result.results["reached"]["flops"] >= 0.4
    for name, (before, after) in result.results["widths"].items():
        assert after == before or after % 4 == 0, (name, before, after)
    assert any(after != before for before, after in result.results["widths"].values())
