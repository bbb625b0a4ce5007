"""Baseline allocations: uniform and global magnitude meet FLOPs targets and allocate as they claim."""
import numpy as np
import pytest
import torch

import rlpruner
from rlpruner import pruner
from rlpruner.allocation import ALLOCATORS, budget, fixed
from rlpruner.errors import ConfigError, PruningError
from rlpruner.models import create_model
from rlpruner.search import RLConfig, Target



def _widths(model, example):
    return {g.name: g.size for g in rlpruner.trace(model, example).prunable_groups()}


# --- pure allocation rules -----------------------------------------------------------------------

def test_uniform_counts_take_the_same_fraction_of_every_group():
    sizes = np.array([16, 32, 64, 8])
    counts = fixed.uniform_counts(sizes, sizes - 1, budget=30)
    assert counts.sum() == 30
    assert np.all(np.abs(counts - 30 * sizes / sizes.sum()) < 1)  # up to rounding to whole units


def test_uniform_counts_respect_capacity_and_multiples():
    sizes = np.array([16, 32, 64])
    capacity = np.array([0, 24, 56])  # the first group is closed
    counts = fixed.uniform_counts(sizes, capacity, budget=48, multiple=8)
    assert counts[0] == 0 and counts.sum() == 48
    assert np.all(counts % 8 == 0) and np.all(counts <= capacity)


def test_global_counts_remove_the_lowest_scores_first():
    scores = [np.array([0.1, 5.0, 0.2]), np.array([0.3, 0.05, 9.0, 9.0])]
    counts = fixed.global_counts(scores, capacity=[2, 3], budget=3)
    # the three lowest scores overall: 0.05 (group 1), 0.1 and 0.2 (group 0)
    assert counts.tolist() == [2, 1]
    assert fixed.global_counts(scores, capacity=[2, 3], budget=4).tolist() == [2, 2]


def test_global_counts_never_exceed_capacity_and_move_in_chunks():
    scores = [np.zeros(16), np.linspace(1, 2, 16)]
    assert fixed.global_counts(scores, capacity=[8, 15], budget=12).tolist() == [8, 4]
    chunked = fixed.global_counts(scores, capacity=[8, 8], budget=16, multiple=8)
    assert chunked.tolist() == [8, 8]
    with pytest.raises(PruningError):
        fixed.global_counts(scores, capacity=[8, 8], budget=24, multiple=8)
    with pytest.raises(PruningError, match="multiple"):
        fixed.global_counts(scores, capacity=[8, 8], budget=5, multiple=8)


def test_normalise_divides_by_the_group_mean():
    assert fixed.normalise(np.array([1.0, 3.0])).tolist() == [0.5, 1.5]
    assert fixed.normalise(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_smallest_budget_finds_the_fewest_units_that_meet_the_goal():
    counts_at = lambda budget: np.array([budget])  # noqa: E731
    assert budget.smallest_budget(counts_at, lambda c: c[0] >= 37, 100).tolist() == [37]
    assert budget.smallest_budget(counts_at, lambda c: c[0] >= 37, 100, multiple=8).tolist() == [40]
    assert budget.smallest_budget(counts_at, lambda c: c[0] >= 101, 100) is None


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="uniform"):
        ALLOCATORS.get("random")


# --- one-shot on real models ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet8", "mobilenetv3_small"])
@pytest.mark.parametrize("method", ["uniform", "global"])
def test_prune_to_flops_meets_the_target_closely(name, method):
    torch.manual_seed(0)
    kwargs = {"width_mult": 0.5} if name == "mobilenetv3_small" else {}
    model, example = create_model(name, **kwargs).eval(), torch.randn(1, 3, 16, 16)
    before = rlpruner.count(model, example).flops
    pruner.prune_to_flops(model, example, 0.5, method=method)
    reduction = 1 - rlpruner.count(model, example).flops / before
    assert 0.5 <= reduction < 0.53


def test_uniform_one_shot_prunes_every_group_by_the_same_fraction():
    torch.manual_seed(0)
    model, example = create_model("resnet20").eval(), torch.randn(1, 3, 16, 16)
    before = _widths(model, example)
    pruner.prune_to_flops(model, example, 0.4, method="uniform")
    after = _widths(model, example)
    fractions = np.array([1 - after[n] / before[n] for n in before])
    assert fractions.max() - fractions.min() <= 1 / 16 + 1e-9  # one unit of the narrowest (16) group


def test_global_one_shot_removes_the_globally_lowest_units():
    torch.manual_seed(0)
    model, example = create_model("resnet8").eval(), torch.randn(1, 3, 16, 16)
    graph = rlpruner.trace(model, example)
    names = [g.name for g in graph.prunable_groups()]
    scores = fixed.global_scores(model, graph, names)
    counts = pruner.plan_to_flops(graph, 0.5, "global", scores=scores)
    removed = np.concatenate([np.sort(scores[n])[:counts.get(n, 0)] for n in names])
    kept = np.concatenate([np.sort(scores[n])[counts.get(n, 0):] for n in names])
    assert removed.max() <= kept.min()
    assert len({counts.get(n, 0) / graph.group(n).size for n in names}) > 1  # not uniform


def test_round_to_keeps_widths_multiples_of_eight():
    torch.manual_seed(0)
    model, example = create_model("resnet20").eval(), torch.randn(1, 3, 16, 16)
    pruner.prune_to_flops(model, example, 0.5, method="uniform", round_to=8)
    assert all(w % 8 == 0 for w in _widths(model, example).values())


def test_max_group_ratio_keeps_a_share_of_every_group_in_one_shot_pruning():
    """Global magnitude at -75 % FLOPs takes some groups below 40 % of their width; with
    max_group_ratio=0.6 each keeps at least 40 % and the target is still met."""
    torch.manual_seed(0)
    example = torch.randn(1, 3, 16, 16)
    original = _widths(create_model("resnet20").eval(), example)
    kept = {}
    for ratio in (1.0, 0.6):
        torch.manual_seed(0)
        model = create_model("resnet20").eval()
        before = rlpruner.count(model, example).flops
        pruner.prune_to_flops(model, example, 0.75, method="global", max_group_ratio=ratio)
        assert rlpruner.count(model, example).flops <= 0.25 * before
        kept[ratio] = _widths(model, example)
    floor = {n: -(-w * 2 // 5) for n, w in original.items()}
    assert any(kept[1.0][n] < floor[n] for n in original)
    assert all(kept[0.6][n] >= floor[n] for n in original)


def test_unreachable_target_is_reported():
    model, example = create_model("resnet8").eval(), torch.randn(1, 3, 16, 16)
    graph = rlpruner.trace(model, example)
    with pytest.raises(PruningError, match="unreachable"):
        pruner.plan_to_flops(graph, 0.999, "uniform")
    with pytest.raises(PruningError, match="and 50% of its width"):
        pruner.plan_to_flops(graph, 0.9, "uniform", max_group_ratio=0.5)
    with pytest.raises(ConfigError, match="max_group_ratio"):
        pruner.plan_to_flops(graph, 0.5, "uniform", max_group_ratio=0.0)
    with pytest.raises(ConfigError):
        pruner.plan_to_flops(graph, 0.5, "rl")


# --- inside the search loop (rlpruner compress --method) ------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from rlpruner.data import get_dataset
    from rlpruner.train import TrainConfig, train

    splits = get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=30,
                         val_fraction=0.2)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[16, 32])
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        train(model, splits, TrainConfig(epochs=2, lr=0.05, batch_size=16))
    return model, splits


def _compress(tiny, tmp_path, method, **overrides):
    from rlpruner.distill import DistillConfig
    from rlpruner.search import CompressConfig, compress

    model, splits = tiny
    options = dict(method=method, target=Target("flops", 0.5), rl=RLConfig(prune_filter_ratio=0.1),
                   kd=DistillConfig(epochs=1, batch_size=16), final_epochs=0, latency_repeats=1,
                   latency_warmup=0, progress=False)
    config = CompressConfig(**{**options, **overrides})
    return compress(model, splits, config, out_dir=tmp_path / method, evaluate_test=False)


@pytest.mark.parametrize("method", ["uniform", "global"])
def test_compress_with_a_baseline_meets_the_flops_target(tiny, tmp_path, method):
    result = _compress(tiny, tmp_path, method)
    assert result.results["method"] == method
    assert 0.5 <= result.results["reached"]["flops"] < 0.56
    assert result.records[-1].epsilon == 0.0 and not result.records[-1].explored
    widths = result.results["widths"]
    fractions = [1 - after / before for before, after in widths.values()]
    if method == "uniform":  # every step takes the same share of each group, up to one unit per step
        assert max(fractions) - min(fractions) <= len(result.records) / min(b for b, _ in widths.values()) + 1e-9


def test_global_method_in_one_step_equals_the_one_shot_plan(tiny, tmp_path):
    """One step that reaches the target: the loop removes exactly the globally lowest units."""
    import json

    from rlpruner.importance import lowest

    result = _compress(tiny, tmp_path, "global", post_train_period=0, target=Target("flops", 0.3),
                       rl=RLConfig(prune_filter_ratio=0.6))
    assert len(result.records) == 1
    model, splits = tiny
    graph = rlpruner.trace(model.eval(), splits.example_inputs())
    names = [g.name for g in graph.prunable_groups()]
    scores = fixed.global_scores(model, graph, names)
    planned = pruner.plan_to_flops(graph, 0.3, "global", scores=scores)
    removed = json.loads((tmp_path / "global" / "state.json").read_text())["removals"][0]
    assert {n: sorted(u) for n, u in removed.items()} == {n: lowest(scores[n], c).tolist() for n, c in planned.items()}


def test_cli_method_reaches_the_config():
    import argparse

    from rlpruner.commands import compress as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.config_from_args(parser.parse_args(["resnet8", "--method", "global"])).method == "global"
    assert command.config_from_args(parser.parse_args(["resnet8"])).method == "rl"
    with pytest.raises(SystemExit):
        parser.parse_args(["resnet8", "--method", "random"])
