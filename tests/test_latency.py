"""The latency model (rlpruner.latency): ops rebuilt alone, the table's predictions, its cache, the
width multiple it chooses, and how the search uses it (no candidate is ever timed)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from rlpruner import host_memory, metrics
from rlpruner.errors import ConfigError, UnknownNameError
from rlpruner.graph import trace
from rlpruner.latency import (
    Runtime,
    Stopwatch,
    Turns,
    aligned_model_costs,
    build_table,
    cached_table,
    choose_round_to,
    find_ops,
    get_runtime,
    median_interval,
    prediction_error,
    random_removals,
    rounding_costs,
    uniform_removals,
)
from rlpruner.latency.table import calibration_plans
from rlpruner.models import create_model
from rlpruner.surgery import prune_channels
from rlpruner.search import CompressConfig, Reward, RLConfig, Target, compress


def _flops_clock(calls=None, penalty=None):
    """A deterministic 'runtime': latency = FLOPs / 1e4 (+ `penalty(module)`), each call recorded."""
    def time_ms(self, module, inputs, watch):
        if calls is not None:
            calls.append(module)
        return metrics.count(module, inputs).flops / 1e4 + (penalty(module) if penalty else 0.0)
    return time_ms


def _mobilenet():
    torch.manual_seed(0)
    return create_model("mobilenetv2", num_classes=5, width_mult=0.25).eval(), torch.randn(1, 3, 16, 16)


def test_every_op_rebuilt_alone_at_full_width_computes_the_layers_flops():
    model, x = _mobilenet()
    graph = trace(model, x)
    ops = find_ops(model, graph, x)
    assert {op.weight for op in ops} == {w for w, _ in graph.costs}
    assert any(op.groups > 1 for op in ops) and any(op.kind == "linear" for op in ops)
    by_weight = dict(graph.costs)
    for op in ops:
        module, inputs = op.build(op.out, op.inner, batch=1)
        assert metrics.count(module, inputs).flops == 2 * by_weight[op.weight] * int(np.prod(graph.shapes[op.weight]))


def test_a_depthwise_op_rebuilt_narrower_keeps_one_channel_per_group():
    model, x = _mobilenet()
    op = next(op for op in find_ops(model, trace(model, x), x) if op.groups > 1)
    module, (inputs,) = op.build(op.out // 2, op.inner, batch=2)
    assert module.groups == module.in_channels == module.out_channels == op.out // 2
    assert module(inputs).shape[:2] == (2, op.out // 2)


def test_the_table_predicts_random_pruned_models_exactly_on_a_bilinear_clock(monkeypatch):
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    model, x = _mobilenet()
    graph = trace(model, x)
    table = build_table(model, graph, x, get_runtime("torch-cpu"), batch=2, points=4)
    assert all(scale == pytest.approx(1.0, rel=1e-6) for scale in table.fit.scales.values())
    rng = np.random.default_rng(0)
    for _ in range(5):
        removals = random_removals(graph, rng, low=0.1)
        expected = 2 * graph.count(removals)[1] / 1e4  # batch 2
        assert table.predict(graph.new_shapes(removals)) == pytest.approx(expected, rel=1e-6)
    error = prediction_error(model, graph, table, get_runtime("torch-cpu"), x, samples=3)
    assert error.worst < 1e-6 and len(error.samples) == 3


def test_layers_timed_on_a_machine_that_changes_speed_between_them_still_make_an_exact_table(monkeypatch):
    """The machine runs everything 30 % slower while every other layer is timed (what a shared VM does
    over minutes). A layer's widths are timed in turns with a reference layer that slows alike, so its
    curve is scaled back and the table predicts exactly; timed one width after the other, half the
    curves come out 30 % slow and random models' latency shares are off."""
    from rlpruner.latency import table as tables

    phase = {"slow": False}
    clock = _flops_clock()
    monkeypatch.setattr(Runtime, "time_ms", lambda self, m, i, w: clock(self, m, i, w) * (1.3 if phase["slow"] else 1.0))
    measure = tables.measure_curve

    def changing(*args, **kwargs):
        phase["slow"] = not phase["slow"]
        return measure(*args, **kwargs)

    monkeypatch.setattr(tables, "measure_curve", changing)
    model, x = _mobilenet()
    graph = trace(model, x)
    shares = {}
    for name, layers in (("turns", Turns(warmup=1, block=2, rounds=3)), ("sequential", None)):
        phase["slow"] = False
        table = build_table(model, graph, x, get_runtime("torch-cpu"), points=4, layers=layers)
        shares[name] = prediction_error(model, graph, table, get_runtime("torch-cpu"), x, samples=5).share_errors
    assert max(shares["turns"]) < 1e-6
    assert max(shares["sequential"]) > 0.01  # the same build with its layers timed one after the other


def test_a_layers_widths_beyond_the_memory_of_one_session_are_timed_in_several_each_with_the_reference(
        monkeypatch):
    from rlpruner.latency import layers as tables

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    sessions = []
    in_turns = Runtime.time_cases_ms
    monkeypatch.setattr(Runtime, "time_cases_ms", lambda self, cases, turns: sessions.append(cases) or
                        in_turns(self, cases, turns))
    model, x = _mobilenet()
    op = max(find_ops(model, trace(model, x), x), key=lambda o: o.inner)
    reference = tables.reference_call(op, get_runtime("torch-cpu"), 2, Turns(rounds=3))
    widths = [(op.out, op.inner), (op.out - 1, op.inner), (op.out, op.inner - 1), (op.out, op.inner - 2)]
    expected = {w: _flops_clock()(None, *op.build(*w, 2), None) for w in widths}
    sessions.clear()
    one = tables.time_widths(op, widths, get_runtime("torch-cpu"), 2, Stopwatch(), Turns(rounds=3), reference)
    assert one == pytest.approx(expected) and len(sessions) == 1
    assert len({id(inputs) for _, inputs in sessions[0]}) == 4  # 3 input widths and the reference's
    sessions.clear()
    small = tables.time_widths(op, widths, get_runtime("torch-cpu"), 2, Stopwatch(), Turns(rounds=3), reference,
                               memory=1)
    assert small == pytest.approx(expected) and len(sessions) == 3  # one input width per session
    assert [len(cases) for cases in sessions] == [3, 2, 2]  # the widths that share an input stay together
    assert all(cases[-1][0] is reference.module for cases in sessions)


def _misaligned_elements_clock(block, ms_per_element, shape=(1, 3, 16, 16)):
    """The FLOPs clock plus, for whole models only (more than one conv), a cost per output element of
    every conv whose width is not a multiple of `block`: a layout change between layers, which a
    layer timed alone does not show (as ONNX Runtime's blocked layout)."""
    def penalty(module):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        if len(convs) < 2:
            return 0.0
        elements = []
        handles = [c.register_forward_hook(lambda m, a, out: elements.append(
            out[0].numel() if m.out_channels % block else 0)) for c in convs]
        try:
            with torch.no_grad():
                module(torch.randn(*shape))
        finally:
            for h in handles:
                h.remove()
        return ms_per_element * sum(elements)
    return penalty


def test_the_fit_learns_a_whole_model_cost_of_widths_off_a_block_that_layers_alone_do_not_show(monkeypatch):
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=_misaligned_elements_clock(8, 1e-3)))
    model, x = _mobilenet()
    graph = trace(model, x)
    table = build_table(model, graph, x, get_runtime("torch-cpu"), points=4)
    assert table.fit.block == 8 and table.fit.misaligned_ms > 0 and table.fit.cv_error < 1e-6
    rng = np.random.default_rng(3)
    for multiple in (1, 8):  # odd widths pay the layout cost, aligned ones do not
        error = prediction_error(model, graph, table, get_runtime("torch-cpu"), x, samples=4, seed=3,
                                 multiple=multiple)
        assert error.worst < 1e-6
    odd = random_removals(graph, rng)
    assert table.misaligned(graph.new_shapes(odd), 8) > 0 == table.misaligned(graph.shapes, 8)


def test_the_fit_keeps_one_scale_and_no_block_term_when_nothing_needs_them(monkeypatch):
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    model, x = _mobilenet()
    table = build_table(model, trace(model, x), x, get_runtime("torch-cpu"), points=4)
    assert table.fit.block == 1 and table.fit.misaligned_ms == 0.0
    assert len(set(table.fit.scales.values())) == 1 and table.fit.cv_error < 1e-6
    assert "leave-one-out error" in table.fit.describe()


def test_calibration_models_cover_odd_and_aligned_widths_and_start_with_the_original():
    model, x = _mobilenet()
    graph = trace(model, x)
    plans = calibration_plans(graph)
    assert plans[0] == ("original", {})
    wide = [g for g in graph.prunable_groups() if g.size > 8]  # narrower groups are never rounded
    widths = [[g.size - len(removals.get(g.name, ())) for g in wide] for _, removals in plans[1:]]
    assert any(all(w % 8 == 0 for w in kept) for kept in widths)
    assert any(any(w % 8 for w in kept) for kept in widths)
    assert len({json.dumps({k: v.tolist() for k, v in r.items()}, sort_keys=True) for _, r in plans}) == len(plans)
    aligned = calibration_plans(graph, 8)  # a table at multiple 8 has one set only
    assert len(aligned) < len(plans) and all("multiples of 8" in name for name, _ in aligned[1:])


def test_odd_widths_are_seen_by_the_table_at_its_grid_and_rounding_picks_their_multiple(monkeypatch):
    def slow_when_not_a_multiple_of_4(module):
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        return 20.0 * sum(m.out_channels % 4 != 0 for m in convs)

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=slow_when_not_a_multiple_of_4))
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, widths=[32, 64]).eval()
    x = torch.randn(1, 3, 16, 16)
    costs = rounding_costs(find_ops(model, trace(model, x), x), get_runtime("torch-cpu"), batch=1)
    assert choose_round_to(costs) == 4
    assert costs[1] > costs[4] == pytest.approx(1.0, rel=0.05)


def test_whole_models_with_widths_on_the_block_are_predicted_faster_so_that_block_is_chosen(monkeypatch):
    """Layers alone do not show a layout cost between layers; the table's block term does, and so
    widths rounded to the block are predicted faster only where that cost is paid."""
    model, x = _mobilenet()
    graph = trace(model, x)
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=_misaligned_elements_clock(8, 1e-2)))
    costs = aligned_model_costs(build_table(model, graph, x, get_runtime("torch-cpu"), points=4), graph, largest=8)
    assert costs[1] == 1.0 and costs[8] < 0.5 and choose_round_to(costs) == 8
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    plain = aligned_model_costs(build_table(model, graph, x, get_runtime("torch-cpu"), points=4), graph, largest=8)
    assert all(c >= 1.0 for c in plain.values()) and choose_round_to(plain) == 1  # no block to pay for


def test_round_to_auto_takes_the_block_that_only_whole_models_pay_for(tiny_splits, tiny_trained, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=_misaligned_elements_clock(4, 1e-2, (1, 1, 8, 8))))
    logs = []
    result = compress(tiny_trained, tiny_splits, _latency_config(tmp_path), out_dir=tmp_path / "run",
                      evaluate_test=False, log=logs.append)
    assert result.results["latency"]["round_to"] == 4  # per layer it would be 1: no layer alone pays
    assert any("round_to auto: 4, not 1" in line for line in logs)
    assert all(w % 4 == 0 for w in result.records[-1].widths.values())


def test_choose_round_to_takes_the_smallest_multiple_within_the_tolerance():
    assert choose_round_to({1: 1.30, 2: 1.10, 4: 1.02, 8: 1.00, 16: 1.00}) == 4
    assert choose_round_to({1: 1.0, 8: 1.0}) == 1
    assert choose_round_to({}) == 1


def test_the_cache_reuses_a_table_rebuilds_a_corrupt_one_and_keys_the_batch(monkeypatch, tmp_path):
    calls, logs = [], []
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(calls))
    model, x = _mobilenet()
    graph = trace(model, x)
    runtime = get_runtime("torch-cpu")
    first = cached_table(model, graph, x, runtime, batch=1, points=3, cache_dir=tmp_path, log=logs.append)
    built = len(calls)
    again = cached_table(model, graph, x, runtime, batch=1, points=3, cache_dir=tmp_path, log=logs.append)
    assert len(calls) == built
    assert json.loads(json.dumps(again.to_dict())) == json.loads(json.dumps(first.to_dict()))
    assert [op.signature for op in again.ops] == [op.signature for op in first.ops]
    assert again.predict(graph.shapes) == pytest.approx(first.predict(graph.shapes))
    (path,) = tmp_path.glob("*.json")
    path.write_text("{not json")
    cached_table(model, graph, x, runtime, batch=1, points=3, cache_dir=tmp_path, log=logs.append)
    assert len(calls) == 2 * built and any("unreadable" in line for line in logs)
    cached_table(model, graph, x, runtime, batch=4, points=3, cache_dir=tmp_path, log=logs.append)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_real_runtimes_time_a_layer_and_name_what_the_time_depends_on():
    conv, inputs = nn.Conv2d(8, 16, 3, padding=1), (torch.randn(2, 8, 16, 16),)
    watch = Stopwatch(warmup=1, repeats=3, rounds=1)
    for name in ("torch-cpu", "onnxruntime-cpu"):
        runtime = get_runtime(name, threads=1)
        assert runtime.time_ms(conv, inputs, watch) > 0
        key = runtime.key()
        assert key["runtime"] == name and key["threads"] == 1 and key["processor"]
    assert "onnxruntime" in get_runtime("onnxruntime-cpu").key()
    assert conv.training  # the layer's mode is restored


FAULTS_PER_CALL = """
import ctypes, resource, sys, torch
from torch import nn
from rlpruner import host_memory
from rlpruner.metrics import time_calls
# glibc's state before its first large free: blocks above 128 KiB are mapped and unmapped per use.
# Whether a fresh process stays in it depends on its history (so it is set here, not hoped for).
assert host_memory._mallopt()(host_memory.M_MMAP_THRESHOLD, 128 * 1024)
torch.set_num_threads(1)
torch.manual_seed(0)
# multi-megabyte activations of several sizes, the pattern that makes glibc hand memory back per call
model = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU6(),
                      nn.Conv2d(96, 96, 3, padding=1, groups=96), nn.BatchNorm2d(96), nn.ReLU6(),
                      nn.Conv2d(96, 24, 1), nn.Conv2d(24, 144, 1), nn.ReLU6()).eval()
x = torch.randn(1, 3, 112, 112)
call = lambda: model(x)
if sys.argv[1] == "timed":
    with torch.inference_mode():
        time_calls(call, warmup=3, repeats=1)  # the timing loop sets the allocator up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        time_calls(call, warmup=0, repeats=20)
else:
    with torch.inference_mode():
        for _ in range(4):
            call()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            call()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif("glibc" not in host_memory.describe(), reason="glibc only: other allocators are left as they are")
def test_cpu_timings_run_with_an_allocator_that_keeps_freed_memory_so_calls_do_not_fault():
    """With glibc mapping large blocks per use (its state before its first large free, in which a
    fresh process may or may not stay), multi-megabyte activations are returned to the system after
    each call and faulted back in on the next; timed through rlpruner's loop, which sets the
    allocator up, the same calls fault (almost) never."""
    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL, mode], capture_output=True, text=True,
                              check=True, timeout=120)
        return int(done.stdout.split()[-1])

    timed, plain = faults("timed"), faults("plain")
    assert plain > 20 * 1000, (timed, plain)  # the state the timings avoid: thousands of pages per call
    assert timed * 20 < plain, (timed, plain)  # at most a heap growth or two (~1200 pages each) over 20 calls
    assert "glibc" in host_memory.describe() and get_runtime("torch-cpu").key()["host_memory"] == host_memory.describe()


def test_the_real_clock_gives_a_finite_error_report():
    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[16, 32]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    runtime = get_runtime("torch-cpu")
    quick, turns = Stopwatch(warmup=1, repeats=3, rounds=1), Turns(warmup=1, block=2, rounds=3)
    table = build_table(model, graph, x, runtime, points=3, watch=quick, turns=turns)
    error = prediction_error(model, graph, table, runtime, x, samples=3, turns=turns)
    report = error.to_dict()
    assert np.isfinite(error.median) and error.median <= error.worst and report["samples"]
    assert report["original"]["measured_ms"] > 0 and 0 <= report["share_median"] <= report["share_worst"]


def test_bad_latency_options_get_one_clear_message():
    with pytest.raises(UnknownNameError, match="latency runtime 'tensorrt'.*onnxruntime-cpu"):
        CompressConfig(latency_runtime="tensorrt")
    with pytest.raises(ConfigError, match="round_to must be >= 1 or 'auto'"):
        RLConfig(round_to="sometimes")
    with pytest.raises(ConfigError, match="latency_points"):
        CompressConfig(latency_points=1)
    with pytest.raises(ConfigError, match="turns: need warmup >= 0, block >= 1"):
        Turns(block=0)
    with pytest.raises(ConfigError, match="latency_checks must be >= 0, got -1"):
        CompressConfig(latency_checks=-1)
    for slack in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="latency_slack must be in"):
            CompressConfig(latency_slack=slack)
    for seconds in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="latency_pair_s must be > 0 seconds"):
            CompressConfig(latency_pair_s=seconds)
    with pytest.raises(ConfigError, match="threads"):
        get_runtime("torch-cpu", threads=0)
    with pytest.raises(ConfigError, match="must be resolved"):
        RLConfig().capacity([4, 8])


def _turn_sessions(monkeypatch, calls):
    """Each timing in turns from now on (`Runtime.time_cases_turns_ms`, which `time_turns_ms` and
    `time_ratio` use), as (models, batch, timings it made), recorded as it ends; `calls`: the list the
    test's clock appends every timing to."""
    sessions = []
    in_turns = Runtime.time_cases_turns_ms

    def recorded(self, cases, turns):
        before = len(calls)
        try:
            return in_turns(self, cases, turns)
        finally:
            sessions.append((len(cases), cases[0][1][0].shape[0], len(calls) - before))

    monkeypatch.setattr(Runtime, "time_cases_turns_ms", recorded)
    return sessions


def _latency_config(tmp_path, **rl):
    from rlpruner.distill import DistillConfig

    return CompressConfig(target=Target("latency", 0.4), reward=Reward("latency"),
                          rl=RLConfig(lr_epoch=2, sample_num=3, prune_filter_ratio=0.1, calibration_samples=16,
                                      score_samples=32, bn_samples=16, **rl),
                          kd=DistillConfig(epochs=0), final_epochs=0, report_batch=2,
                          latency_cache=str(tmp_path / "cache"), latency_fresh=False, progress=False)  # the test's clock


def test_a_latency_search_times_no_candidate_and_reports_predicted_beside_measured(
        tiny_splits, tiny_trained, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(calls))
    sessions = _turn_sessions(monkeypatch, calls)
    result = compress(tiny_trained, tiny_splits, _latency_config(tmp_path, round_to=1), out_dir=tmp_path / "run",
                      evaluate_test=False)
    whole_models = [m for m in calls if any(isinstance(c, nn.Linear) for c in m.modules())
                    and any(isinstance(c, nn.Conv2d) for c in m.modules())]
    # every whole model is timed in turns: the table's calibration models, the target's check (original and
    # model; once: the clock agrees with the table), then base and final at the latency and the report batch
    calibration = len(calibration_plans(trace(tiny_trained, torch.randn(1, 1, 8, 8))))
    assert [(n, batch) for n, batch, _ in sessions] == [(calibration, 1), (2, 1), (2, 1), (2, 2)]
    assert len(whole_models) == sum(timed for _, _, timed in sessions)
    assert [c["met"] for c in result.results["latency_checks"]] == [True]
    assert sum(r.candidates for r in result.records) > 8
    base, final = result.results["base"], result.results["final"]
    assert final["predicted_latency_ms"] == pytest.approx(final["latency_ms"], rel=1e-6)
    assert base["predicted_latency_ms"] == pytest.approx(base["latency_ms"], rel=1e-6)
    assert result.results["reached"]["latency"] >= 0.4
    assert result.results["latency"]["runtime"] == "torch-cpu" and result.results["latency"]["table"]["batch"] == 1
    # the report's latency change is the pair's measured ratio with its interval (one point: the clock is exact)
    change = final["latency_change"]
    assert change["change"] == pytest.approx(final["latency_ms"] / base["latency_ms"] - 1, rel=1e-9)
    assert change["low"] == change["change"] == change["high"] and change["turns"] >= 16
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert f"| {change['change']:+.1%} (95% interval {change['low']:+.1%} to {change['high']:+.1%}, " in summary
    for record in result.records:
        assert record.latency_ms is not None


def test_a_latency_target_the_table_misjudges_is_met_by_timing_and_a_resume_does_not_time_again(
        tiny_splits, tiny_trained, tmp_path, monkeypatch):
    from dataclasses import replace

    example = torch.randn(1, 1, 8, 8)
    original_ms = metrics.count(tiny_trained, example).flops / 1e4
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    honest = replace(_latency_config(tmp_path, round_to=1), latency_checks=0)
    assert compress(tiny_trained, tiny_splits, honest, out_dir=tmp_path / "honest",
                    evaluate_test=False).results["reached"]["latency"] >= 0.4
    # the runtime now realises only 70 % of what pruning saves in the table (built above, reused):
    # the table promises more than the clock gives, as on a machine that changed since it was built
    calls = []
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(calls, penalty=lambda m: 0.3 * max(
        0.0, original_ms - metrics.count(m, example).flops / 1e4) if isinstance(m, type(tiny_trained)) else 0.0))
    trusted = compress(tiny_trained, tiny_splits, honest, out_dir=tmp_path / "trusted", evaluate_test=False)
    assert trusted.results["reached"]["latency"] < 0.4 - 0.05 and trusted.results["latency_checks"] == []
    lines = []
    checked = compress(tiny_trained, tiny_splits, replace(honest, latency_checks=2), out_dir=tmp_path / "checked",
                       evaluate_test=False, log=lines.append)
    checks = checked.results["latency_checks"]
    assert checked.results["reached"]["latency"] >= 0.4 - 0.01
    assert not checks[0]["met"] and checks[-1]["met"] and len(checks) <= 2
    assert checks[0]["next_goal_ms"] < checks[0]["goal_ms"]
    assert checks[0]["measured_reduction"] == pytest.approx(0.7 * checks[0]["predicted_reduction"], rel=1e-6)
    assert checked.results["final"]["flops"] < trusted.results["final"]["flops"]
    assert any("the search goes on to a predicted" in line for line in lines), lines
    assert any("target met" in line for line in lines), lines
    summary = (tmp_path / "checked" / "summary.md").read_text()
    assert "pruned on)" in summary and "95% interval" in summary
    saved = json.loads((tmp_path / "checked" / "state.json").read_text())
    assert saved["latency_checks"] == checks and saved["goal"] == checks[0]["next_goal_ms"]
    # a resume redoes the final phase from the checkpoint: the checks are read back, not timed again
    timed, sessions = len(calls), _turn_sessions(monkeypatch, calls)
    resumed = compress(tiny_trained, tiny_splits, replace(honest, latency_checks=2), out_dir=tmp_path / "checked",
                       evaluate_test=False, resume=True)
    assert resumed.results["latency_checks"] == checks
    # base and final in turns, at the latency batch and at the report batch: nothing else is timed
    assert [(n, batch) for n, batch, _ in sessions] == [(2, 1), (2, 2)]
    assert len(calls) - timed == sum(t for _, _, t in sessions)
    assert resumed.results["final"]["flops"] == checked.results["final"]["flops"]


@pytest.mark.parametrize("realised, second", [(0.5, None), (0.7, 0.3)])
def test_timings_are_believed_only_so_far(tiny_splits, tiny_trained, tmp_path, monkeypatch, realised, second):
    """A timing that says the table overstates a reduction by more than MAX_OPTIMISM is believed up to
    that; a second timing that finds less reduction than the first, for a model pruned further, is
    noise larger than the table's error: the model is kept, not pruned on."""
    from dataclasses import replace

    from rlpruner.search.measured import MAX_OPTIMISM

    example = torch.randn(1, 1, 8, 8)
    original_ms = metrics.count(tiny_trained, example).flops / 1e4
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    config = replace(_latency_config(tmp_path, round_to=1), latency_checks=0)
    compress(tiny_trained, tiny_splits, config, out_dir=tmp_path / "build", evaluate_test=False)  # the table
    share = {"now": realised}

    def pessimistic(self, module, inputs, watch):  # the runtime realises only `share` of the table's savings
        ms = metrics.count(module, inputs).flops / 1e4
        return ms + (1 - share["now"]) * max(0.0, original_ms - ms) if isinstance(module, type(tiny_trained)) else ms

    lines = []

    def log(line):
        lines.append(line)
        if second is not None and "the search goes on" in line:
            share["now"] = second  # the next timing finds the machine noisier than the table's error

    monkeypatch.setattr(Runtime, "time_ms", pessimistic)
    result = compress(tiny_trained, tiny_splits, replace(config, latency_checks=2), out_dir=tmp_path / "run",
                      evaluate_test=False, log=log)
    checks, base_predicted = result.results["latency_checks"], result.results["base"]["predicted_latency_ms"]
    first = checks[0]
    assert not first["met"] and first["measured_reduction"] == pytest.approx(realised * first["predicted_reduction"])
    optimism = min(first["predicted_reduction"] / first["measured_reduction"], MAX_OPTIMISM)
    assert first["next_goal_ms"] == pytest.approx(base_predicted * (1 - 0.4 * optimism))
    if second is None:
        assert optimism == MAX_OPTIMISM  # the timing said 2x; believed 1.5x
    else:
        assert len(checks) == 2 and checks[1]["next_goal_ms"] is None and not checks[1]["met"]
        assert checks[1]["measured_reduction"] < first["measured_reduction"]
        assert any("noisier than the table's error, so the model is kept" in line for line in lines), lines
        assert result.records[-1].step == checks[1]["step"]  # no step after the second timing


def test_the_median_interval_is_the_textbook_one_and_covers_the_median_as_often_as_it_says():
    assert median_interval(list(range(1, 21))) == (6, 15)  # n = 20: the 6th and 15th smallest
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95 %: the range
    assert median_interval([0.5] * 50) == (0.5, 0.5)
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        low, high = median_interval(list(rng.exponential(1.0, size=41)))  # skewed, median ln 2
        covered += low <= np.log(2.0) <= high
    assert 0.94 <= covered / 2000 <= 0.985  # order statistics: at least 95 %, a little over at n = 41
    with pytest.raises(ConfigError, match="median_interval"):
        median_interval([])


@pytest.mark.parametrize("noise, pruned_on", [(0.0, True), (0.9, False)])
def test_a_miss_counts_only_beyond_the_timings_own_precision(tiny_splits, tiny_trained, tmp_path, monkeypatch,
                                                             noise, pruned_on):
    """The clock realises 88 % of what the table predicts: the model the table says is 43 % faster is 38 %
    faster, a miss of the 40 % target by more than the 1 % slack. Timed on a quiet machine (every turn alike) the miss is believed and the search prunes on;
    timed on a busy one (each timing of the pruned model off by up to 90 %, as when another job takes the
    core now and then) the same median miss lies within the timing's interval: the model is kept."""
    import random
    from dataclasses import replace

    example = torch.randn(1, 1, 8, 8)
    original_ms = metrics.count(tiny_trained, example).flops / 1e4
    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    config = replace(_latency_config(tmp_path, round_to=1), latency_checks=0)
    compress(tiny_trained, tiny_splits, config, out_dir=tmp_path / "build", evaluate_test=False)  # the table
    draw = random.Random(1)

    def busy(self, module, inputs, watch):
        ms = metrics.count(module, inputs).flops / 1e4
        if not isinstance(module, type(tiny_trained)) or ms >= original_ms:
            return ms
        return (ms + 0.12 * (original_ms - ms)) * (1.0 + noise * draw.uniform(-1.0, 1.0))

    monkeypatch.setattr(Runtime, "time_ms", busy)
    lines = []
    result = compress(tiny_trained, tiny_splits, replace(config, latency_checks=2), out_dir=tmp_path / "run",
                      evaluate_test=False, log=lines.append)
    first = result.results["latency_checks"][0]
    assert first["turns"] >= 20 and first["measured_low"] <= first["measured_reduction"] <= first["measured_high"]
    if pruned_on:
        assert first["measured_reduction"] < 0.4 - 0.01
    assert (first["next_goal_ms"] is not None) == pruned_on and first["met"] != pruned_on
    if pruned_on:
        assert first["measured_high"] - first["measured_low"] < 1e-9
        assert any("missed by more than 1.0%; the search goes on" in line for line in lines), lines
    else:
        assert first["measured_high"] >= 0.4 - 0.01 and len(result.results["latency_checks"]) == 1
        assert any("target met, within the timing's precision" in line for line in lines), lines


def test_a_fresh_process_times_the_models_on_its_own_clock_and_a_model_without_spec_falls_back(monkeypatch):
    """The pair is timed in a child process that rebuilds both models from files: this process's clock
    (here a fake one that says every model takes 1 ms) does not reach it. A model object with no
    architecture spec cannot be rebuilt there: the run times it in its own process and says so."""
    from rlpruner.latency.fresh import FreshProcessUnavailable, time_ratio_fresh
    from rlpruner.search.latency import measure_ratio

    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[16, 32]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    pruned = prune_channels(model, graph, uniform_removals(graph, 0.5), inplace=False)
    monkeypatch.setattr(Runtime, "time_ms", lambda self, module, inputs, watch: 1.0)
    runtime, turns = get_runtime("torch-cpu", 1), Turns(warmup=1, block=5, settle=1, seconds=0.3, least=8)
    here = runtime.time_ratio(model, pruned, (x,), turns)
    assert here.ratio == here.low == here.high == 1.0  # the fake clock
    fresh = time_ratio_fresh(runtime, model, pruned, (x,), turns)
    assert fresh.turns >= 8 and fresh.low <= fresh.ratio <= fresh.high and fresh.first_ms != 1.0
    config = CompressConfig(target=Target("latency", 0.3), latency_pair_s=0.3)
    lines = []
    assert measure_ratio(config, runtime, model, pruned, x, lines.append)[1] == "fresh" and not lines
    bare = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(FreshProcessUnavailable, match="no architecture spec"):
        time_ratio_fresh(runtime, bare, bare, (x,), turns)
    timed, where = measure_ratio(config, runtime, bare, bare, x, lines.append)
    assert where == "run" and timed.ratio == 1.0
    assert lines == ["latency timed in the run's process, not a fresh one: the model has no architecture spec to "
                     "rebuild it from"]


def test_a_fresh_process_is_used_on_cpu_runtimes_for_runs_that_optimise_latency_unless_told_otherwise():
    from dataclasses import replace

    from rlpruner.search.latency import in_fresh_process

    cpu = get_runtime("torch-cpu", 1)

    class OnCuda(Runtime):
        device = torch.device("cuda")

    latency, flops = CompressConfig(target=Target("latency", 0.3)), CompressConfig(target=Target("flops", 0.3))
    assert in_fresh_process(latency, cpu) and not in_fresh_process(flops, cpu)
    assert in_fresh_process(CompressConfig(target=Target("flops", 0.3), reward=Reward("latency")), cpu)
    assert in_fresh_process(replace(flops, latency_fresh=True), cpu)
    assert not in_fresh_process(replace(latency, latency_fresh=False), cpu)
    assert not in_fresh_process(replace(latency, latency_fresh=True), OnCuda())


def test_models_timed_in_turns_keep_their_ratio_on_a_machine_that_slows_down_halfway(monkeypatch):
    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[16, 32]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    pruned = prune_channels(model, graph, uniform_removals(graph, 0.5), inplace=False)
    calls = []

    def slowing(self, module, inputs, watch):  # 30 % slower from the 15th timing on (say another job starts)
        calls.append(module)
        return metrics.count(module, inputs).flops / 1e4 * (1.3 if len(calls) > 14 else 1.0)

    monkeypatch.setattr(Runtime, "time_ms", slowing)
    runtime = get_runtime("torch-cpu")
    base_ms, pruned_ms = runtime.time_turns_ms([model, pruned], (x,), Turns(warmup=1, block=5, rounds=12))
    truth = metrics.count(pruned, x).flops / metrics.count(model, x).flops
    assert pruned_ms / base_ms == pytest.approx(truth, rel=1e-9)
    assert len(calls) == 2 + 2 * 12 and calls[2:6] == [model, pruned, model, pruned]  # one after the other: 30 % off
    # the same turns with their ratio's interval: every turn's ratio is the truth, so the interval is that point
    ratio = runtime.time_ratio(model, pruned, (x,), Turns(warmup=1, block=5, rounds=12))
    assert ratio.ratio == pytest.approx(truth, rel=1e-9) and ratio.low == ratio.ratio == ratio.high
    assert ratio.turns == 12 and ratio.second_ms / ratio.first_ms == pytest.approx(truth, rel=1e-9)


def test_a_reduction_is_timed_in_turns_so_a_drifting_machine_does_not_fake_a_miss(
        tiny_splits, tiny_trained, tmp_path, monkeypatch):
    from dataclasses import replace

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock())
    config = replace(_latency_config(tmp_path, round_to=1), latency_checks=0)
    compress(tiny_trained, tiny_splits, config, out_dir=tmp_path / "build", evaluate_test=False)  # the table
    calls = []

    def drifting(self, module, inputs, watch):  # every timing 1 % slower than the one before
        calls.append(module)
        return metrics.count(module, inputs).flops / 1e4 * (1.0 + 0.01 * len(calls))

    monkeypatch.setattr(Runtime, "time_ms", drifting)
    result = compress(tiny_trained, tiny_splits, replace(config, latency_checks=2), out_dir=tmp_path / "run",
                      evaluate_test=False)
    checks = result.results["latency_checks"]
    assert [c["met"] for c in checks] == [True]  # timed one after the other: 17 % apart, a miss
    assert checks[0]["measured_reduction"] == pytest.approx(checks[0]["predicted_reduction"], abs=0.005)
    flops_kept = result.results["final"]["flops"] / result.results["base"]["flops"]
    assert result.results["reached"]["latency"] == pytest.approx(1.0 - flops_kept, abs=0.005)


def test_round_to_auto_measures_the_multiple_for_a_latency_run_only(tiny_splits, tiny_trained, tmp_path, monkeypatch):
    def slow_when_odd(module):
        return 20.0 * sum(m.out_channels % 2 != 0 for m in module.modules() if isinstance(m, nn.Conv2d))

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=slow_when_odd))
    result = compress(tiny_trained, tiny_splits, _latency_config(tmp_path), out_dir=tmp_path / "run",
                      evaluate_test=False)
    # even widths run fastest; 4 would too, but a multiple is at most a quarter of the narrowest group (8)
    assert result.results["latency"]["round_to"] == 2
    assert all(w % 2 == 0 for w in result.records[-1].widths.values())
    flops_run = compress(tiny_trained, tiny_splits, CompressConfig(
        target=Target("flops", 0.3), rl=RLConfig(lr_epoch=1, sample_num=2, prune_filter_ratio=0.2), final_epochs=0,
        progress=False), out_dir=tmp_path / "flops", evaluate_test=False)
    assert flops_run.results["latency"]["round_to"] == 1 and flops_run.results["latency"]["table"] is None


def test_the_latency_command_builds_checks_reuses_and_writes_json(capsys, tmp_path):
    from tests.test_cli_foundation import run_cli

    argv = ("latency", "simple_cnn", "--input", "3x16x16", "--num-classes", "3", "--check", "2", "--points", "3",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "t.json"))
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "median" in out and "stored" in out
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["key"]["runtime"] == "torch-cpu" and len(report["error"]["samples"]) == 2
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "reusing" in out


@pytest.mark.parametrize("argv, match", [
    (("--input", "3xbig"), "--input '3xbig' must look like 3x224x224"),
    (("--runtime", "tensorrt"), "unknown latency runtime 'tensorrt'"),
    (("--batch", "0"), "--batch must be >= 1"),
])
def test_the_latency_command_refuses_bad_input_in_one_line(capsys, tmp_path, argv, match):
    from tests.test_cli_foundation import assert_user_error

    assert_user_error(capsys, "latency", "simple_cnn", "--cache", str(tmp_path), *argv, match=match)
    assert not list(tmp_path.iterdir())


def test_a_runtime_that_favours_blocks_of_8_gets_its_own_grid_for_the_widths_off_the_block(monkeypatch):
    from rlpruner.latency.table import detect_block

    def slow_off_the_block(module):  # what ONNX Runtime's blocked layouts do to some widths, exaggerated
        return sum(256 * m.weight.numel() / 1e4 for m in module.modules()  # half the FLOPs term (16x16)
                   if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels % 8)

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=slow_off_the_block))
    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[64, 128]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    runtime = get_runtime("torch-cpu")
    assert detect_block(find_ops(model, graph, x), runtime, 1, Stopwatch()) == 8
    table = build_table(model, graph, x, runtime, points=4)
    conv = next(c for c in table.curves.values() if c.out_odd_grid)
    assert conv.block == 8 and all(w % 8 == 7 for w in conv.out_odd_grid)
    worst = 0.0
    for seed in range(4):
        removals = random_removals(graph, np.random.default_rng(seed))
        pruned = prune_channels(model, graph, removals, inplace=False)
        measured = runtime.time_ms(pruned, (x,), Stopwatch())
        worst = max(worst, abs(table.predict(graph.new_shapes(removals)) / measured - 1))
    assert worst < 0.05


def test_a_latency_step_stays_a_real_step_where_slightly_narrower_odd_widths_run_slower(monkeypatch):
    """Where removing a few channels makes a layer slower (odd widths), a step's latency budget is the
    average cost per channel over each group's whole range: positive, and for FLOPs exactly one
    channel's cost, as before."""
    from rlpruner.search.context import _step_cost
    from rlpruner.search.targets import Measure

    def slow_when_odd(module):
        return 50.0 * sum(m.out_channels % 4 != 0 for m in module.modules() if isinstance(m, nn.Conv2d))

    monkeypatch.setattr(Runtime, "time_ms", _flops_clock(penalty=slow_when_odd))
    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[32, 64]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    table = build_table(model, graph, x, get_runtime("torch-cpu"), points=4)
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    one_off = {g.name: np.arange(3) for g in graph.prunable_groups()}  # widths 29 and 61: slower than full
    assert table.predict(graph.new_shapes(one_off)) > table.predict(graph.shapes)
    params, flops = graph.count()
    base = Measure(units=sum(sizes.values()), params=params, flops=flops, latency_ms=table.predict(graph.shapes))
    names, config = tuple(sizes), CompressConfig(target=Target("latency", 0.4), rl=RLConfig(round_to=1))
    latency_cost = _step_cost(config, Target("latency", 0.4).rule, graph, names, sizes, 10, base, table)
    assert latency_cost > 0.01 * base.latency_ms  # 10 of 96 channels: a real share of the latency
    flops_cost = _step_cost(config, Target("flops", 0.4).rule, graph, names, sizes, 10, base, None)
    per_channel = {g.name: flops - graph.count({g.name: np.arange(1)})[1] for g in graph.prunable_groups()}
    shares = {n: 10 * sizes[n] / sum(sizes.values()) for n in names}  # capacity in proportion to the widths
    assert flops_cost == pytest.approx(sum(shares[n] * per_channel[n] for n in names), rel=0.05)
