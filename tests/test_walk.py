"""The cost-aware global ranking (HALP's): importance per unit of cost saved, re-priced as removals
accumulate, in a pure walk (rlpruner.allocation.walk) and as the search loop's 'halp' allocator."""
import numpy as np
import pytest
import torch
from torch import nn

from rlpruner import metrics
from rlpruner.allocation import ALLOCATORS
from rlpruner.allocation.fixed import global_counts
from rlpruner.allocation.walk import CostWalk
from rlpruner.errors import ConfigError, PruningError
from rlpruner.graph import trace


def _chain_cost(widths):
    """FLOPs of a chain of convs: layer i costs width(i-1) x width(i), with a fixed 3-channel input."""
    widths = np.asarray(widths, dtype=np.float64)

    def left(counts):
        kept = widths - counts
        ins = np.concatenate([[3.0], kept[:-1]])
        return float((ins * kept).sum())
    return left


def _full_greedy(scores, capacity, left, stride):
    """The walk without laziness: every group's next stride re-priced after every removal."""
    taken = np.zeros(len(capacity), dtype=np.int64)
    order = []
    ascending = [np.concatenate([[0.0], np.cumsum(np.sort(s))]) for s in scores]
    while (taken < capacity).any():
        best = None
        for i in np.flatnonzero(taken < capacity):
            size = min(stride[i], capacity[i] - taken[i])
            trial = taken.copy()
            trial[i] += size
            saved = left(taken) - left(trial)
            price = (ascending[i][trial[i]] - ascending[i][taken[i]]) / saved
            if best is None or (price, i) < best[:2]:
                best = (price, i, size)
        taken[best[1]] += best[2]
        order.append(taken.copy())
    return order


def test_the_lazy_walk_takes_what_re_pricing_everything_would_on_a_flops_cost():
    rng = np.random.default_rng(0)
    widths = np.array([16, 32, 24, 48])
    capacity = widths - 2
    scores = [rng.random(w) for w in widths]
    walk = CostWalk(scores, capacity, 1, _chain_cost(widths), points=7)
    expected = _full_greedy(scores, capacity, _chain_cost(widths), walk.strides)
    totals = [int(t.sum()) for t in expected]
    assert [walk.counts_at(t).tolist() for t in totals] == [t.tolist() for t in expected]


def test_with_every_unit_costing_the_same_the_walk_is_global_magnitude():
    rng = np.random.default_rng(1)
    sizes = [12, 20, 9]
    scores = [rng.random(s) for s in sizes]
    capacity = np.array(sizes) - 1
    walk = CostWalk(scores, capacity, 1, lambda counts: float(100 - counts.sum()), points=max(sizes))
    for budget in (0, 5, 17, 30, int(capacity.sum())):
        assert walk.counts_at(budget).tolist() == global_counts(scores, capacity, budget).tolist()


def test_a_unit_that_saves_more_cost_goes_before_an_equally_important_one():
    scores = [np.ones(10), np.ones(10)]
    weights = np.array([1.0, 5.0])  # the second group's units cost five times more
    walk = CostWalk(scores, [8, 8], 1, lambda counts: float(100 - (weights * counts).sum()), points=8)
    assert walk.counts_at(8).tolist() == [0, 8]
    assert walk.counts_at(12).tolist() == [4, 8]


def test_strides_that_save_nothing_or_add_cost_go_last():
    def left(counts):  # the first group: removing its units makes the model slower
        return float(50 + counts[0] - 2 * counts[1])
    walk = CostWalk([np.zeros(6), np.ones(6)], [5, 5], 1, left, points=5)
    assert walk.counts_at(5).tolist() == [0, 5]
    assert walk.counts_at(7).tolist() == [2, 5]


@pytest.mark.parametrize("multiple", [1, 4])
def test_counts_grow_with_the_budget_stay_in_capacity_and_in_chunks(multiple):
    rng = np.random.default_rng(2)
    widths = np.array([10, 18, 33])
    capacity = np.array([7, 14, 30])  # 7 and 14 are not multiples of 4: a partial chunk first
    walk = CostWalk([rng.random(w) for w in widths], capacity, multiple, _chain_cost(widths))
    previous = np.zeros(3, dtype=np.int64)
    most = int(np.ceil(capacity / multiple).sum()) * multiple
    for budget in range(0, most + 1, multiple):
        counts = walk.counts_at(budget)
        assert (counts >= previous).all() and (counts <= capacity).all()
        kept_multiple = [(c == 0) or (cap - c) % multiple == 0 for c, cap in zip(counts, capacity)]
        assert all(kept_multiple), (budget, counts)
        previous = counts
    assert previous.tolist() == capacity.tolist()
    with pytest.raises(PruningError, match="cannot remove"):
        walk.counts_at(most + multiple)
    if multiple > 1:
        with pytest.raises(PruningError, match="multiple of round_to=4"):
            walk.counts_at(3)


def test_halp_is_a_registered_method_that_refuses_to_run_without_a_cost_function():
    from types import SimpleNamespace

    from rlpruner.allocation import Plan, StepTask

    assert "halp" in ALLOCATORS.names()
    allocator = ALLOCATORS.get("halp")(SimpleNamespace(round_to=1))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    graph = trace(model, torch.randn(1, 1, 8, 8))
    names = tuple(g.name for g in graph.prunable_groups())
    sizes = np.array([g.size for g in graph.prunable_groups()])
    plan = Plan(graph, sizes, sizes - 1, 1, {n: np.arange(s) for n, s in zip(names, sizes)})
    task = StepTask(step=1, model=model, plan=plan, names=names, pd=np.ones(len(names)) / len(names),
                    score=None, budget_for=lambda counts_at: 1, validate=None, acc_ref=1.0, seed=0, planned_steps=1)
    with pytest.raises(ConfigError, match="'halp' allocation needs the step's cost function"):
        allocator.propose(task)


def test_halp_ranks_by_the_runs_criterion_without_normalising_each_group():
    """A group whose units all score ten times lower (a thinned, less important layer) loses its
    units first; normalised per group, as global magnitude does, both would look the same."""
    from types import SimpleNamespace

    from rlpruner.allocation import Candidate, Plan, StepTask

    names, sizes = ("a", "b"), np.array([8, 8])
    scores = {"a": np.linspace(1.0, 2.0, 8), "b": np.linspace(0.1, 0.2, 8)}
    plan = Plan(None, sizes, sizes - 1, 4, {n: np.argsort(s) for n, s in scores.items()}, scores)

    def score(counts, pd, plan):
        return Candidate(counts, pd, 0.0, 0, 0, None, 0.0)

    task = StepTask(step=1, model=None, plan=plan, names=names, pd=np.full(2, 0.5), score=score,
                    budget_for=lambda counts_at: 4, validate=None, acc_ref=1.0, seed=0, planned_steps=1,
                    cost_left=lambda counts: float(100 - counts.sum()))
    proposal = ALLOCATORS.get("halp")(SimpleNamespace(round_to=1)).propose(task)
    assert proposal.chosen.counts.tolist() == [0, 4]


def _latency_run(tiny, tmp_path, method, clock, monkeypatch, max_group_ratio=1.0, target=("latency", 0.3),
                 reward=None):
    from rlpruner.distill import DistillConfig
    from rlpruner.latency import Runtime
    from rlpruner.search import CompressConfig, Reward, RLConfig, Target, compress

    monkeypatch.setattr(Runtime, "time_ms", clock)
    model, splits = tiny
    config = CompressConfig(target=Target(*target), reward=reward or Reward(), method=method,
                            rl=RLConfig(prune_filter_ratio=0.1, round_to=1, calibration_samples=16, bn_samples=16,
                                        max_group_ratio=max_group_ratio),
                            kd=DistillConfig(epochs=0), final_epochs=0, post_train_period=0,
                            latency_cache=str(tmp_path / "cache"), latency_fresh=False, progress=False)
    out = tmp_path / f"{method}-{max_group_ratio}-{target[0]}-{config.reward.strategy}"
    return compress(model, splits, config, out_dir=out, evaluate_test=False)


def _slow_first_conv(self, module, inputs, watch):
    """A runtime on which the first conv's output channels cost far more than their FLOPs."""
    first = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 1]  # on the image
    return metrics.count(module, inputs).flops / 1e4 + sum(0.5 * m.out_channels for m in first)


def test_halp_with_a_latency_target_cuts_the_layer_the_runtime_is_slow_on(tiny_splits, tiny_trained, tmp_path,
                                                                           monkeypatch):
    """On a runtime where the first conv's output channels cost far more than their FLOPs, for the same
    latency target HALP takes more of them than global magnitude does, and removes more latency per
    FLOP removed."""
    tiny = (tiny_trained, tiny_splits)
    runs = {m: _latency_run(tiny, tmp_path, m, _slow_first_conv, monkeypatch) for m in ("global", "halp")}
    for result in runs.values():
        assert result.results["reached"]["latency"] >= 0.3
    first = next(iter(runs["halp"].results["widths"]))
    kept = {m: r.results["widths"][first][1] for m, r in runs.items()}
    assert kept["halp"] < kept["global"]
    per_flop = {m: r.results["reached"]["latency"] / r.results["reached"]["flops"] for m, r in runs.items()}
    assert per_flop["halp"] > per_flop["global"] + 0.05
    assert runs["halp"].results["method"] == "halp"


def test_max_group_ratio_bounds_what_halp_takes_from_the_layer_the_runtime_is_slow_on(tiny_splits, tiny_trained,
                                                                                       tmp_path, monkeypatch):
    """Unbounded, HALP takes the slow first conv below 60 % of its width; with max_group_ratio=0.4 every
    group keeps at least 60 % of its original width, the first conv exactly that, and the latency target
    is still met."""
    tiny = (tiny_trained, tiny_splits)
    free = _latency_run(tiny, tmp_path, "halp", _slow_first_conv, monkeypatch)
    bounded = _latency_run(tiny, tmp_path, "halp", _slow_first_conv, monkeypatch, max_group_ratio=0.4)
    floor = {name: -(-size * 3 // 5) for name, (size, _) in free.results["widths"].items()}
    first = next(iter(free.results["widths"]))
    assert free.results["widths"][first][1] < floor[first]
    assert bounded.results["reached"]["latency"] >= 0.3
    for name, (size, width) in bounded.results["widths"].items():
        assert width >= floor[name], name
    assert bounded.results["widths"][first][1] == floor[first]  # it still goes as far as it may there


def test_halp_with_a_flops_target_and_a_latency_reward_prices_removals_by_latency(tiny_splits, tiny_trained,
                                                                                  tmp_path, monkeypatch):
    """A FLOPs target with a latency reward: every step removes the target's FLOPs, but HALP spends them
    where the table says latency is, so it takes more of the slow first conv, and more latency for the
    same FLOPs, than HALP priced by FLOPs."""
    from rlpruner.search import Reward

    tiny = (tiny_trained, tiny_splits)
    runs = {reward.strategy: _latency_run(tiny, tmp_path, "halp", _slow_first_conv, monkeypatch,
                                          target=("flops", 0.3), reward=reward)
            for reward in (Reward(), Reward("latency"))}
    first = next(iter(runs["accuracy"].results["widths"]))
    for result in runs.values():
        assert result.results["reached"]["flops"] >= 0.3
    assert runs["latency"].results["widths"][first][1] < runs["accuracy"].results["widths"][first][1]
    per_flop = {k: r.results["reached"]["latency"] / r.results["reached"]["flops"] for k, r in runs.items()}
    assert per_flop["latency"] > per_flop["accuracy"]
