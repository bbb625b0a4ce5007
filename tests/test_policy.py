"""The RL-Pruner policy math, without any network."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rlpruner.allocation import policy
from rlpruner.errors import ConfigError, PruningError


def test_capacity_never_empties_and_respects_multiple():
    assert policy.capacity([8, 1, 3, 0]).tolist() == [7, 0, 2, 0]
    assert policy.capacity([8, 5], min_keep=4).tolist() == [4, 1]
    # round_to keeps widths multiples of it: 16 -> 4 at least; 10 -> 8 then 4 (the remainder 2 goes first)
    assert policy.capacity([16, 10], multiple=4).tolist() == [12, 6]
    assert policy.capacity([16, 10, 3], min_keep=5, multiple=4).tolist() == [8, 2, 0]
    with pytest.raises(ConfigError, match="min_keep"):
        policy.capacity([4], min_keep=0)
    # a floor per group: the larger of it and min_keep, rounded up to the multiple
    assert policy.capacity([16, 10, 3], floor=[8, 1, 2]).tolist() == [8, 9, 1]
    assert policy.capacity([16, 10], min_keep=2, multiple=4, floor=[5, 1]).tolist() == [8, 6]


def test_max_group_ratio_keeps_a_share_of_the_original_width():
    from rlpruner.search import RLConfig
    config = RLConfig(round_to=1, max_group_ratio=0.75)
    # original widths 16 and 10 keep at least 4 and 3 (2.5 rounded up); groups already thinned lose the rest
    assert config.capacity([16, 10]).tolist() == [12, 7]
    assert config.capacity([6, 3], original=[16, 10]).tolist() == [2, 0]
    assert RLConfig(round_to=1).capacity([6, 3], original=[16, 10]).tolist() == [5, 2]  # 1: min_keep only
    assert "max_group_ratio=0.75" in config.floor_text
    assert RLConfig(round_to=1, max_group_ratio=0.7).capacity([10]).tolist() == [7]  # 10 x (1 - 0.7) keeps 3, not 4
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="max_group_ratio"):
            RLConfig(max_group_ratio=bad)


def test_density_init_is_proportional_to_channels_and_zero_where_stuck():
    sizes = [16, 32, 1, 16]
    pd = policy.density_init(sizes, policy.capacity(sizes))
    np.testing.assert_allclose(pd, [0.25, 0.5, 0.0, 0.25])


def test_sample_is_a_distribution_with_floor_and_zero_for_stuck_groups():
    rng = np.random.default_rng(0)
    cap = np.array([3, 0, 5, 2])
    pd = policy.density_init([4, 1, 6, 3], cap)
    for _ in range(50):
        s = policy.sample(pd, noise=0.5, rng=rng, capacity_=cap)
        assert s.sum() == pytest.approx(1.0)
        assert s[1] == 0.0
        assert (s[[0, 2, 3]] > 0).all()


def test_sample_is_reproducible_from_the_generator_and_zero_noise_keeps_pd():
    cap = np.array([3, 4, 5])
    pd = policy.density_init([4, 5, 6], cap)
    a = policy.sample(pd, 0.04, np.random.default_rng(7), cap)
    b = policy.sample(pd, 0.04, np.random.default_rng(7), cap)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(policy.sample(pd, 0.0, np.random.default_rng(1), cap), pd)


def test_allocate_largest_remainder_example():
    # 10 * [0.45, 0.35, 0.2] = [4.5, 3.5, 2.0] -> floors 4,3,2 and one extra to the larger weight
    counts = policy.allocate(np.array([0.45, 0.35, 0.2]), 10, np.array([10, 10, 10]))
    assert counts.tolist() == [5, 3, 2]


def test_allocate_redistributes_overflow_of_a_full_group():
    counts = policy.allocate(np.array([0.9, 0.1, 0.0]), 10, np.array([2, 20, 20]))
    assert counts.tolist() == [2, 8, 0]  # the zero-probability group stays untouched
    # when only zero-probability groups have room they take the rest
    counts = policy.allocate(np.array([1.0, 0.0, 0.0]), 6, np.array([2, 1, 3]))
    assert counts.tolist() == [2, 1, 3]


def test_allocate_rejects_impossible_budgets():
    with pytest.raises(PruningError, match="only 3 can go"):
        policy.allocate(np.array([0.5, 0.5]), 4, np.array([1, 2]))
    with pytest.raises(PruningError, match="multiple"):
        policy.allocate(np.array([0.5, 0.5]), 5, np.array([8, 8]), multiple=2)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 12),
    multiple=st.sampled_from([1, 1, 2, 4]),
)
def test_allocate_properties(data, n, multiple):
    sizes = np.array(data.draw(st.lists(st.integers(0, 64), min_size=n, max_size=n)))
    min_keep = data.draw(st.integers(1, 4))
    cap = policy.capacity(sizes, min_keep=min_keep, multiple=multiple)
    weights = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    budget = data.draw(st.integers(0, policy.max_budget(cap, multiple) // multiple)) * multiple
    counts = policy.allocate(weights, budget, cap, multiple=multiple)
    # exact where every capacity is a whole number of chunks; a partial (alignment) chunk counts as one
    partial = np.where((counts > 0) & (cap % multiple > 0), multiple - cap % multiple, 0)
    assert counts.sum() + partial.sum() == budget
    assert (counts >= 0).all() and (counts <= cap).all()
    touched = counts > 0
    assert ((sizes - counts)[touched] % multiple == 0).all()  # widths that shrink end on a multiple
    assert (sizes - counts >= np.minimum(sizes, min_keep)).all()  # never emptied


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(2, 10))
def test_allocate_follows_the_distribution_within_one_unit(data, n):
    weights = np.array(data.draw(st.lists(st.floats(0.01, 1), min_size=n, max_size=n)))
    pd = weights / weights.sum()
    budget = data.draw(st.integers(0, 200))
    counts = policy.allocate(pd, budget, np.full(n, 1000))
    assert np.abs(counts - budget * pd).max() < 1.0


def test_replay_buffer_keeps_the_best_and_replaces_worst_on_ties():
    buf = policy.ReplayBuffer(3)
    for q in [0.5, 0.1, 0.9, 0.3, 0.05, 0.7]:
        buf = buf.add(policy.Entry(q, np.array([q]), payload=f"q{q}"))
    assert sorted(e.q for e in buf.entries) == [0.5, 0.7, 0.9]
    assert buf.best().payload == "q0.9"
    tied = buf.add(policy.Entry(0.5, np.array([0.0]), payload="tie"))
    assert "tie" in [e.payload for e in tied.entries] and len(tied.entries) == 3
    assert buf.cleared().entries == ()
    with pytest.raises(PruningError, match="empty"):
        buf.cleared().best()


def test_replay_buffer_is_immutable():
    buf = policy.ReplayBuffer(2)
    grown = buf.add(policy.Entry(1.0, np.array([1.0])))
    assert buf.entries == () and len(grown.entries) == 1


def test_clip_ratio_bounds_hold():
    rng = np.random.default_rng(3)
    for _ in range(100):
        old = rng.dirichlet(np.ones(6))
        new = rng.dirichlet(np.ones(6))
        clipped = policy.clip_ratio(old, new, 0.2)
        ratio = clipped / old
        assert (ratio >= 0.8 - 1e-12).all() and (ratio <= 1.2 + 1e-12).all()


def test_update_moves_towards_best_and_respects_clip_after_renormalising():
    cap = np.array([5, 5, 5, 0])
    pd = np.array([0.5, 0.3, 0.2, 0.0])
    best = np.array([0.0, 0.0, 1.0, 0.0])
    plain = policy.update(pd, best, 0.1, None, cap)
    np.testing.assert_allclose(plain, [0.45, 0.27, 0.28, 0.0], atol=1e-4)
    clipped = policy.update(pd, best, 0.5, 0.2, cap)
    assert clipped.sum() == pytest.approx(1.0) and clipped[3] == 0.0
    ratio = clipped[:3] / pd[:3]
    # the clip bounds the raw ratio to [0.8, 1.2]; renormalising can stretch it by at most 1/(1 -+ 0.2)
    assert (ratio >= 0.8 / 1.2 - 1e-9).all() and (ratio <= 1.2 / 0.8 + 1e-9).all()
    assert clipped[2] > pd[2] and clipped[0] < pd[0]


def test_update_drops_groups_that_can_no_longer_shrink():
    pd = np.array([0.5, 0.5])
    out = policy.update(pd, np.array([0.2, 0.8]), 0.1, 0.2, np.array([4, 0]))
    np.testing.assert_allclose(out, [1.0, 0.0])


def test_choose_is_greedy_at_zero_and_explores_at_one():
    buf = policy.ReplayBuffer(4)
    for q in [0.1, 0.4, 0.2, 0.3]:
        buf = buf.add(policy.Entry(q, np.array([q])))
    rng = np.random.default_rng(0)
    assert all(policy.choose(buf, 0.0, rng).q == 0.4 for _ in range(20))
    picked = {policy.choose(buf, 1.0, rng).q for _ in range(200)}
    assert picked == {0.1, 0.2, 0.3, 0.4}


@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 0.4), ("cosine", 5, 0.2), ("cosine", 10, 0.0), ("cosine", 11, 0.0),
    ("linear", 0, 0.4), ("linear", 5, 0.2), ("linear", 8, 0.08), ("linear", 10, 0.0),
    ("constant", 1, 0.4), ("constant", 9, 0.4), ("constant", 10, 0.0),
])
def test_epsilon_schedule_values(schedule, step, expected):
    # 100 steps: decay over the first 10 (`step` counts the steps done before: 0 is the first step)
    assert policy.epsilon_at(step, 100, 0.4, schedule) == pytest.approx(expected, abs=1e-12)


def test_epsilon_schedule_cosine_quarter_point_and_bad_name():
    assert policy.epsilon_at(1, 20, 0.4, "cosine") == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert policy.epsilon_at(1, 5, 0.4, "cosine") == 0.0  # window of half a step: no exploration
    with pytest.raises(ConfigError, match="exponential"):
        policy.epsilon_at(1, 10, 0.4, "exponential")


def test_lookahead_q_discounts_the_best_next_level():
    assert policy.lookahead_q(0.5, [0.2, 0.7, 0.1], 0.9) == pytest.approx(0.5 + 0.9 * 0.7)
    assert policy.lookahead_q(0.5, [], 0.9) == 0.5


def test_accuracy_guard_triggers_strictly_above_threshold():
    assert not policy.accuracy_dropped(1.0, 0.9, 0.1)       # exactly 10%: allowed
    assert policy.accuracy_dropped(1.0, 0.8999, 0.1)
    assert not policy.accuracy_dropped(0.8, 0.72, 0.1)      # 10% of 0.8
    assert policy.accuracy_dropped(0.8, 0.7199, 0.1)
    assert not policy.accuracy_dropped(0.5, 0.6, 0.1)       # improvement
