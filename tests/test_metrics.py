"""Counting (params, FLOPs) against hand computation, latency sanity, tables."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rlpruner.errors import ConfigError
from rlpruner.metrics import count, count_flops, format_table, human, measure_latency, time_calls


def conv_linear() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_count_matches_a_hand_computed_model():
    model = conv_linear()
    counts = count(model, torch.randn(2, 3, 6, 6))
    conv_params, linear_params = 8 * 3 * 3 * 3 + 8, 8 * 6 * 6 * 10 + 10
    assert counts.params == conv_params + linear_params
    # per image: conv does 8 out channels x 36 positions x (3 in x 3 x 3) MACs; linear 288 x 10 MACs;
    # FlopCounterMode counts 2 FLOPs per MAC and ignores bias adds and ReLU. Batch of 2.
    per_image = 2 * (8 * 36 * 27) + 2 * (288 * 10)
    assert counts.flops == 2 * per_image


def test_shared_parameters_count_once_and_mode_is_restored():
    linear = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(linear, nn.BatchNorm1d(4), linear).train()
    counts = count(model, torch.randn(3, 4))
    assert counts.params == 16 + 8 and model.training
    assert counts.flops == 2 * 2 * (3 * 4 * 4)


def test_latency_is_positive_ordered_and_leaves_state_alone():
    model = conv_linear().train()
    threads = torch.get_num_threads()
    latency = measure_latency(model, (3, 6, 6), batch_size=4, warmup=2, repeats=15, threads=1)
    assert 0 < latency.p10_ms <= latency.median_ms <= latency.p90_ms < 1000
    assert latency.batch_size == 4 and latency.repeats == 15 and latency.threads == 1
    assert model.training and torch.get_num_threads() == threads
    from_tensor = measure_latency(model, torch.randn(1, 3, 6, 6), batch_size=2, warmup=0, repeats=3)
    assert from_tensor.median_ms > 0
    with pytest.raises(ConfigError, match="repeats"):
        measure_latency(model, (3, 6, 6), repeats=0)


def test_latency_times_the_asked_work():
    """The work timed is counted, not clocked: wall-clock comparisons flake on a shared machine."""
    big = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(4)])
    small = big[:1]
    batches = []
    handle = big.register_forward_pre_hook(lambda module, args: batches.append(tuple(args[0].shape)))
    measure_latency(big, (32, 32, 32), batch_size=8, warmup=2, repeats=7)
    handle.remove()
    assert batches == [(8, 32, 32, 32)] * (2 + 7)  # warm-up and timed passes, each on the whole batch
    x = torch.randn(8, 32, 32, 32)
    assert count_flops(big, x) == 4 * count_flops(small, x)


def test_time_calls_runs_warmup_then_timed_calls():
    calls = []
    times = time_calls(lambda: calls.append(len(calls)), warmup=2, repeats=5)
    assert len(calls) == 2 + 5 and len(times) == 5 and times == sorted(times) and times[0] >= 0


def test_format_table_and_human_numbers():
    table = format_table([{"model": "a", "top-1": 91.234, "params": human(1_234_567)},
                          {"model": "long name", "top-1": 5.0, "params": human(999)}])
    lines = table.splitlines()
    assert lines[0].split() == ["model", "top-1", "params"] and len(lines) == 4
    assert "91.23" in lines[2] and "1.23M" in lines[2] and "999" in lines[3]
    assert lines[2].index("91.23") + 5 == lines[3].index("5.00") + 4  # numbers right-aligned
    assert format_table([]) == "" and human(40_550_000) == "40.5M" and human(2.5e9, "FLOPs") == "2.5GFLOPs"
