"""The benchmark generator: results files -> tables, verdicts, plots and the doc (no benchmark is run)."""
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `benchmarks` lives at the repo root

from benchmarks import render  # noqa: E402
from benchmarks.accuracy import row_key, run_jobs, base_jobs  # noqa: E402
from benchmarks import settings as presets  # noqa: E402


def _run(model, dataset, method, target, seed, acc, recovery=True, reached=None):
    return {"model": model, "dataset": dataset, "method": method, "target": target, "seed": seed,
            "recovery": recovery, "test_acc": acc, "val_acc": acc, "flops_reduction": reached or target,
            "params_reduction": 0.4, "steps": 5, "kd_epochs": 8, "seconds": 1.0, "run_dir": "/nonexistent"}


@pytest.fixture
def accuracy():
    runs = [
        # resnet · digits · 50%: RL 0.90/0.92/0.94 (mean 0.92, sd 0.02), uniform 0.91 (one seed), global missing
        _run("resnet", "digits", "rl", 0.5, 0, 0.90), _run("resnet", "digits", "rl", 0.5, 1, 0.92),
        _run("resnet", "digits", "rl", 0.5, 2, 0.94), _run("resnet", "digits", "uniform", 0.5, 0, 0.91),
        # resnet · digits · 75%: RL loses to global by 5 points
        _run("resnet", "digits", "rl", 0.75, 0, 0.80), _run("resnet", "digits", "global", 0.75, 0, 0.85),
        _run("resnet", "digits", "uniform", 0.75, 0, 0.70),
        # no-recovery series
        _run("resnet", "digits", "rl", 0.5, 0, 0.40, recovery=False),
        _run("resnet", "digits", "uniform", 0.5, 0, 0.20, recovery=False),
    ]
    settings = presets.AccuracySettings(models=(presets.ModelSpec("resnet", "resnet8", family="residual"),),
                                        datasets=(presets.DatasetSpec("digits", "digits"),), targets=(0.5, 0.75),
                                        seeds=(0, 1, 2))
    return {"settings": json.loads(json.dumps(dataclasses.asdict(settings))),
            "base": [{"model": "resnet", "dataset": "digits", "test_acc": 0.95, "checkpoint": "x"}], "runs": runs}


def test_mean_spread_is_mean_and_sample_standard_deviation():
    mean, spread, n = render.mean_spread([0.90, 0.92, 0.94])
    assert n == 3 and mean == pytest.approx(0.92) and spread == pytest.approx(0.02)
    assert render.mean_spread([0.5]) == (0.5, 0.0, 1)
    assert render.mean_spread([None, float("nan")]) is None
    assert render.mean_spread([0.2, None, 0.4])[:2] == pytest.approx((0.3, math.sqrt(0.02)))


def test_fmt_stat_shows_percent_and_hides_the_spread_of_one_seed():
    assert render.fmt_stat((0.92, 0.02, 3)) == "92.0 ± 2.0"
    assert render.fmt_stat((0.91, 0.0, 1)) == "91.0"
    assert render.fmt_stat(None) == render.MISSING


def test_accuracy_table_holds_the_right_numbers(accuracy):
    table = render.accuracy_table(accuracy, recovery=True)
    header, rows = table[0], table[2:]
    assert "RL-Pruner" in header and "uniform" in header and "global magnitude" in header
    fifty = next(r for r in rows if "-50%" in r)
    cells = [c.strip() for c in fifty.strip("|").split("|")]
    assert cells[:4] == ["resnet", "digits", "-50%", "95.0"]
    assert cells[4] == "**92.0 ± 2.0**"          # RL: best mean of the row, in bold
    assert cells[5] == "91.0"                    # uniform: one seed
    assert cells[6] == render.MISSING            # global: no run
    assert cells[7] == "+1.0"                    # RL - best baseline
    seventy_five = [c.strip() for c in next(r for r in rows if "-75%" in r).strip("|").split("|")]
    assert seventy_five[6] == "**85.0**" and seventy_five[7] == "-5.0"


def test_no_recovery_table_uses_only_the_no_recovery_runs(accuracy):
    rows = render.accuracy_table(accuracy, recovery=False)[2:]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[4] == "**40.0**" and cells[5] == "20.0" and cells[7] == "+20.0"


def test_verdicts_count_wins_and_name_the_losses(accuracy):
    v = render.verdicts(accuracy, recovery=True)
    assert v["uniform"]["wins"] == 2 and v["uniform"]["total"] == 2 and not v["uniform"]["losses"]
    assert v["global"]["total"] == 1 and v["global"]["wins"] == 0
    loss = v["global"]["losses"][0]
    assert loss["target"] == 0.75 and loss["gap"] == pytest.approx(-0.05)
    lines = render.verdict_lines(accuracy, None)
    assert any("global magnitude" in line and "0/1" in line and "**missed**" in line for line in lines)
    assert any("uniform (after KD recovery): 2/2" in line and "met" in line for line in lines)


def test_latency_ratio_and_its_verdict():
    ok = {"model": "m", "dataset": "d", "method": "rl", "flops_reduction": 0.5,
          "batch": {"1": {"base_ms": 1.0, "pruned_ms": 0.9, "reduction": 0.1},
                    "64": {"base_ms": 10.0, "pruned_ms": 5.5, "reduction": 0.45}}}
    slow = dict(ok, batch={"64": {"base_ms": 10.0, "pruned_ms": 8.0, "reduction": 0.2}})
    assert render.latency_ratio(ok, "64") == pytest.approx(0.9)
    assert render.latency_ratio(ok, "32") is None
    table = render.compressed_latency_table({"compressed": [ok, slow]})
    assert "10.00 → 5.50 (-45%)" in table[2] and "0.90" in table[2]
    assert "**0.40** ✗" in table[3] and render.MISSING in table[3]  # batch 1 not measured for `slow`
    lines = render.verdict_lines(None, {"compressed": [ok, slow]})
    assert lines == [line for line in lines if "1/2 models" in line and "**missed**" in line]


def test_spearman_ranks_with_ties():
    assert render.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert render.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert render.spearman([1, 1, 1], [1, 2, 3]) is None
    assert render.spearman([1, 2], [1, 2]) is None


def test_sensitivity_table_summarises_drops_and_rank_change():
    groups = lambda drops: [{"group": f"g{i}", "drop": d} for i, d in enumerate(drops)]  # noqa: E731
    sens = {"panels": [
        {"model": "m", "dataset": "d", "stage": "dense", "flops_reduction": 0.0, "acc": 0.9,
         "groups": groups([0.01, 0.02, 0.10])},
        {"model": "m", "dataset": "d", "stage": "pruned", "flops_reduction": 0.5, "acc": 0.85,
         "groups": groups([0.10, 0.02, 0.01])}]}
    rows = render.sensitivity_table(sens)[2:]
    assert "1.0 / 2.0 / 10.0" in rows[0] and "90.0" in rows[0]
    assert "FLOPs -50%" in rows[1] and "-1.00" in rows[1]


def test_doc_renders_from_files_and_says_what_is_missing(tmp_path, accuracy):
    results = tmp_path / "results"
    results.mkdir()
    (results / "accuracy.json").write_text(json.dumps(accuracy))
    doc = render.write_doc(results, tmp_path / "docs" / "benchmarks.md").read_text()
    # seeds 1 and 2 only have RL at 50%: left out, so that every cell averages the same seeds
    assert "| resnet | digits | -50% | 95.0 | 90.0 | **91.0** | — | -1.0 |" in doc
    assert "Seed(s) 1, 2 left out" in doc
    assert "Not run (no latency.json)." in doc and "Not run (no engine_speed.json)." in doc
    assert (results / "plots" / "accuracy_kd.png").read_bytes()[:4] == b"\x89PNG"
    assert "](../results/plots/accuracy_kd.png)" in doc


def test_a_variant_study_renders_as_its_own_table_with_its_options(tmp_path, accuracy):
    results = tmp_path / "results"
    (results / "variants" / "probe-1").mkdir(parents=True)
    variant = {**accuracy, "settings": {**accuracy["settings"], "rl_options": [["probe_steps", 1]]},
               "machine": {"cpu": "some CPU", "commit": "abc", "date": "today"}}
    (results / "variants" / "probe-1" / "accuracy.json").write_text(json.dumps(variant))
    doc = render.write_doc(results, tmp_path / "docs" / "benchmarks.md").read_text()
    section = doc.split("## Variant studies")[1]
    assert "### probe-1: `probe_steps=1`" in section and "some CPU, commit abc" in section
    assert "| resnet | digits | -50% | 95.0 | 90.0 | **91.0** | — | -1.0 |" in section
    assert "RL-Pruner ≥ best baseline (after KD recovery) in 0 of 2 settings" in section
    assert "## Variant studies" not in render.write_doc(tmp_path / "empty", tmp_path / "e.md").read_text()


def test_an_rl_only_variant_is_shown_beside_the_baselines_of_a_study_on_the_same_base(tmp_path, accuracy):
    results = tmp_path / "results"
    rl_only = {**accuracy, "runs": [r for r in accuracy["runs"] if r["method"] == "rl"],
               "settings": {**accuracy["settings"], "methods": ["rl"], "rl_options": [["probe_steps", 0]]}}
    with_peers = {**accuracy, "settings": {**accuracy["settings"], "rl_options": [["probe_steps", 1]]}}
    other_base = {**with_peers, "base": [{**accuracy["base"][0], "test_acc": 0.5}]}
    retrained = {**with_peers, "base": [{**accuracy["base"][0], "checkpoint": "elsewhere", "train_seconds": 9.0}]}
    merged, lender = render.with_peer_baselines(rl_only, {"other-base": other_base, "probe-1": retrained})
    assert lender == "probe-1" and render.methods_run(merged) == ["rl", "uniform", "global", "rl@probe-1"]
    assert [r for r in merged["runs"] if r["method"] == "rl"] == rl_only["runs"]  # its own RL runs, not the lender's
    assert render.method_name("rl@probe-1") == "RL-Pruner (probe-1)"
    # the lender's RL-Pruner is a reference column, not a baseline: the verdict is against uniform and global
    shifted = {**merged, "runs": [dict(r, test_acc=r["test_acc"] + 0.5) if r["method"] == "rl@probe-1" else r
                                  for r in merged["runs"]]}
    assert render.best_verdict(shifted) == render.best_verdict({**merged, "runs": [
        r for r in merged["runs"] if r["method"] != "rl@probe-1"]})
    assert render.with_peer_baselines(rl_only, {"other-base": other_base}) == (rl_only, None)
    other_loop = {**with_peers, "settings": {**with_peers["settings"], "kd_budget": 99}}
    assert render.with_peer_baselines(rl_only, {"other-loop": other_loop}) == (rl_only, None)
    # run options change every method's protocol: baselines fine-tuned once after a search without
    # recovery are no baselines for a search with recovery after every step, and the other way round
    one_shot = {**with_peers, "settings": {**with_peers["settings"],
                                           "rl_options": [["post_train_period", 0], ["refit", True]]}}
    assert render.with_peer_baselines(rl_only, {"one-shot": one_shot}) == (rl_only, None)
    refit_rl = {**rl_only, "settings": {**rl_only["settings"], "rl_options": [["post_train_period", 0],
                                                                             ["refit", True], ["judge", "loss"]]}}
    assert render.with_peer_baselines(refit_rl, {"main": with_peers, "one-shot": one_shot})[1] == "one-shot"
    # a study that ran more models, targets and seeds lends only the cells, targets and seeds asked for
    wider = {**with_peers, "base": [*with_peers["base"], {"model": "vgg", "dataset": "digits", "test_acc": 0.7}],
             "runs": [*with_peers["runs"], _run("vgg", "digits", "uniform", 0.5, 0, 0.6),
                      _run("resnet", "digits", "uniform", 0.9, 0, 0.6), _run("resnet", "digits", "uniform", 0.5, 7, 0.6)]}
    rl_only_kd = {**rl_only, "settings": {**rl_only["settings"], "no_recovery": False}}
    lent, _ = render.with_peer_baselines(rl_only_kd, {"wider": {**wider, "settings": {**wider["settings"], "no_recovery": True}}})
    assert {(r["model"], r["target"], r["seed"]) for r in lent["runs"]} <= {
        ("resnet", t, s) for t in (0.5, 0.75) for s in (0, 1, 2)}
    assert "uniform" in render.methods_run(lent)
    assert all(r["recovery"] for r in lent["runs"] if r["method"] != "rl")  # no series the study did not run
    for name, study in (("defaults", rl_only), ("probe-1", with_peers)):
        (results / "variants" / name).mkdir(parents=True)
        (results / "variants" / name / "accuracy.json").write_text(json.dumps(study))
    section = render.write_doc(results, tmp_path / "b.md").read_text().split("### defaults")[1].split("###")[0]
    assert "Baselines from study probe-1." in section and "global magnitude" in section


def test_an_empty_results_folder_still_renders(tmp_path):
    doc = render.render_doc(render.load_results(tmp_path), tmp_path / "b.md", tmp_path / "plots")
    assert "No results yet." in doc and "Not run (no accuracy.json)." in doc


def test_job_keys_match_row_keys_so_a_rerun_skips_finished_runs(tmp_path):
    settings = presets.quick().accuracy
    jobs = run_jobs(settings, base_jobs(settings, tmp_path), tmp_path)
    expected = len(settings.models) * len(settings.datasets) * len(settings.targets) * len(settings.seeds) \
        * len(settings.methods) * (2 if settings.no_recovery else 1)
    assert len(jobs) == expected == len({j.key for j in jobs})
    job = jobs[0]
    row = _run(job.base.model.label, job.base.dataset.label, job.method, job.target, job.seed, 0.5, job.recovery)
    assert row_key(row) == job.key


def test_resume_keeps_rows_across_seed_changes_but_not_across_other_settings(tmp_path, accuracy):
    from benchmarks.accuracy import _resume

    path = tmp_path / "accuracy.json"
    settings = presets.quick().accuracy
    first = _resume(path, settings)
    first["runs"] = accuracy["runs"]
    path.write_text(json.dumps(first))
    more_seeds = dataclasses.replace(settings, seeds=(0, 1), workers=4)
    kept = _resume(path, more_seeds)
    assert [row_key(r) for r in kept["runs"]] == [row_key(r) for r in accuracy["runs"]]
    assert kept["settings"]["seeds"] == [0, 1]
    # selections (targets, models, the no-KD series) add or skip rows too; the record lists their union
    narrower = dataclasses.replace(settings, targets=(0.9,), models=settings.models[:1], no_recovery=False)
    kept = _resume(path, narrower)
    assert [row_key(r) for r in kept["runs"]] == [row_key(r) for r in accuracy["runs"]]
    assert kept["settings"]["targets"] == sorted({*settings.targets, 0.9})
    assert [m["label"] for m in kept["settings"]["models"]] == [m.label for m in settings.models]
    assert kept["settings"]["no_recovery"] == settings.no_recovery
    assert _resume(path, dataclasses.replace(settings, kd_lr=0.5))["runs"] == []


def test_a_variant_study_changes_only_rl_pruner_and_keeps_its_own_runs_and_results(tmp_path, accuracy):
    from benchmarks import run_all
    from benchmarks.accuracy import _resume, compress_config

    settings = presets.quick().accuracy
    args = run_all.parse_args(["--full", "--rl", "judge=loss", "score_samples=null", "--methods", "rl",
                               "--results", str(tmp_path / "variant")])
    variant = run_all.select(settings, args)
    assert variant.methods == ("rl",) and variant.variant == "judge-loss_score_samples-None"
    rl = compress_config(variant, "rl", 0.5, 0, True).rl
    assert (rl.judge, rl.score_samples) == ("loss", None)
    assert compress_config(settings, "rl", 0.5, 0, True).rl.judge == "accuracy"  # the defaults otherwise
    jobs = run_jobs(variant, base_jobs(variant, tmp_path), tmp_path)
    assert jobs and all(j.out_dir.parent.name == "runs-" + variant.variant for j in jobs)
    assert {j.base.path for j in jobs} == {b.path for b in base_jobs(settings, tmp_path)}  # the same base models
    # results made before variants existed stay comparable with the defaults, not with a variant
    path = tmp_path / "accuracy.json"
    old = _resume(path, settings)
    old["runs"] = accuracy["runs"]
    del old["settings"]["rl_options"]
    path.write_text(json.dumps(old))
    assert len(_resume(path, settings)["runs"]) == len(accuracy["runs"])
    assert _resume(path, variant)["runs"] == []
    with pytest.raises(SystemExit, match="own --results"):
        run_all.main(["--full", "--only", "accuracy", "--rl", "judge=loss"])


def test_a_narrower_selection_keeps_the_other_base_models():
    from benchmarks.accuracy import merge_bases

    kept = [{"model": "resnet20", "dataset": "digits", "val_acc": 0.9},
            {"model": "mobilenetv3s", "dataset": "digits", "val_acc": 0.5}]
    trained = [{"model": "mobilenetv3s", "dataset": "digits", "val_acc": 0.8}]
    merged = merge_bases(kept, trained)
    assert [(r["model"], r["val_acc"]) for r in merged] == [("resnet20", 0.9), ("mobilenetv3s", 0.8)]


def test_paths_in_results_are_stored_relative_to_the_repository():
    inside = presets.ROOT / "runs" / "bench" / "x"
    assert presets.portable(inside) == "runs/bench/x"
    assert presets.resolve("runs/bench/x") == inside
    assert presets.resolve("/elsewhere/y") == Path("/elsewhere/y")


def test_step_cost_averages_the_drop_of_each_step_before_its_recovery(accuracy):
    row = dict(accuracy["runs"][0], base_val_acc=0.9,
               trajectory=[[0.1, 0.8, 0.88], [0.2, 0.84, 0.87], [0.3, 0.77, 0.86]])
    # drops: 0.9 - 0.8, 0.88 - 0.84, 0.87 - 0.77
    assert render.step_cost(row) == pytest.approx((0.10 + 0.04 + 0.10) / 3)
    assert render.step_cost(dict(row, trajectory=None)) is None
    table = render.step_cost_table({**accuracy, "runs": [row, dict(row, method="uniform", trajectory=[[0.2, 0.5, 0.9]])]})
    assert "| resnet | digits | -50% | **8.0** | 40.0 |" in table
    # the recovered path: the mean of the accuracies after each step's recovery, the highest in bold
    assert render.recovered_accuracy(row) == pytest.approx((0.88 + 0.87 + 0.86) / 3)
    recovered = render.step_cost_table({**accuracy, "runs": [row, dict(row, method="uniform", trajectory=[[0.2, 0.5, 0.9]])]},
                                       render.recovered_accuracy, max)
    assert "| resnet | digits | -50% | 87.0 | **90.0** |" in recovered


def test_a_partial_seed_is_left_out_so_every_cell_averages_the_same_seeds(accuracy):
    runs = [_run("m", "d", method, 0.5, seed, 0.9) for seed in (0, 1) for method in ("rl", "uniform")]
    runs.append(_run("m", "d", "rl", 0.5, 2, 0.1))  # seed 2 stopped after one run
    kept, partial = render.complete_seeds({**accuracy, "runs": runs})
    assert partial == [2] and {r["seed"] for r in kept["runs"]} == {0, 1}
    whole, none_left_out = render.complete_seeds({**accuracy, "runs": runs[:4]})
    assert none_left_out == [] and whole["runs"] == runs[:4]
    # a no-recovery series run for seed 0 only keeps its seed and leaves the recovery series whole
    no_kd = [dict(_run("m", "d", method, 0.5, 0, 0.5), recovery=False) for method in ("rl", "uniform")]
    both, partial = render.complete_seeds({**accuracy, "runs": runs[:4] + no_kd})
    assert partial == [] and both["runs"] == runs[:4] + no_kd


def _judge_block(setting, level, rhos, regret, cost):
    return {"setting": setting, "level": level, "spearman": rhos, "regret": regret, "cost": cost,
            "truth_range": [0.5, 0.7], "truth_std": 0.05, "base_val_acc": 0.9, "val": 360,
            "subset_sizes": {"64": 64, "256": 256}, "bn_batches": 1, "surgery_seconds": 0.002,
            "kd_seconds": 4.0, "seconds": 70.0}


def test_judges_table_has_a_row_per_judge_with_the_mean_over_settings():
    from benchmarks.judges import render_markdown

    results = {"command": "python benchmarks/judges.py", "settings": {"kd_epochs": 1, "candidates": 16, "noise": 0.3,
                                                                     "bn_samples": 256},
               "machine": {}, "wall_seconds": 60.0,
               "blocks": [_judge_block("resnet20/digits@32", 0.25, {"raw_full": 0.2, "bn_full": 0.8},
                                       {"raw_full": 0.03, "bn_full": 0.01}, {"raw_full": 0.01, "bn_full": 0.02}),
                          _judge_block("resnet20/digits@32", 0.4, {"raw_full": None, "bn_full": 0.6},
                                       {"raw_full": 0.05, "bn_full": 0.0}, {"raw_full": 0.01, "bn_full": 0.04})]}
    lines = render_markdown(results).splitlines()
    header = next(line for line in lines if line.startswith("| judge |"))
    assert "resnet20/digits@32 −25%" in header and "resnet20/digits@32 −40%" in header
    rows = {line.split("|")[1].strip().split()[0]: [c.strip() for c in line.strip("|").split("|")]
            for line in lines if line.startswith("| `")}
    assert list(rows) == ["`raw_full`", "`bn_full`"]                 # the suite's judge order
    assert rows["`bn_full`"][1:] == ["+0.80", "+0.60", "+0.70", "0.50", "30.0"]
    assert rows["`raw_full`"][2] == "—" and rows["`raw_full`"][3] == "+0.20"   # undefined rho: left out of the mean


def test_judges_summary_correlates_and_charges_each_judge():
    from benchmarks.judges import summarise

    def cand(score, truth):
        return {"judges": {"good": score, "bad": -score}, "truth": truth, "judge_seconds": {"good": 0.1, "bad": 0.3},
                "seconds": {"kd": 1.0, "surgery": 0.01}}

    s = summarise([cand(0.1, 0.5), cand(0.2, 0.6), cand(0.3, 0.8), cand(0.4, 0.7)])
    assert s["spearman"]["good"] == pytest.approx(0.8) and s["spearman"]["bad"] == pytest.approx(-0.8)
    assert s["regret"]["good"] == pytest.approx(0.1) and s["regret"]["bad"] == pytest.approx(0.3)
    assert s["cost"]["bad"] == pytest.approx(0.3) and s["truth_range"] == [0.5, 0.8]


def _arch(label, kind, test, std=0.01, judge=0.3, params_reduction=0.5):
    return {"label": label, "kind": kind, "test": test, "test_std": std, "judge": judge, "pruned_val": judge,
            "params_reduction": params_reduction, "flops_reduction": 0.5, "runs": []}


def test_headroom_summary_measures_gains_against_uniform_and_renders_them():
    from benchmarks.headroom import render_markdown, summarise

    block = {"label": "resnet20 · digits · -50%", "base_test": 0.98, "complete": True,
             "architectures": [_arch("uniform", "uniform", 0.90, judge=0.5, params_reduction=0.5),
                               _arch("rl (its s0 run)", "recorded", 0.93, judge=0.7, params_reduction=0.4),
                               _arch("random 1", "random", 0.91, judge=0.6, params_reduction=0.45),
                               _arch("random 2", "random", 0.80, std=0.03, judge=0.2, params_reduction=0.6)]}
    s = summarise(block)
    assert s["best"] == "rl (its s0 run)" and s["best_gain"] == pytest.approx(0.03)
    assert s["best_random_gain"] == pytest.approx(0.01) and s["worst_gain"] == pytest.approx(-0.10)
    assert s["seed_spread"] == pytest.approx(0.015)
    assert s["rho_judge"] == pytest.approx(1.0) and s["rho_params"] == pytest.approx(1.0)  # more params kept, better
    block["summary"] = s
    page = render_markdown({"settings": {"importance": "taylor", "bn_samples": 256, "kd_epochs": 20, "kd_lr": 0.01,
                                         "seeds": [0, 1], "noise": 0.3}, "blocks": [block], "machine": {}})
    assert "| resnet20 · digits · -50% | 90.0 | rl (its s0 run) | +3.0 | +1.0 | -10.0 | 1.5 | +1.00 | +1.00 |" in page
    assert "| rl (its s0 run) | -50.0% | -40.0% | 70.0% | 70.0% | 93.0% ± 1.0 | +3.0 |" in page


def test_headroom_architectures_reach_the_target_at_equal_flops():
    import numpy as np
    import torch

    from benchmarks import headroom
    from rlpruner.graph import trace
    from rlpruner.models import create_model

    model = create_model("resnet8", num_classes=4, in_channels=1)
    graph = trace(model, torch.randn(1, 1, 16, 16))
    settings = headroom.HeadroomSettings(mode="t", cells=(), random=3, widths_from="no/such/accuracy.json")
    archs = headroom.architectures(settings, ("resnet8", "digits", 0.5), graph)
    assert [a.kind for a in archs] == ["uniform", "random", "random", "random"]
    base_flops = graph.count()[1]
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    for arch in archs:
        flops = graph.count({n: np.arange(c) for n, c in arch.counts.items()})[1]
        assert 0.5 <= 1 - flops / base_flops < 0.6
        assert all(0 < c < sizes[n] for n, c in arch.counts.items())
    shares = [c / sizes[n] for n, c in archs[0].counts.items()]
    assert max(shares) - min(shares) < 0.2        # uniform: about the same share of every group


def test_coverage_benchmark_measures_share_removal_and_exactness():
    from benchmarks import coverage

    row = coverage.measure("resnet8", 32)
    assert row["exact"] and row["max_rel_error"] <= 1e-4
    assert 0.9 < row["prunable_share"] <= 1 and 0.5 < row["params_removed_at_0_5"] < 1
    assert row["top_frozen_reason"] == "model output" and row["frozen_by_forward_check"] == []
    table = coverage.render({"machine": "m", "torch": "t", "rows": [row, {"model": "x", "input": 32, "error": "E"}]})
    assert "| resnet8 | 32² |" in table and "yes (" in table and "| x | 32² | fails: E |" in table


def test_scale_folder_is_deterministic_and_reused(tmp_path):
    from benchmarks.scale import make_folder

    a = make_folder(tmp_path / "a", 12, 3, (20, 30))
    b = make_folder(tmp_path / "b", 12, 3, (20, 30))
    files = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert len(files) == 12 and files == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    stamp = (a / files[0]).stat().st_mtime_ns
    make_folder(a, 12, 3, (20, 30))  # complete: not written again
    assert (a / files[0]).stat().st_mtime_ns == stamp


def test_scale_memory_meter_sees_this_process_and_its_children():
    import subprocess

    from benchmarks.scale import descendants, pss_bytes

    own = pss_bytes([os.getpid()])
    assert own > 1_000_000
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        for _ in range(50):
            if child.pid in descendants(os.getpid()):
                break
            time.sleep(0.05)
        assert child.pid in descendants(os.getpid())
        assert pss_bytes(descendants(os.getpid())) > own
    finally:
        child.kill()
        child.wait()


def test_scale_quick_run_measures_and_renders(tmp_path):
    from benchmarks import scale

    assert scale.main(["--quick", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]) == 0
    doc = json.loads((tmp_path / "results" / "scale.json").read_text())
    assert [(r["case"], r["folder_images"], r["processes"]) for r in doc["rows"]] == [
        ("cifar", 300, 2), ("folder", 60, 1), ("folder", 240, 1)]
    for row in doc["rows"]:
        assert row["peak_pss_bytes"] > 0 and row["steps"] and row["world_size"] == row["processes"]
        summary = scale.step_summary(row)
        assert summary["wall_s"] >= summary["eval"] > 0 and summary["candidates_per_s"] > 0
        assert all(len(s["scored_by"]) == row["processes"] and sum(s["scored_by"]) == s["candidates"]
                   for s in row["steps"])
    page = (tmp_path / "results" / "scale.md").read_text()
    assert "| 240 (" in page and "peak host memory changes" in page and "| 300 (" in page


def test_a_base_model_remembers_the_machine_that_trained_it_and_the_doc_names_other_machines(tmp_path, accuracy):
    from benchmarks.accuracy import BaseJob, train_base
    from rlpruner import io

    settings = dataclasses.replace(presets.quick().accuracy, train_epochs=1)
    job = BaseJob(presets.ModelSpec("resnet", "resnet8"), presets.DIGITS_16, settings, tmp_path / "base.rlp")
    here = presets.machine()["cpu"]
    assert train_base(job)["trained_on"]["cpu"] == here
    model, meta = io.load_checkpoint(job.path)
    io.save(model, job.path, meta={**meta, "trained_on": {**meta["trained_on"], "cpu": "Other CPU"}})
    reused = train_base(job)  # the checkpoint is reused: its machine, not this one
    assert reused["trained_on"]["cpu"] == "Other CPU"
    assert render.other_machine_lines({**accuracy, "machine": {"cpu": here}, "base": [reused]}) == [
        f"- resnet · digits: base model and runs on Other CPU, commit {reused['trained_on']['commit']}, "
        f"{reused['trained_on']['date']} (every method of the cell starts from it)."]
    assert render.other_machine_lines({**accuracy, "machine": {"cpu": "Other CPU"}, "base": [reused]}) == []


def test_the_selection_gap_is_validation_minus_test_per_method_and_rl_against_uniform(accuracy):
    runs = [dict(r, val_acc=r["test_acc"] + (0.04 if r["method"] == "rl" else 0.01)) for r in accuracy["runs"]]
    runs.append(dict(runs[0], recovery=False, val_acc=0.99))  # the series without KD is not counted
    table = render.selection_gap_table({**accuracy, "runs": runs})
    assert table[0] == "| model | dataset | RL-Pruner | uniform | global magnitude | RL − uniform |"
    assert table[2] == "| resnet | digits | +4.0 | +1.0 | +1.0 | +3.0 |"


def test_every_command_that_added_cells_to_a_results_file_is_kept_and_named(accuracy):
    from benchmarks import run_all
    history = run_all._with_command("python benchmarks/run_all.py --full --models a", "python benchmarks/run_all.py --full --models b")
    assert run_all._with_command(history, history[0]) == history  # a rerun of the same command adds nothing
    lines = render.setup_lines({"accuracy": accuracy, "suite": {"mode": "full", "commands": {"accuracy": history}}})
    commands = [line for line in lines if line.startswith("- Commands (accuracy")]
    assert commands and "`python benchmarks/run_all.py --full --models a`; `python benchmarks/run_all.py --full --models b`" in commands[0]
    old_style = render.setup_lines({"accuracy": accuracy, "suite": {"mode": "full", "commands": {"accuracy": history[0]}}})
    assert "- Command (accuracy): `python benchmarks/run_all.py --full --models a`." in old_style


def test_the_selection_gap_table_skips_a_model_and_dataset_that_has_no_runs(accuracy):
    settings = dict(accuracy["settings"], datasets=[*accuracy["settings"]["datasets"], {"label": "cifar", "name": "cifar10"}])
    table = render.selection_gap_table({**accuracy, "settings": settings})
    assert not any("cifar" in line for line in table)


def test_gaps_are_rl_minus_a_method_or_minus_the_best_other_method_per_setting(accuracy):
    assert render.gaps(accuracy, "uniform") == pytest.approx([0.01, 0.10])     # 0.92 - 0.91, 0.80 - 0.70
    assert render.gaps(accuracy, "global") == pytest.approx([-0.05])           # -50%: global did not run
    assert render.gaps(accuracy, render.BEST) == pytest.approx([0.01, -0.05])  # -75%: global is the best other
    assert render.gaps(accuracy, "uniform", recovery=False) == pytest.approx([0.20])


def test_the_sign_test_is_the_exact_two_sided_binomial_test():
    assert render.sign_test(5, 0) == pytest.approx(2 / 32)
    assert render.sign_test(0, 5) == pytest.approx(2 / 32)
    assert render.sign_test(3, 3) == 1.0 and render.sign_test(0, 0) == 1.0
    assert render.sign_test(9, 1) == pytest.approx(2 * 11 / 1024)


def test_pooled_gaps_count_the_settings_and_bound_the_mean_reproducibly():
    values = [0.02, 0.01, -0.01, 0.03, 0.0, 0.02]
    stat = render.pooled(values)
    assert stat["n"] == 6 and stat["ahead"] == 4 and stat["behind"] == 1
    assert stat["mean"] == pytest.approx(sum(values) / len(values)) and stat["median"] == pytest.approx(0.015)
    assert min(values) <= stat["low"] <= stat["mean"] <= stat["high"] <= max(values)
    assert render.pooled(values) == stat and render.pooled([]) is None
    line = render.pooled_line(stat, "uniform", "after KD recovery")
    assert "RL-Pruner − uniform = +1.2 points" in line and "ahead in 4, behind in 1" in line


def test_the_verdict_and_the_per_model_table_pool_the_settings(accuracy):
    lines = render.verdict_lines(accuracy, None)
    assert any(line.startswith("- Pooled over the 2 settings (after KD recovery): RL-Pruner − the best other method = -2.0")
               for line in lines)
    table = render.pooled_table(accuracy)
    assert table[0] == ("| model | dataset | settings | RL − uniform | RL − global magnitude | RL − best other |")
    assert table[2] == "| resnet | digits | 2 | +5.5 | -5.0 | -2.0 |"


def test_final_widths_are_the_kept_share_of_every_group_under_its_name_for_loop_methods_and_peers(tmp_path, accuracy):
    from benchmarks import widths
    loop = {"stem": [16, 8], "layer1.conv1": [16, 4]}
    runs = [dict(r, widths=loop) for r in accuracy["runs"] if r["method"] == "rl"]
    runs.append(dict(accuracy["runs"][3], method="tp-l2", widths={"stem": [16, 12], "layer1.conv1": [16, 16],
                                                                  "layer1.conv2": [16, 12], "fc": [10, 10]}))
    data = {**accuracy, "runs": runs}
    assert widths.group_names(data, "resnet") == ["stem", "layer1.conv1"]   # a loop method's groups, not a peer's layers
    assert widths.kept_share(runs[-1], ["stem", "layer1.conv1", "other"]) == [0.75, 1.0, None]
    keys = render.settings_keys(data)
    tables = widths.widths_tables(data, keys, ["rl", "tp-l2"], render.method_name)
    assert "| digits | -50% | RL-Pruner | 50 | 25 |" in tables
    assert "| digits | -50% | TP global L2 | 75 | 100 |" in tables
    assert widths.plot_widths(data, keys, ["rl", "tp-l2"], render.method_name, render.COLORS,
                              tmp_path / "widths.png").stat().st_size > 0


def test_headroom_cells_are_chosen_on_the_command_line_and_added_to_the_same_study():
    import argparse

    from benchmarks import headroom
    assert headroom.parse_cell("vgg11:synthetic-hard:0.9") == ("vgg11", "synthetic-hard", 0.9)
    for bad in ("vgg11:synthetic-hard", "vgg11:imagenet:0.5", "vgg11:digits:1.5", "vgg11:digits:x", "a:digits:0.5:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            headroom.parse_cell(bad)
    assert headroom.parse_args(["--cells", "resnet56:digits:0.75"]).cells == [("resnet56", "digits", 0.75)]
    one, other = headroom.full_settings(), dataclasses.replace(headroom.full_settings(), cells=(("vgg11", "digits", 0.5),))
    assert headroom.comparable(one.to_dict()) == headroom.comparable(other.to_dict())  # more cells: the same study
    assert headroom.comparable(one.to_dict()) != headroom.comparable(dataclasses.replace(one, kd_epochs=5).to_dict())


def test_judges_against_a_held_out_truth_and_on_training_images_disjoint_from_the_bn_images():
    import torch

    from benchmarks import judges
    from rlpruner.data.base import dataset_labels, stratified_subset

    def cand(score, val, heldout):
        return {"judges": {"j": score}, "truth": val, "truth_heldout": heldout, "judge_seconds": {"j": 0.1},
                "seconds": {"kd": 1.0, "surgery": 0.01}}

    candidates = [cand(0.1, 0.5, 0.8), cand(0.2, 0.6, 0.7), cand(0.3, 0.7, 0.6)]
    assert judges.summarise(candidates)["spearman"]["j"] == pytest.approx(1.0)
    assert judges.summarise(candidates, "heldout")["spearman"]["j"] == pytest.approx(-1.0)
    # a results file written before these settings existed had their defaults
    old = {k: v for k, v in judges.full().to_dict().items() if k not in judges.ADDED_SETTINGS}
    assert judges.same_settings(old, judges.full().to_dict())
    assert not judges.same_settings(old, dataclasses.replace(judges.full(), truth="heldout").to_dict())
    assert not judges.same_settings({}, judges.full().to_dict())
    splits = judges.load_splits(judges.SETTINGS["resnet20/digits@32"])
    config = dataclasses.replace(judges.full(), train_subsets=(128,), bn_samples=256)
    (size, batches), = judges.train_subsets(splits, config).items()
    labels = dataset_labels(splits.train)
    bn = set(stratified_subset(labels, 256, config.seed + 2).tolist())  # the search's BN images
    assert size == 128 and sum(len(y) for _, y in batches) == 128
    picked = torch.cat([x for x, _ in batches])
    for i in sorted(bn)[:20]:   # no BN image is judged
        assert not any(torch.equal(splits.train[i][0], row) for row in picked)
    page = judges.render_markdown({"settings": {"kd_epochs": 1, "candidates": 3, "noise": 0.05, "bn_samples": 256,
                                                "truth": "heldout"}, "machine": {}, "wall_seconds": 1.0,
                                   "blocks": [dict(_judge_block("r/d@16", 0.15, {"train_512": 0.5}, {"train_512": 0.0},
                                                                {"train_512": 0.1}), heldout=150,
                                                   train_subset_sizes={"512": 512})]})
    assert "validation images that no judge scored on" in page and "| 150 | 512 |" in page
    assert judges.parse_args(["--settings", "vgg11/synthetic-hard-10k@16", "--truth", "heldout", "--probe-steps",
                              "--train-subsets", "512"]).probe_steps == []


def _timed_row(method, seed, acc, b1, b64, **extra):
    row = _run("resnet", "hard", method, 0.5, seed, acc)
    return {**row, **extra, "latency": {"1": {"reduction": b1}, "64": {"reduction": b64}}}


def test_the_equal_latency_study_tabulates_accuracy_and_measured_latency_and_compares_the_latency_run():
    from benchmarks import latency_target

    runs = [_timed_row("uniform", s, 0.80 + 0.01 * s, 0.20, 0.30) for s in (0, 1)]
    runs += [_timed_row("rl", s, 0.78, 0.18, -0.05) for s in (0, 1)]
    runs += [_timed_row("rl-latency", s, 0.82, 0.22, 0.32, latency_target=0.25) for s in (0, 1)]
    page = latency_target.render_markdown({
        "machine": {"cpu": "cpu", "commit": "c"}, "runs": runs, "matched": [["resnet", "hard", 0.5, 0.25],
                                                                            ["resnet", "hard", 0.75, -0.04]],
        "settings": {"batch": 1, "timing_batches": [1, 64], "accuracy": {"kd_budget": 20}}})
    assert "| resnet / hard | -50% | uniform | 80.5 ± 0.7 | -50% | -40% | -20% | -30% | 2 |" in page
    assert "| rl-latency (target -25% latency) | 82.0 ± 0.0 |" in page
    assert "| -18% | +5% | 2 |" in page  # a model slower than its base shows as +
    assert ("rl-latency against uniform +1.5 pts, rl +4.0 pts; measured latency at batch 1: uniform -20%, "
            "rl -18%, rl-latency -22%.") in page
    assert "at -75% FLOPs: the uniform model is predicted +4.0% at batch 1" in page
    assert "halp" not in page  # results written before HALP's row: no empty column for it
    assert "its check" not in page  # rows without their checks: no line about them
    runs[4]["checks"] = [{"step": 3, "measured": 0.20, "low": 0.19, "high": 0.21, "predicted": 0.25, "pruned_on": True},
                         {"step": 4, "measured": 0.26, "low": 0.25, "high": 0.27, "predicted": 0.27, "pruned_on": False}]
    runs[5]["checks"] = [{"step": 3, "measured": 0.26, "low": 0.25, "high": 0.27, "predicted": 0.25, "pruned_on": False}]
    page = latency_target.render_markdown({
        "machine": {"cpu": "cpu", "commit": "c"}, "runs": runs, "matched": [],
        "settings": {"batch": 1, "timing_batches": [1, 64], "accuracy": {"kd_budget": 20}}})
    assert ("- rl-latency: its check (timed when the table said the target was reached, in the run's process) sent "
            "the search on in 1 of 2 runs; the first timing measured -2.0 points of reduction against the table's "
            "prediction (median; from -5.0 to +1.0).") in page
    runs += [_timed_row("halp-latency", s, 0.79, 0.26, 0.31, latency_target=0.25) for s in (0, 1)]
    page = latency_target.render_markdown({
        "machine": {"cpu": "cpu", "commit": "c"}, "runs": runs, "matched": [],
        "settings": {"batch": 1, "timing_batches": [1, 64], "accuracy": {"kd_budget": 20}}})
    assert "| halp-latency (target -25% latency) | 79.0 ± 0.0 |" in page
    assert ("rl-latency against uniform +1.5 pts, rl +4.0 pts, halp-latency +3.0 pts; measured latency at batch 1: "
            "uniform -20%, rl -18%, rl-latency -22%, halp-latency -26%.") in page
    assert "| halp-latency at that latency |" in page
    assert "Machine: cpu, commit c." in page
    for row in runs[-2:]:
        row["commit"] = "d"  # rows a later run added
    page = latency_target.render_markdown({
        "machine": {"cpu": "cpu", "commit": "d"}, "runs": [dict(r, commit=r.get("commit", "c")) for r in runs],
        "matched": [], "settings": {"batch": 1, "timing_batches": [1, 64], "accuracy": {"kd_budget": 20}}})
    assert "Machine: cpu, runs of commits c (6), d (2)." in page


def test_the_equal_latency_page_says_how_its_models_were_timed_and_how_precisely():
    from benchmarks import latency_target

    def row(way, width=None):
        timed = {"reduction": 0.2} if width is None else {"reduction": 0.2, "low": 0.2 - width, "high": 0.2}
        return {"timing": way, "latency": {"1": timed, "64": timed}} if way else {"latency": {"1": timed}}

    assert latency_target._timing_text([row("pairs", 0.01), row("pairs", 0.03), row("pairs", 0.02)], 5.0) == (
        "each timed in turns with its base alone (about 5 s per batch size; the 95 % intervals of the reductions "
        "are 2.0 points wide (median))")
    assert latency_target._timing_text([row("turns")] * 2, 20.0).startswith("timed in turns with the base and the other")
    assert latency_target._timing_text([row("pairs", 0.01), row(None)], 5.0) == (
        "1 of the 2 models each timed in turns with its base alone; 1 of the 2 models timed in alternating chunks "
        "with the base")


def test_each_method_is_read_at_the_uniform_models_measured_latency_without_extrapolating():
    from benchmarks import latency_target

    points = latency_target.curve({0.5: [{"test_acc": 0.8, "latency": {"1": {"reduction": 0.2}}}],
                                   0.75: [{"test_acc": 0.7, "latency": {"1": {"reduction": 0.4}}},
                                          {"test_acc": 0.6, "latency": {"1": {"reduction": 0.4}}}],
                                   0.9: [{"test_acc": 0.5}]}, "1")  # an untimed target is no point
    assert points == [(0.2, 0.8), (0.4, pytest.approx(0.65))]
    assert latency_target.at_latency(points, 0.3) == pytest.approx(0.725)
    assert latency_target.at_latency(points, 0.2) == pytest.approx(0.8)
    assert latency_target.at_latency(points, 0.1) is None and latency_target.at_latency(points, 0.5) is None

    def rows(method, target, acc, b1):
        return [{**_timed_row(method, s, acc, b1, b1), "target": target, "latency_target": b1} for s in (0, 1)]

    runs = rows("uniform", 0.5, 0.80, 0.25) + rows("uniform", 0.75, 0.70, 0.45)
    runs += rows("rl", 0.5, 0.78, 0.20) + rows("rl", 0.75, 0.74, 0.40)          # reaches 0.25, not 0.45
    runs += rows("rl-latency", 0.5, 0.82, 0.30) + rows("rl-latency", 0.75, 0.76, 0.50)  # reaches 0.45, not 0.25
    page = latency_target.render_markdown({
        "machine": {"cpu": "cpu", "commit": "c"}, "runs": runs, "matched": [],
        "settings": {"batch": 1, "timing_batches": [1], "accuracy": {"kd_budget": 20}}})
    assert "| resnet / hard | 1 | -50% FLOPs | -25% | 80.0 | 77.0 (-3.0) | — |" in page
    assert "| resnet / hard | 1 | -75% FLOPs | -45% | 70.0 | — | 77.5 (+7.5) |" in page


def test_the_latency_goal_counts_rounded_and_latency_aware_rows_built_with_the_columns_runtime():
    from benchmarks import latency_model

    assert latency_model.aware_for("onnxruntime-cpu/1t/b1") == ("uniform-r8", "rl-latency-ort", "rl-flops-fast-ort",
                                                               "halp-latency-ort", "halp-flops-lat-ort")
    assert latency_model.aware_for("torch-cpu/1t/b32") == ("uniform-r8", "rl-latency", "rl-flops-fast", "halp-latency",
                                                          "halp-flops-lat", "halp-flops-lat-r8")
    # a 2-thread column counts the rows searched with the 2-thread table; results of runs that built
    # none (no -2t rows) count the 1-thread table's rows, as they were counted when written
    assert latency_model.aware_for("torch-cpu/2t/b1") == ("uniform-r8", "rl-latency-2t", "rl-flops-fast-2t",
                                                         "halp-latency-2t", "halp-flops-lat-2t")
    assert latency_model.aware_for("torch-cpu/2t/b1", ["uniform", "rl-latency"]) == \
        ("uniform-r8", "rl-latency", "rl-flops-fast", "halp-latency", "halp-flops-lat", "halp-flops-lat-r8")
    assert latency_model.aware_for("torch-cpu/2t/b1", ["rl-latency", "rl-latency-2t"]) == \
        ("uniform-r8", "rl-latency-2t", "rl-flops-fast-2t", "halp-latency-2t", "halp-flops-lat-2t")
    columns = ("torch-cpu/1t/b1", "onnxruntime-cpu/1t/b1")
    ratios = {"uniform-r8": (0.7, 0.5), "rl-latency": (0.9, 0.95), "rl-latency-ort": (0.6, 0.85),
              "rl-flops": (0.99, 0.99)}  # rl-flops is not latency-aware; rl-latency's table is PyTorch's
    row = {"model": "m", "input": [3, 224, 224], "base_ms": dict.fromkeys(columns, 1.0),
           "methods": [{"method": m, "ratio": dict(zip(columns, r))} for m, r in ratios.items()]}
    small = {**row, "input": [3, 32, 32]}  # only 224x224 models count
    lines = latency_model.goal_lines({"rows": [row, small]})
    assert lines[0].endswith("met in 2 of 2.")
    assert lines[2] == "Each configuration alone: uniform-r8 0 of 2, rl-latency 2 of 2."
    two = {**row, "base_ms": {"torch-cpu/2t/b1": 1.0}, "methods": [  # the 2-thread table's row counts, alone too
        {"method": "rl-latency", "ratio": {"torch-cpu/2t/b1": 0.9}},
        {"method": "rl-latency-2t", "ratio": {"torch-cpu/2t/b1": 0.7}}]}
    lines = latency_model.goal_lines({"rows": [two]})
    assert "met in 0 of 1; missed: m torch-cpu/2t/b1 (best 0.700)." in lines[0]
    assert lines[2] == "Each configuration alone: rl-latency 0 of 1."
    row["methods"][2]["ratio"]["onnxruntime-cpu/1t/b1"] = 0.7
    assert "met in 1 of 2; missed: m onnxruntime-cpu/1t/b1 (best 0.700)." in latency_model.goal_lines({"rows": [row]})[0]


def test_the_latency_page_says_what_each_timing_of_a_latency_target_found():
    from benchmarks import latency_model

    methods = [{"method": "uniform"},
               {"method": "rl-latency", "checks": [
                   {"measured_reduction": 0.46, "predicted_reduction": 0.50, "next_goal_ms": 9.1},
                   {"measured_reduction": 0.503, "predicted_reduction": 0.55, "next_goal_ms": None}]}]
    assert latency_model.checks_lines(methods)[1].endswith(
        "rl-latency -46% (table -50%), pruned on, then -50% (table -55%).")
    assert latency_model.checks_lines(methods[:1]) == []


def test_a_rerun_of_every_model_drops_the_note_that_bounds_were_added_later():
    from benchmarks import latency_model

    earlier = {"rows": [{"model": "resnet18"}, {"model": "resnet50"}], "bounds_machine": {"commit": "a"},
               "bound_timings_machine": {"commit": "b"}}
    some = latency_model.LatencyModelSettings(models=("resnet18",))
    kept = latency_model.starting_results(json.loads(json.dumps(earlier)), some)  # resnet50's row stays
    assert kept["bounds_machine"] == {"commit": "a"} and kept["bound_timings_machine"] == {"commit": "b"}
    fresh = latency_model.starting_results(json.loads(json.dumps(earlier)), latency_model.LatencyModelSettings())
    assert "bounds_machine" not in fresh and "bound_timings_machine" not in fresh
    assert fresh["settings"]["models"] == tuple(latency_model.MODELS)
    assert latency_model.starting_results(None, some)["rows"] == []


def test_a_rerun_model_drops_out_of_the_note_that_bounds_were_added_later_and_a_recheck_is_rendered():
    from benchmarks import latency_model

    earlier = {"rows": [{"model": "resnet18"}, {"model": "mobilenetv2"}],
               "bounds_machine": {"commit": "a", "models": ["mobilenetv2"]},
               "bound_timings_machine": {"commit": "b", "models": ["resnet18", "mobilenetv2"]}}
    results = latency_model.starting_results(json.loads(json.dumps(earlier)),
                                             latency_model.LatencyModelSettings(models=("mobilenetv2",)))
    assert "bounds_machine" not in results and results["bound_timings_machine"]["models"] == ["resnet18"]
    table = {"runtime": "torch-cpu", "threads": 1, "median": 0.207, "aligned": {"median": 0.236},
             "recheck": {"median": 0.052, "aligned_median": 0.04, "commit": "c"}}
    lines = latency_model.recheck_lines({"rows": [{"model": "m", "tables": [table]}]})
    assert "`--recheck` at commit c" in lines[1]
    assert lines[1].endswith("m torch-cpu/1t 5.2% (run 20.7%), multiples of 8 4.0% (run 23.6%).")
    assert latency_model.recheck_lines({"rows": [{"model": "m", "tables": [{}]}]}) == []


def test_a_model_rerun_later_names_each_models_commit():
    """`--models` reruns some models: the rows kept name the commit of the run that timed them, and the
    page names each commit with its models (a model's rows and base are always timed together)."""
    from benchmarks import latency_model

    earlier = {"machine": {"commit": "old"}, "rows": [{"model": "resnet18"}, {"model": "mobilenetv2"}]}
    results = latency_model.starting_results(json.loads(json.dumps(earlier)),
                                             latency_model.LatencyModelSettings(models=("mobilenetv2",)))
    assert [row["commit"] for row in results["rows"]] == ["old", "old"]
    assert latency_model._commits(results) == "commit old"
    results["rows"] = [results["rows"][0], {"model": "mobilenetv2", "commit": "new"}]
    assert latency_model._commits(results) == "commits old (resnet18); new (mobilenetv2)"
    # the allocator state each model was timed in: rows older than rlpruner.host_memory had glibc's defaults
    from rlpruner import host_memory
    results["rows"][1]["host_memory"] = host_memory.describe()
    assert latency_model._host_memory(results) == \
        f"glibc malloc's adaptive defaults (resnet18); {host_memory.describe()} (mobilenetv2)"
    results["rows"][0]["host_memory"] = host_memory.describe()
    assert latency_model._host_memory(results) == host_memory.describe()
    # how each row's models were timed against each other: rows before 83e64c9 one after the other
    assert latency_model._timing_text(results).startswith("The models of each timing column were timed one after")
    results["rows"][1]["timing"] = "turns"
    mixed = latency_model._timing_text(results)
    assert "are timed in turns" in mixed and mixed.endswith("mobilenetv2; the rows of resnet18 were timed one after "
                                                           "the other, the original before and after them (the faster "
                                                           "of the two kept), each table check's model alone.")
    results["rows"][0]["timing"] = "turns"
    assert "one after" not in latency_model._timing_text(results)


def test_the_table_bound_reaches_the_flops_target_and_follows_the_table(monkeypatch):
    """On a clock where latency is FLOPs, the best allocation saves latency exactly as it saves FLOPs;
    where one layer's channels cost extra per channel, the walk takes them first."""
    import torch
    from torch import nn

    from benchmarks import latency_model
    from rlpruner import metrics
    from rlpruner.graph import trace
    from rlpruner.latency import Runtime, build_table, get_runtime
    from rlpruner.models import create_model

    def clock(extra):
        def time_ms(self, module, inputs, watch):
            later = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.in_channels != 3]
            return metrics.count(module, inputs).flops / 1e4 + extra * sum(m.out_channels for m in later)
        return time_ms

    torch.manual_seed(0)
    model, x = create_model("simple_cnn", num_classes=3, widths=[32, 64]).eval(), torch.randn(1, 3, 16, 16)
    graph = trace(model, x)
    monkeypatch.setattr(Runtime, "time_ms", clock(0.0))
    plain = latency_model.table_bound(build_table(model, graph, x, get_runtime("torch-cpu"), points=3), graph, 0.5)
    assert plain["flops_reduction"] >= 0.5
    assert plain["predicted_reduction"] == pytest.approx(plain["flops_reduction"], abs=0.02)
    monkeypatch.setattr(Runtime, "time_ms", clock(5.0))  # the second conv's channels are slow: the walk cuts them
    costly = latency_model.table_bound(build_table(model, graph, x, get_runtime("torch-cpu"), points=3), graph, 0.5)
    second = next(g.name for g in graph.prunable_groups() if g.size == 64)
    assert costly["kept"][second] < plain["kept"][second] and costly["flops_reduction"] >= 0.5
    # built and timed on the same clock, the allocation measures what the table predicted for it
    timed = latency_model.time_bound(model, graph, x, costly, "torch-cpu/1", (1, 2))
    assert set(timed) == {"b1", "b2"}
    reduction = 1 - timed["b1"]["ms"] / timed["b1"]["base_ms"]
    assert reduction == pytest.approx(costly["predicted_reduction"], abs=0.02)
    assert timed["b1"]["ratio"] == pytest.approx(reduction / costly["flops_reduction"])
    # where the table charges widths off a block of 16, the walk steps in 16s: no width is left off it
    table = build_table(model, graph, x, get_runtime("torch-cpu"), points=3)
    table.fit = dataclasses.replace(table.fit, block=16, misaligned_ms=1.0)
    blocked = latency_model.table_bound(table, graph, 0.5)
    assert blocked["chunk"] == 16 and plain["chunk"] == 8 and blocked["flops_reduction"] >= 0.5
    assert all(k % 16 == 0 for k in blocked["kept"].values())
    # the narrowest model (every group at 8 channels) is timed beside the bound, once per runtime
    row = {"model": "m", "input": [3, 16, 16], "base_ms": {}, "methods": [], "tables": [],
           "bounds": {"torch-cpu/1": {**costly, "measured": timed}}}
    latency_model.time_row_bounds(row, model, graph, x, (1,), print)
    narrow = row["narrowest"]
    assert set(narrow["kept"].values()) == {8} and set(narrow["measured"]) == {"torch-cpu/1"}
    sizes = {g.name: g.size for g in graph.prunable_groups()}
    flops = graph.count({n: range(s - 8) for n, s in sizes.items()})[1]
    assert narrow["flops_reduction"] == pytest.approx(1 - flops / graph.count()[1])
    clocked = clock(5.0)(None, model, x, None)
    slim = 1 - (flops / 1e4 + 5.0 * 8) / clocked  # the clock on the narrowest model, against the original
    assert 1 - narrow["measured"]["torch-cpu/1"]["b1"]["ms"] / clocked == pytest.approx(slim, abs=1e-6)
    results = {"rows": [row], "settings": {"target": 0.5, "check_samples": 2}, "machine": {"cpu": "c", "commit": "x"}}
    settings = latency_model.LatencyModelSettings(models=("m",))  # "m" cannot be built: nothing may be left to time
    assert not latency_model.add_bound_timings(results, settings, print)
    text = latency_model._bound_text("torch-cpu/1", results["rows"][0]["bounds"]["torch-cpu/1"])
    assert f"measured b1 {-reduction:+.0%} ({timed['b1']['ratio']:.2f})" in text
    page = latency_model.render_markdown(results)
    assert f"The narrowest model (every group cut to 8 channels, -{narrow['flops_reduction']:.0%} FLOPs" in page
    assert f"torch-cpu/1 b1 {-slim:+.0%}" in page
    results["bounds_machine"] = {"commit": "y", "models": ["m"]}  # `--bounds` names the models it added to
    assert "(the table bounds of m: `--bounds` at commit y," in latency_model.render_markdown(results)


def test_the_latency_run_targets_the_uniform_models_predicted_latency(tmp_path, monkeypatch):
    """On a clock where latency is FLOPs, the matched latency target is the uniform model's FLOPs reduction."""
    import torch

    from benchmarks import latency_target
    from benchmarks.accuracy import BaseJob
    from rlpruner import count, io
    from rlpruner.latency import Runtime
    from rlpruner.pruner import prune_to_flops
    from rlpruner.models import create_model

    monkeypatch.setattr(Runtime, "time_ms", lambda self, module, inputs, watch: count(module, inputs).flops / 1e4)
    dataset = presets.DatasetSpec("hard", "synthetic", {"num_classes": 3, "samples_per_class": 20}, image_size=8)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=3, in_channels=3).eval()
    io.save(model, tmp_path / "base.rlp", meta={})
    settings = presets.AccuracySettings(models=(presets.ModelSpec("resnet", "resnet8"),), datasets=(dataset,),
                                        targets=(0.5,), seeds=(0,))
    base = BaseJob(settings.models[0], dataset, settings, tmp_path / "base.rlp")
    matched = latency_target.matched_latency_targets(base, (0.5, 0.75), 2, tmp_path / "cache")
    example = dataset.load().example_inputs()
    full = count(model, example).flops
    for target, goal in matched.items():
        uniform = prune_to_flops(create_model("resnet8", num_classes=3, in_channels=3), example, target)
        assert goal == pytest.approx(1 - count(uniform, example).flops / full, rel=1e-6)
    jobs = latency_target.jobs(latency_target.StudySettings(settings), [base], tmp_path,
                               {("resnet", "hard", 0.5): matched[0.5]})
    assert [j.run.method for j in jobs] == ["uniform", "rl", "rl-latency", "halp-latency", "halp-latency-r0.8"]
    assert jobs[2].latency_target == jobs[3].latency_target == jobs[4].latency_target == matched[0.5]
    assert jobs[0].latency_target is None
    assert [j.run.method for j in latency_target.jobs(latency_target.StudySettings(settings), [base], tmp_path,
                                                      {("resnet", "hard", 0.5): -0.04})] == ["uniform", "rl"]


@pytest.mark.slow
def test_the_equal_latency_study_runs_five_methods_times_them_and_resumes(tmp_path, capsys):
    from dataclasses import replace

    from benchmarks import latency_target

    args = ["--quick", "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    assert latency_target.main(args) == 0
    doc = json.loads((tmp_path / "results" / "latency_target.json").read_text())
    assert sorted(r["method"] for r in doc["runs"]) == ["halp-latency", "halp-latency-r0.8", "rl", "rl-latency",
                                                        "uniform"]
    assert all(set(r["latency"]) == {"1", "4"} for r in doc["runs"])
    targets = {r["method"]: r.get("latency_target") for r in doc["runs"]}
    assert 0 < targets["rl-latency"] == targets["halp-latency"] == targets["halp-latency-r0.8"] < 1
    for row in doc["runs"]:  # each latency run's target checks, as its results.json has them
        if row["method"] in latency_target.LATENCY_RUNS:
            assert row["checks"] and row["checks"] == latency_target.checks_of(presets.resolve(row["run_dir"]))
            assert {c["process"] for c in row["checks"]} == {"fresh"}  # timed away from the run's heap
        else:
            assert "checks" not in row
    floored = next(r for r in doc["runs"] if r["method"] == "halp-latency-r0.8")
    assert all(kept >= -(-size // 5) for size, kept in floored["widths"].values())  # max_group_ratio 0.8
    assert len(doc["matched"]) == 1
    assert "rl-latency against uniform" in (tmp_path / "results" / "latency_target.md").read_text()
    capsys.readouterr()
    assert latency_target.main(args) == 0  # every run and timing is kept: nothing to redo
    assert "5 runs in latency_target.json, 0 to go" in capsys.readouterr().out
    assert json.loads((tmp_path / "results" / "latency_target.json").read_text())["runs"] == doc["runs"]
    for row in doc["runs"]:  # each final model timed against its base alone, with the reduction's interval
        assert row["timing"] == "pairs"
        for timed in row["latency"].values():
            assert timed["low"] <= timed["reduction"] <= timed["high"] and timed["turns"] >= 3
    # new timing settings: the runs are kept, only their final models are timed again
    lines = []
    settings = replace(latency_target.quick(), pair_seconds=0.2)
    again = latency_target.run(settings, tmp_path / "results" / "latency_target", tmp_path / "work", log=lines.append)
    assert any("the timing settings changed: the runs are kept" in line for line in lines), lines
    assert any("5 runs in latency_target.json, 0 to go" in line for line in lines), lines
    assert again["settings"]["pair_seconds"] == 0.2 and "seconds" not in again["settings"]
    drop = ("latency", "timing")
    assert [{k: v for k, v in r.items() if k not in drop} for r in again["runs"]] == \
        [{k: v for k, v in r.items() if k not in drop} for r in doc["runs"]]
    assert all(r["timing"] == "pairs" and set(r["latency"]) == {"1", "4"} for r in again["runs"])


def test_the_host_memory_study_times_both_models_in_each_allocator_state_in_its_own_process():
    """Each state is a fresh process (the allocator's state is per process); the page shows every
    state with both models' latency, their page faults and the speed-up."""
    from benchmarks import host_memory

    results = host_memory.run({**host_memory.QUICK, "size": 32, "rounds": 1})
    assert [row["state"] for row in results["rows"]] == list(host_memory.STATES)
    for row in results["rows"]:
        for name in ("original", "pruned"):
            (timing,) = row["timings"][name]
            assert timing["ms"] > 0 and timing["faults_per_call"] >= 0
        assert row["timings"]["pruned"][0]["ms"] < 5 * row["timings"]["original"][0]["ms"]
    page = host_memory.render_markdown(results)
    assert all(f"| {label} |" in page for label in host_memory.STATES.values())
    assert "Command: `python benchmarks/host_memory.py`" in page
    # the full study cuts the model to a table walk's widths, traced and cut as the benchmarks do
    import torch

    from rlpruner.graph import trace
    from rlpruner.models import create_model

    spec = {**host_memory.QUICK, "size": 32, "rounds": 1}
    model = create_model(spec["model"], num_classes=spec["classes"], **spec["options"])
    kept = {g.name: g.size // 2 for g in trace(model, torch.randn(1, 3, 32, 32)).prunable_groups()}
    row = host_memory.child("kept", {**spec, "kept": kept})
    assert row["state"] == "kept" and set(row["timings"]) == {"original", "pruned"}


def test_the_timing_study_measures_each_trial_both_ways_and_shows_their_spread():
    """Every trial times the pair one after the other and in turns; the page gives each way's
    latency changes (median, range, middle half) from the trials, nothing typed."""
    from benchmarks import timing_turns

    lines = []
    results = timing_turns.run(timing_turns.QUICK, log=lines.append)
    assert len(results["trials"]) == timing_turns.QUICK["trials"] * len(timing_turns.QUICK["pass_s"]) == len(lines)
    for trial in results["trials"]:
        for way in timing_turns.WAYS:
            assert trial[way]["original_ms"] > 0 and trial[way]["pruned_ms"] > 0 and trial[way]["seconds"] > 0
    page = timing_turns.render_markdown(results)
    changes = sorted(timing_turns._reduction(t["turns"]) for t in results["trials"])
    assert f"| in turns | 0.05 s | {statistics.median(changes):+.1%} | {changes[0]:+.1%} | {changes[-1]:+.1%} |" in page
    assert "| one after the other |" in page and "Command: `python benchmarks/timing_turns.py`" in page


def test_the_check_study_times_each_pair_both_ways_under_each_load_and_counts_false_misses():
    """Every trial times each pruned model against the original with the old check's turns and the new
    check's, on a quiet machine and with other busy processes (killed after); the page's counts are the
    trials' own: a false miss is the old point estimate, or the new interval's top, more than the slack
    below the reference."""
    from benchmarks import check_noise

    lines = []
    results = check_noise.run(check_noise.QUICK, log=lines.append)
    spec = check_noise.QUICK
    assert len(results["trials"]) == spec["trials"] * len(spec["loads"]) * len(spec["targets"])
    assert [t["load"] for t in results["trials"]] == [0, 0, 1, 1]
    for trial in results["trials"]:
        assert trial["old"]["turns"] == 16 and trial["new"]["turns"] >= 16
        for way in check_noise.WAYS:
            row = trial[way]
            assert row["low"] <= row["reduction"] <= row["high"] and row["seconds"] > 0
    reference = results["reference"]["0.5"]["reduction"]
    assert check_noise.false_miss("old", {"reduction": reference - 0.02, "high": reference}, reference)
    assert not check_noise.false_miss("new", {"reduction": reference - 0.02, "high": reference}, reference)
    page = check_noise.render_markdown(results)
    misses = sum(check_noise.false_miss("new", t["new"], reference) for t in results["trials"])
    assert f"new check (interval) {misses} of 4" in page and "Command: `python benchmarks/check_noise.py`" in page
    assert page.count("| -50% | old check (16 turns) |") == 2


def test_the_fresh_process_study_times_each_state_here_and_in_a_child():
    """Each process state (clean, after a search, fragmented heap) times its pair in this process and
    in a fresh one, alternating; the page's figures are the rows'."""
    from benchmarks import fresh_process

    lines = []
    results = fresh_process.run(fresh_process.QUICK, log=lines.append)
    rows = results["rows"]
    assert [(r["state"], r["where"]) for r in rows] == [(s, w) for s in fresh_process.STATES for w in ("here", "fresh")]
    assert len(lines) == len(rows) and all(r["low"] <= r["reduction"] <= r["high"] and r["turns"] >= 16 for r in rows)
    page = fresh_process.render_markdown(results)
    here = next(r for r in rows if r["state"] == "search" and r["where"] == "here")
    assert f"| after a search | in this process | {-here['reduction']:+.1%} |" in page
    assert "Command: `python benchmarks/fresh_process.py`" in page


def test_the_table_study_builds_both_ways_and_checks_them_on_the_same_timings():
    """Each trial builds a table with its layers timed one width after the other and one in turns,
    then checks both against one timing of the same random models: the measured latencies agree,
    the predictions do not have to."""
    from benchmarks import table_layers

    lines = []
    results = table_layers.run(table_layers.QUICK, log=lines.append)
    assert len(results["trials"]) == table_layers.QUICK["trials"] == len(lines)
    for trial in results["trials"]:
        first, second = (trial[way] for way in table_layers.WAYS)
        assert [s["measured_ms"] for s in first["samples"]] == [s["measured_ms"] for s in second["samples"]]
        assert first["original"]["measured_ms"] == second["original"]["measured_ms"]
        assert first["build_s"] > 0 and second["share_median"] is not None
    assert [t["order"][0] for t in results["trials"]] == ["sequential", "turns"]  # the order alternates
    page = table_layers.render_markdown(results)
    medians = ", ".join(f"{t['turns']['median']:.1%}" for t in results["trials"])
    assert f"| 1 | in turns with a reference layer | 2 | {medians} |" in page
    assert "Command: `python benchmarks/table_layers.py`" in page


def test_a_results_file_rewritten_mid_run_does_not_mark_the_commit_changed(tmp_path, monkeypatch):
    """A benchmark rewrites its results file after each model; the next rows ran the same code."""
    import subprocess

    from benchmarks import settings as presets

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "study.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "start")
    monkeypatch.setattr(presets, "ROOT", tmp_path)
    commit = presets._git_commit()
    assert commit and not commit.endswith("+changes")
    (tmp_path / "benchmarks" / "results" / "study.json").write_text('{"rows": [1]}')
    assert presets._git_commit() == commit
    (tmp_path / "code.py").write_text("x = 2\n")
    assert presets._git_commit() == commit + "+changes"
