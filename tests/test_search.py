"""The RL-Pruner loop end to end on a tiny model: targets, consistency, resume, bad inputs."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from rlpruner import io, metrics
from rlpruner.distill import DistillConfig
from rlpruner.errors import CheckpointError, ConfigError, DataError
from rlpruner.latency import Runtime
from rlpruner.models import create_model
from rlpruner.search import CompressConfig, Reward, RLConfig, Target, compress
from rlpruner.search.checkpoint import _digest


@pytest.fixture(scope="module")
def splits(tiny_splits):
    return tiny_splits


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def _config(**overrides):
    base = CompressConfig(
        target=Target("flops", 0.3),
        rl=RLConfig(prune_filter_ratio=0.06, lr_epoch=2, sample_num=3),
        kd=DistillConfig(epochs=1, batch_size=16, lr=0.01), final_epochs=1,
        latency_repeats=2, latency_warmup=0, progress=False)
    return dataclasses.replace(base, **overrides)


class _WatchedTest(torch.utils.data.Dataset):
    """A test split that records when it is first read."""

    def __init__(self, inner, clock):
        self.inner, self.clock, self.first_read_at = inner, clock, None

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        if self.first_read_at is None:
            self.first_read_at = len(self.clock)
        return self.inner[i]


def test_flops_target_is_met_and_reported_numbers_match_the_saved_model(splits, trained, tmp_path):
    steps_seen = []
    watched = dataclasses.replace(splits, test=_WatchedTest(splits.test, steps_seen))
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    result = compress(trained, watched, _config(), out_dir=tmp_path, on_step=steps_seen.append)
    res, records = result.results, result.records

    goal = 0.7 * res["base"]["flops"]
    assert res["final"]["flops"] <= goal < records[-2].flops  # stopped at the first step that reached it
    saved = io.load(tmp_path / "model.rlp")
    counted = metrics.count(saved, splits.example_inputs(1))
    assert (counted.flops, counted.params) == (res["final"]["flops"], res["final"]["params"])
    assert records[-1].flops == res["final"]["flops"]  # surgery + fine-tune keep the planned shape
    # the test split is read only after the last step, to report the final numbers
    assert watched.test.first_read_at == len(records) == res["steps"]
    assert "test_acc" in res["final"]
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # input untouched
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, len(records) + 1))
    for name in ("results.json", "summary.md", "steps.csv", "plots/sparsity.png", "plots/widths.png"):
        assert (tmp_path / name).is_file(), name
    assert res["timing"]["eval_s"] > 0 and res["timing"]["overhead"] is not None


def test_sparsity_target_removes_exactly_the_asked_share(splits, trained, tmp_path):
    config = _config(target=Target("sparsity", 0.25), final_epochs=0, kd=DistillConfig(epochs=0))
    result = compress(trained, splits, config, out_dir=tmp_path, evaluate_test=False)
    total = sum(w[0] for w in result.results["widths"].values())
    assert result.records[-1].removed_total == int(np.ceil(0.25 * total))
    assert all(r.removed <= max(1, round(0.15 * total)) for r in result.records)
    assert "test_acc" not in result.results["final"]
    # every group keeps at least one channel, widths shrink monotonically
    widths = [r.widths for r in result.records]
    assert all(w >= 1 for step in widths for w in step.values())
    assert all(a[n] >= b[n] for a, b in zip(widths, widths[1:]) for n in a)


class _Kill(Exception):
    pass


def _strip_times(records):
    return [dataclasses.replace(r, times={}) for r in records]


def test_killed_run_resumes_bit_identically(splits, trained, tmp_path):
    config = _config(target=Target("flops", 0.45), rl=RLConfig(prune_filter_ratio=0.1, lr_epoch=2, sample_num=2,
                                                                 score_samples=8),
                     kd=DistillConfig(epochs=1, batch_size=16, lr=0.05))
    full = compress(trained, splits, config, out_dir=tmp_path / "full")
    assert len(full.records) >= 3

    def kill_after_two(record):
        if record.step == 2:
            raise _Kill

    with pytest.raises(_Kill):
        compress(trained, splits, config, out_dir=tmp_path / "cut", on_step=kill_after_two)
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 2
    resumed = compress(trained, splits, config, out_dir=tmp_path / "cut", resume=True)

    assert _strip_times(resumed.records) == _strip_times(full.records)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.results["final"]["val_acc"] == full.results["final"]["val_acc"]
    assert resumed.results["final"]["test_acc"] == full.results["final"]["test_acc"]


def test_a_kill_while_checkpointing_leaves_a_resumable_run(splits, trained, tmp_path, monkeypatch):
    from rlpruner.search import checkpoint

    config = _config(target=Target("flops", 0.45), final_epochs=0)
    full = compress(trained, splits, config, out_dir=tmp_path / "full", evaluate_test=False)
    real_write, calls = checkpoint.write_weights, []

    def dies_on_third_write(model, path, meta):
        calls.append(path)
        if len(calls) == 3:  # step 2's weights (step 1 wrote model + teacher, or model only)
            raise KeyboardInterrupt
        real_write(model, path, meta)

    monkeypatch.setattr(checkpoint, "write_weights", dies_on_third_write)
    with pytest.raises(KeyboardInterrupt):
        compress(trained, splits, config, out_dir=tmp_path / "cut", evaluate_test=False)
    monkeypatch.setattr(checkpoint, "write_weights", real_write)
    saved = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert 1 <= saved["step"] < len(full.records)
    assert (tmp_path / "cut" / saved["weights"]).is_file()
    assert not list((tmp_path / "cut").rglob("*.tmp"))
    resumed = compress(trained, splits, config, out_dir=tmp_path / "cut", resume=True, evaluate_test=False)
    assert _strip_times(resumed.records) == _strip_times(full.records)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_models_options_and_empty_dirs(splits, trained, tmp_path):
    config = _config(target=Target("flops", 0.15), final_epochs=0)
    compress(trained, splits, config, out_dir=tmp_path, evaluate_test=False)
    with pytest.raises(ConfigError, match="already holds"):
        compress(trained, splits, config, out_dir=tmp_path)
    other = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    with pytest.raises(CheckpointError, match="different model"):
        compress(other, splits, config, out_dir=tmp_path, resume=True)
    changed = dataclasses.replace(config, rl=dataclasses.replace(config.rl, noise=0.1))
    with pytest.raises(CheckpointError, match="rl.noise"):
        compress(trained, splits, changed, out_dir=tmp_path, resume=True)
    # a run started by a version without an option ran at that option's default: it resumes, unless the
    # option is set otherwise now
    state_path = tmp_path / "state.json"
    body = {k: v for k, v in json.loads(state_path.read_text()).items() if k != "digest"}
    del body["config"]["rl"]["score_split"]  # as the version before that option wrote it
    state_path.write_text(json.dumps({**body, "digest": _digest(body)}))
    elsewhere = dataclasses.replace(config, rl=dataclasses.replace(config.rl, score_split="train", score_samples=8))
    with pytest.raises(CheckpointError, match=r"rl.score_split \(run: 'val', now: 'train'\)"):
        compress(trained, splits, elsewhere, out_dir=tmp_path, resume=True)
    compress(trained, splits, config, out_dir=tmp_path, resume=True, evaluate_test=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        compress(trained, splits, config, out_dir=tmp_path / "empty", resume=True)


def test_unreachable_and_out_of_range_targets(splits, trained, tmp_path):
    with pytest.raises(ConfigError, match=r"reduces flops by at most \d+\.\d%"):
        compress(trained, splits, _config(target=Target("flops", 0.995)), out_dir=tmp_path)
    with pytest.raises(ConfigError, match="at most"):
        compress(trained, splits, _config(target=Target("sparsity", 0.99)), out_dir=tmp_path)
    for kind, value in (("flops", 1.2), ("params", 0.0), ("size", 0.5)):
        with pytest.raises(ConfigError, match="target"):
            Target(kind, value)
    with pytest.raises(ConfigError, match="strategy"):
        Reward("speed")


def test_empty_validation_split_is_refused(splits, trained, tmp_path):
    no_val = dataclasses.replace(splits, val=torch.utils.data.Subset(splits.val, []))
    with pytest.raises(DataError, match="validation split is empty"):
        compress(trained, no_val, _config(), out_dir=tmp_path)


def test_guard_resets_and_lookahead(splits, trained, tmp_path):
    lines = []
    config = _config(target=Target("sparsity", 0.8), final_epochs=0, kd=DistillConfig(epochs=0),
                     rl=RLConfig(prune_filter_ratio=0.4, lr_epoch=1, sample_num=2, guard_threshold=1e-6,
                                 guard_retries=1, sample_step=2, lookahead_samples=1))
    result = compress(trained, splits, config, out_dir=tmp_path, log=lines.append, evaluate_test=False)
    base_val = result.results["base"]["val_acc"]  # the scoring subset is the whole (small) split here
    previous = [base_val] + [r.val_acc_pruned for r in result.records[:-1]]  # pruned vs pruned
    # a step is accepted at once only without any accuracy drop; otherwise it was redone (at most
    # guard_retries=1 times), so every record is one or the other
    assert all(r.guard_resets >= 1 or r.val_acc_pruned >= ref for ref, r in zip(previous, result.records))
    assert all(r.guard_resets <= 1 for r in result.records)
    # removing 40% of the channels per step must hurt at least once, and each reset is logged
    resets = sum(r.guard_resets for r in result.records)
    assert resets >= 1
    assert sum("resetting the pruning distribution" in line for line in lines) == resets
    # look-ahead adds gamma * (a non-negative Q) to every candidate's own reward
    assert all(r.reward > r.val_acc_pruned for r in result.records)


def test_candidate_counts_from_slices_match_the_graph_count(trained, splits):
    from rlpruner.graph import trace

    graph = trace(trained, splits.example_inputs(1))
    rng = np.random.default_rng(0)
    for _ in range(10):
        removals = {g.name: rng.choice(g.size, rng.integers(0, g.size), replace=False)
                    for g in graph.prunable_groups()}
        assert graph.count(slices=graph.slices(removals)) == graph.count(removals)


# --------------------------------------------------------------------------------------------------
# `rlpruner compress` on the command line
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(trained, splits, tmp_path_factory):
    from rlpruner.data import DataSpec

    path = tmp_path_factory.mktemp("ckpt") / "tiny.rlp"
    spec = DataSpec(name="synthetic", image_size=8, in_channels=1, val_fraction=0.2,
                    options={"num_classes": 3, "samples_per_class": 40})
    io.save(trained, path, meta={"data": spec.to_dict()})
    return path


FAST_CLI = ["--prune-filter-ratio", "0.06", "--lr-epoch", "2", "--sample-num", "3", "--kd-epochs", "1",
            "--kd-batch-size", "16", "--final-epochs", "0", "--latency-repeats", "2", "--no-progress"]


def test_cli_compress_prints_one_line_per_step_and_resumes(checkpoint, tmp_path, capsys):
    from rlpruner.cli import main

    out = tmp_path / "run"
    assert main(["compress", str(checkpoint), "--target-flops", "0.3", "--out", str(out), *FAST_CLI]) == 0
    text = capsys.readouterr().out
    steps = [line for line in text.splitlines() if line.startswith("step ")]
    results = json.loads((out / "results.json").read_text())
    assert len(steps) == results["steps"] >= 2
    assert "FLOPs left" in steps[0] and "val " in steps[0] and "reward" in steps[0]
    assert "compressed" in text and "search overhead" in text
    assert results["final"]["flops"] <= 0.7 * results["base"]["flops"]
    assert io.read_header(out / "model.rlp")["meta"]["data"]["name"] == "synthetic"
    # resuming a finished run re-does only the final phase and lands on the same model
    assert main(["compress", str(checkpoint), "--target-flops", "0.3", "--out", str(out), "--resume",
                 *FAST_CLI]) == 0
    assert json.loads((out / "results.json").read_text())["final"]["flops"] == results["final"]["flops"]


@pytest.mark.parametrize("argv, match", [
    (["--target-flops", "1.5"], "target flops reduction must be in (0, 1)"),
    (["--target-sparsity", "0.999"], "unreachable"),
    (["--lr-epoch", "0"], "lr_epoch must be >= 1"),
    (["--kd-temperature", "0"], "KD temperature"),
    (["--importance", "magic"], "unknown importance"),
    (["--resume"], "nothing to resume"),
    (["--max-group-ratio", "1.5"], "max_group_ratio must be in (0, 1]"),
    (["--max-group-ratio", "0.2", "--target-flops", "0.6"], "and 80% of its width (max_group_ratio=0.2)"),
])
def test_cli_compress_bad_input_is_one_line(checkpoint, tmp_path, capsys, argv, match):
    from rlpruner.cli import main

    code = main(["compress", str(checkpoint), "--out", str(tmp_path / "bad"), *FAST_CLI, *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_cli_compress_refuses_a_checkpoint_that_does_not_fit_the_dataset(checkpoint, tmp_path, capsys):
    from rlpruner.cli import main

    code = main(["compress", str(checkpoint), "--dataset", "digits", "--out", str(tmp_path / "x"), *FAST_CLI])
    err = capsys.readouterr().err
    assert code == 2 and "digits has 10 classes" in err and len(err.strip().splitlines()) == 1, err


def test_latency_target_and_reward_with_a_deterministic_clock(splits, trained, tmp_path, monkeypatch):

    # "latency" proportional to FLOPs, so that the test checks the logic, not this machine's timer
    monkeypatch.setattr(Runtime, "time_ms", lambda self, module, inputs, watch:
                        metrics.count(module, inputs).flops / 1e4)
    config = _config(target=Target("latency", 0.3), reward=Reward("latency"), final_epochs=0,
                     latency_cache=str(tmp_path / "cache"), latency_fresh=False)  # the test's clock, in this process
    result = compress(trained, splits, config, out_dir=tmp_path / "run", evaluate_test=False)
    base_ms = result.results["base"]["latency_ms"]
    assert result.results["reached"]["latency"] >= 0.3
    assert result.records[-2].latency_ms > 0.7 * base_ms >= result.records[-1].latency_ms
    for r in result.records:
        assert r.reward == pytest.approx(r.val_acc_pruned + 0.25 * (1 - r.latency_ms / base_ms))
