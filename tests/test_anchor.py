"""The anchor margin: a sampled candidate must beat the allocation along the distribution itself by
the margin to be chosen or to move the distribution (a search without a network: scores are a
function of the removal counts)."""
import numpy as np
import pytest

from rlpruner.allocation.base import Candidate, Plan, StepTask
from rlpruner.allocation.learned import LearnedAllocator
from rlpruner.errors import ConfigError
from rlpruner.search import RLConfig

SIZES = np.array([64, 64, 64, 64])


def _task(score_of, lines):
    plan = Plan(graph=None, sizes=SIZES, capacity=SIZES - 1, budget=40, order={})

    def score(counts, pd, plan):
        return Candidate(counts=counts, pd=pd, acc=0.5, params=0, flops=0, latency_ms=None, q=score_of(counts))

    return StepTask(step=3, model=None, plan=plan, names=("a", "b", "c", "d"), pd=np.full(4, 0.25),
                    score=score, budget_for=lambda along: plan.budget, validate=lambda c, p: 1.0, acc_ref=1.0,
                    seed=0, planned_steps=10, log=lines.append)


def _noisy(counts):
    """A score that rewards departures from the even split a little: what sampling noise looks like."""
    return 0.8 + 0.015 * float(np.tanh(np.abs(counts - 10).sum()))  # < the margin of 0.02


def _real(counts):
    """A score that rewards removing from group d by a lot: a true gain."""
    return 0.8 + 0.05 * float(counts[3])


def _propose(margin, score_of):
    lines = []
    rl = RLConfig(anchor_margin=margin, guard_threshold=None, epsilon=0.0, round_to=1, noise=0.3)
    proposal = LearnedAllocator(rl).propose(_task(score_of, lines))
    return proposal, lines


def test_a_gain_below_the_margin_keeps_the_allocation_along_the_distribution_and_the_distribution():
    proposal, lines = _propose(0.02, _noisy)
    assert proposal.info["anchored"]
    assert proposal.chosen.counts.tolist() == [10, 10, 10, 10]
    np.testing.assert_allclose(proposal.pd, np.full(4, 0.25))
    assert any("anchor" in line and "0.02" in line for line in lines)
    without, _ = _propose(None, _noisy)  # the paper's search takes the noisy best instead
    assert not without.info["anchored"] and without.chosen.counts.tolist() != [10, 10, 10, 10]
    assert not np.allclose(without.pd, 0.25)


def test_a_gain_above_the_margin_is_chosen_and_moves_the_distribution():
    proposal, _ = _propose(0.02, _real)
    assert not proposal.info["anchored"]
    assert proposal.chosen.counts[3] > 10 and proposal.chosen.q > _real(np.array([10, 10, 10, 10])) + 0.02
    assert proposal.pd[3] > 0.25


def test_the_margin_must_be_a_number_at_least_zero():
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="anchor_margin"):
            RLConfig(anchor_margin=bad)
