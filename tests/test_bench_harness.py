"""The accuracy benchmark's harness: the KD budget, the verdict against the best other method (peers
included, over-budget settings left out) and a Torch-Pruning peer step. No training here."""
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` lives at the repo root

from benchmarks import render  # noqa: E402
from benchmarks import settings as presets  # noqa: E402
from benchmarks.accuracy import base_jobs, run_jobs  # noqa: E402

SETTINGS = presets.AccuracySettings(models=(presets.ModelSpec("resnet", "resnet8", family="residual"),),
                                    datasets=(presets.DatasetSpec("digits", "digits"),), targets=(0.5, 0.75, 0.9),
                                    seeds=(0, 1), methods=presets.METHODS + presets.PEERS, kd_epochs=1,
                                    kd_budget=10)


# --------------------------------------------------------------------------------------------------
# The KD budget
# --------------------------------------------------------------------------------------------------

def test_the_final_fine_tune_fills_the_budget_left_by_the_steps():
    plan = presets.kd_plan(SETTINGS, steps=6)
    assert (plan.final, plan.used, plan.over_budget) == (4, 10, False)
    exact = presets.kd_plan(SETTINGS, steps=10)
    assert (exact.final, exact.used, exact.over_budget) == (0, 10, False)


def test_steps_beyond_the_budget_are_kept_and_marked_never_trimmed():
    plan = presets.kd_plan(SETTINGS, steps=13)
    assert (plan.final, plan.used, plan.over_budget) == (0, 13, True)
    two_per_step = presets.kd_plan(dataclasses.replace(SETTINGS, kd_epochs=2), steps=6)
    assert (two_per_step.final, two_per_step.used, two_per_step.over_budget) == (0, 12, True)


def test_no_recovery_runs_use_no_kd_at_all():
    plan = presets.kd_plan(SETTINGS, steps=13, recovery=False)
    assert (plan.final, plan.used, plan.over_budget) == (0, 0, False)


def test_a_search_then_refit_variant_spends_the_whole_budget_on_the_final_fine_tune(capsys):
    from benchmarks import run_all
    from benchmarks.accuracy import compress_config

    variant = run_all.select(SETTINGS, run_all.parse_args(["--full", "--rl", "post_train_period=0", "refit=true",
                                                           "--results", "/nonexistent"]))
    plan = presets.kd_plan(variant, steps=6)
    assert (plan.per_step, plan.final, plan.used, plan.over_budget) == (0, 10, 10, False)
    config = compress_config(variant, "rl", 0.5, 0, True)
    assert config.refit and config.post_train_period == 0 and config.final_epochs == 0
    assert compress_config(variant, "rl", 0.5, 0, False).post_train_period == 0
    default = compress_config(SETTINGS, "rl", 0.5, 0, True)
    assert not default.refit and default.post_train_period == 1
    for bad in ("post_train_period=-1", "post_train_period=true", "post_train_period=1.5", "refit=1",
                "final_epochs=3"):
        with pytest.raises(SystemExit):
            run_all.parse_args(["--full", "--rl", bad])
        assert f"argument --rl: '{bad}'" in capsys.readouterr().err


def test_every_method_gets_a_job_in_both_series():
    jobs = run_jobs(SETTINGS, base_jobs(SETTINGS, Path("/nonexistent")), Path("/nonexistent"))
    assert {j.method for j in jobs} == set(presets.METHODS + presets.PEERS)
    assert len(jobs) == 3 * 2 * 5 * 2 == len({j.key for j in jobs})


def test_image_size_is_the_datasets_own():
    full = presets.full().accuracy
    sizes = {d.label: d.image_size for d in full.datasets}
    assert sizes == {"digits": 32, "synthetic-hard": 16}
    assert full.targets == (0.5, 0.75, 0.9) and full.seeds == (0, 1, 2)
    assert {"resnet20", "resnet56", "mobilenetv3s", "densenet", "vgg11"} == {m.label for m in full.models}


# --------------------------------------------------------------------------------------------------
# The verdict against the best other method
# --------------------------------------------------------------------------------------------------

def _run(method, target, seed, acc, kd_epochs=10, over=False, recovery=True):
    return {"model": "resnet", "dataset": "digits", "method": method, "target": target, "seed": seed,
            "recovery": recovery, "test_acc": acc, "val_acc": acc, "flops_reduction": target + 0.002,
            "params_reduction": target - 0.05, "steps": 6, "kd_epochs": kd_epochs, "over_budget": over,
            "seconds": 1.0, "run_dir": "/nonexistent"}


def _both_seeds(method, target, accs, **kw):
    return [_run(method, target, seed, acc, **kw) for seed, acc in enumerate(accs)]


@pytest.fixture
def accuracy():
    runs = [
        # 50%: RL 0.90/0.92 beats every other method, the best being the Taylor peer (0.85/0.85), by more
        # than the seed spread
        *_both_seeds("rl", 0.5, (0.90, 0.92)), *_both_seeds("uniform", 0.5, (0.80, 0.82)),
        *_both_seeds("global", 0.5, (0.83, 0.83)), *_both_seeds("tp-l2", 0.5, (0.84, 0.82)),
        *_both_seeds("tp-taylor", 0.5, (0.85, 0.85)),
        # 75%: RL (0.80/0.90, mean 0.85) is ahead of uniform and global but behind the L2 peer (0.86/0.86)
        *_both_seeds("rl", 0.75, (0.80, 0.90)), *_both_seeds("uniform", 0.75, (0.70, 0.70)),
        *_both_seeds("global", 0.75, (0.75, 0.77)), *_both_seeds("tp-l2", 0.75, (0.86, 0.86)),
        # 90%: RL wins, but one of its runs needed more KD epochs than the budget: not counted
        *_both_seeds("rl", 0.9, (0.70, 0.72)), *_both_seeds("uniform", 0.9, (0.50, 0.50)),
        _run("tp-l2", 0.9, 0, 0.60), _run("tp-l2", 0.9, 1, 0.60, kd_epochs=12, over=True),
        # no-recovery series: RL ahead of the only other method there, by less than the spread
        *_both_seeds("rl", 0.5, (0.40, 0.50), kd_epochs=0, recovery=False),
        *_both_seeds("uniform", 0.5, (0.42, 0.44), kd_epochs=0, recovery=False),
    ]
    return {"settings": json.loads(json.dumps(dataclasses.asdict(SETTINGS))),
            "base": [{"model": "resnet", "dataset": "digits", "test_acc": 0.95, "checkpoint": "x"}], "runs": runs}


def test_rl_is_compared_with_the_best_of_all_other_methods_peers_included(accuracy):
    v = render.best_verdict(accuracy, recovery=True)
    assert (v["wins"], v["total"], v["clear"]) == (1, 2, 1)
    loss = v["losses"][0]
    assert (loss["target"], loss["best"]) == (0.75, "tp-l2") and loss["gap"] == pytest.approx(-0.01)
    assert loss["within_spread"]  # RL's spread over its two seeds is ~7 points
    assert [o["target"] for o in v["over_budget"]] == [0.9]


def test_a_win_within_the_seed_spread_is_not_a_clear_win(accuracy):
    v = render.best_verdict(accuracy, recovery=False)
    assert (v["wins"], v["total"], v["clear"]) == (1, 1, 0)  # 0.45 vs 0.43, spread ~0.07


def test_one_seed_is_never_a_clear_win(accuracy):
    one_seed = {**accuracy, "runs": [r for r in accuracy["runs"] if r["seed"] == 0]}
    v = render.best_verdict(one_seed, recovery=True)
    assert v["wins"] >= 1 and v["clear"] == 0


def test_per_method_verdicts_include_the_peers_and_skip_over_budget_settings(accuracy):
    v = render.verdicts(accuracy, recovery=True)
    assert set(v) == {"uniform", "global", "tp-l2", "tp-taylor"}
    assert (v["tp-l2"]["wins"], v["tp-l2"]["total"]) == (1, 2)
    assert [o["target"] for o in v["tp-l2"]["over_budget"]] == [0.9]
    assert (v["uniform"]["wins"], v["uniform"]["total"]) == (3, 3)  # uniform's 90% runs were within budget
    lines = render.verdict_lines(accuracy, None)
    assert any("best baseline (after KD recovery) in 1 of 2 settings; wins by more than the seed spread in 1"
               in line and "Not counted" in line and "-90%" in line for line in lines)


def test_tables_show_peers_params_and_kd_epochs_and_flag_over_budget_runs(accuracy):
    header, *rows = render.accuracy_table(accuracy, recovery=True)[:1] + render.accuracy_table(accuracy, True)[2:]
    assert "TP global L2" in header and "TP global Taylor" in header and "KD epochs" in header
    ninety = [c.strip() for c in next(r for r in rows if "-90%" in r).strip("|").split("|")]
    assert ninety[7] == "60.0 ± 0.0 " + render.OVER_BUDGET    # the TP L2 cell
    assert ninety[-1] == "10–12 " + render.OVER_BUDGET         # KD epochs used in the row
    assert ninety[-2] == "-90.2% / -85.0%"                     # RL's FLOPs / params reduction
    fifty = [c.strip() for c in next(r for r in rows if "-50%" in r).strip("|").split("|")]
    assert fifty[4] == "**91.0 ± 1.4**" and fifty[-1] == "10" and fifty[9] == "+6.0"
    reached = render.reached_table(accuracy)[2:]
    assert "-50.2% / -45.0% · 10 ep" in reached[0]
    assert render.OVER_BUDGET in next(r for r in reached if "-90%" in r)


def test_the_doc_renders_with_peers(tmp_path, accuracy):
    results = tmp_path / "results"
    results.mkdir()
    (results / "accuracy.json").write_text(json.dumps(accuracy))
    doc = render.write_doc(results, tmp_path / "benchmarks.md").read_text()
    assert "RL-Pruner ≥ best baseline" in doc and "TP global Taylor" in doc
    assert "budget of **10 KD epochs per run**" in doc and "digits (`digits`, 16×16 inputs)" in doc


# --------------------------------------------------------------------------------------------------
# A Torch-Pruning peer step
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["tp-l2", "tp-taylor"])
def test_a_peer_prunes_a_resnet_to_its_flops_goals(method):
    pytest.importorskip("torch_pruning")
    import rlpruner
    from benchmarks import peers
    from rlpruner.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=3).eval()
    example = torch.rand(1, 3, 16, 16)
    calibration = (torch.rand(32, 3, 16, 16), torch.arange(32) % 10)
    base = rlpruner.count(model, example)
    pruned, steps = peers.prune_schedule(model, example, method, peers.flops_goals(0.3, 0.5, 2), calibration)
    after = rlpruner.count(pruned, example)
    assert [s.step for s in steps] == [1, 2]
    assert steps[0].flops_reduction >= 0.3 and 1 - after.flops / base.flops >= 0.5
    assert 1 - after.flops / base.flops < 0.55  # the smallest ratio that reaches it, not much more
    assert after.params < base.params
    widths = peers.layer_widths(pruned)
    assert widths[peers.output_layer(pruned)] == 10  # the classifier output is never pruned
    assert sum(widths.values()) < sum(peers.layer_widths(model).values())
    assert pruned(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_flops_goals_are_equal_steps_ending_at_the_target():
    from benchmarks import peers

    assert peers.flops_goals(0.2, 0.5, 3) == pytest.approx([0.2, 0.4, 0.5])
    assert peers.flops_goals(0.2, 0.5, 1) == [0.5]


def test_the_verdict_says_when_there_is_no_seed_spread(accuracy):
    one_seed = {**accuracy, "runs": [r for r in accuracy["runs"] if r["seed"] == 0]}
    line = render.best_verdict_line(render.best_verdict(one_seed), "after KD recovery")
    assert "wins by more than the seed spread in 0 of the 0 settings with ≥ 2 seeds" in line


def test_a_finer_step_variant_recovers_every_n_steps_within_the_same_budget():
    from benchmarks import run_all
    from benchmarks.accuracy import compress_config

    variant = run_all.select(SETTINGS, run_all.parse_args(["--full", "--rl", "prune_filter_ratio=0.025",
                                                           "post_train_period=2", "--results", "/nonexistent"]))
    plan = presets.kd_plan(variant, steps=11)        # recoveries after steps 2, 4, ..., 10
    assert (plan.recoveries, plan.per_step, plan.final, plan.used) == (5, 1, 5, 10)
    assert [presets.recovery_due(variant, s) for s in range(1, 5)] == [False, True, False, True]
    assert presets.kd_plan(SETTINGS, steps=6).recoveries == 6
    config = compress_config(variant, "rl", 0.5, 0, True)
    assert config.rl.prune_filter_ratio == 0.025 and config.post_train_period == 2
    assert compress_config(SETTINGS, "rl", 0.5, 0, True).rl.prune_filter_ratio == SETTINGS.prune_filter_ratio
