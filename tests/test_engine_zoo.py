"""Mask-equivalence and model-hood of every zoo model after random physical pruning."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import rlpruner
from masking import assert_close, masked_reference, outputs, randomize, random_removals
from rlpruner.models import create_model, list_models
from rlpruner.surgery import prune_channels, reshape_to

ZOO = list_models()


def _flops(model, x) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(x)
    return counter.get_total_flops()


@pytest.fixture(scope="module", params=ZOO)
def traced(request):
    torch.manual_seed(0)
    model = randomize(create_model(request.param, num_classes=7).double().eval(), seed=1)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    return request.param, model, x, rlpruner.trace(model, x)


def test_every_zoo_model_has_prunable_groups_and_frozen_logits(traced):
    name, model, x, graph = traced
    assert graph.prunable_groups(), name
    assert not graph.unknown_ops, f"{name}: {graph.unknown_ops}"
    classifier = [g for g in graph.groups if any(m.param.endswith("weight") and m.dim == 0 and len(m.positions) == 7 for m in g.members)]
    assert classifier and not any(g.prunable for g in classifier), "the logits must never be prunable"


@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_masked_original(traced, seed):
    name, model, x, graph = traced
    removals = random_removals(graph, seed)
    assert removals, name
    pruned = prune_channels(model, graph, removals, inplace=False)
    reference = masked_reference(model, graph, removals)
    for got, want in zip(outputs(pruned, x), outputs(reference, x)):
        assert_close(got, want)


def test_counts_fall_and_match_flop_counter(traced):
    name, model, x, graph = traced
    removals = random_removals(graph, seed=3)
    pruned = prune_channels(model, graph, removals, inplace=False)
    params0, flops0 = graph.count()
    params1, flops1 = graph.count(removals)
    assert params1 < params0 and flops1 < flops0
    assert flops0 == _flops(model, x)
    assert flops1 == _flops(pruned, x)
    assert params1 == sum(p.numel() for p in pruned.parameters())


def test_ratio_zero_is_bit_identical(traced):
    name, model, x, graph = traced
    copy_ = copy.deepcopy(model)
    rlpruner.prune(copy_, x, 0.0)
    for a, b in zip(outputs(copy_, x), outputs(model, x)):
        assert torch.equal(a, b)


def test_pruned_model_is_an_ordinary_module(traced):
    name, model, x, graph = traced
    pruned = copy.deepcopy(prune_channels(model, graph, random_removals(graph, seed=5), inplace=False))
    # it trains: a few SGD steps on a fixed batch lower the loss
    pruned.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = pruned(x).logsumexp(dim=1).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], f"{name}: loss did not fall when training the pruned model: {losses}"
    pruned.eval()
    # it traces with TorchScript and gives the same outputs
    scripted = torch.jit.trace(pruned, x, check_trace=False)
    assert_close(scripted(x), outputs(pruned, x)[0])
    # its state_dict rebuilds a fresh model of the same architecture
    fresh = create_model(name, num_classes=7).double()
    reshape_to(fresh, {k: tuple(v.shape) for k, v in pruned.state_dict().items()})
    fresh.load_state_dict(pruned.state_dict())
    assert_close(outputs(fresh.eval(), x)[0], outputs(pruned, x)[0])


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv3_small", "googlenet"])
def test_works_at_another_input_size(name):
    torch.manual_seed(0)
    model = randomize(create_model(name, num_classes=5).double().eval())
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    graph = rlpruner.trace(model, x)
    removals = random_removals(graph, seed=0)
    pruned = prune_channels(model, graph, removals, inplace=False)
    assert_close(outputs(pruned, x)[0], outputs(masked_reference(model, graph, removals), x)[0])
