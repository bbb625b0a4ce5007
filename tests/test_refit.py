"""Refit: the original model pruned afresh, one-shot, to the widths a search found, in place of the
model the steps cut (rlpruner.search.refit)."""
import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from masking import masked_reference
from rlpruner import importance
from rlpruner.distill import DistillConfig
from rlpruner.errors import PruningError
from rlpruner.graph import trace
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.search.context import prepare
from rlpruner.search.refit import refit, refit_removals


def _config(**overrides):
    base = CompressConfig(
        target=Target("flops", 0.3), rl=RLConfig(prune_filter_ratio=0.06, lr_epoch=2, sample_num=3),
        kd=DistillConfig(epochs=1, batch_size=16, lr=0.01), post_train_period=0, final_epochs=0,
        latency_repeats=2, latency_warmup=0, progress=False)
    return dataclasses.replace(base, **overrides)


def _widths(model, example):
    return {g.name: g.size for g in trace(model, example).prunable_groups()}


def test_a_refit_run_fine_tunes_the_original_cut_to_the_searched_widths(tiny_splits, tiny_trained, tmp_path):
    before = copy.deepcopy(tiny_trained.state_dict())
    lines = []
    stepwise = _config(post_train_period=1)  # KD after every step: the steps' model is trained, the refit is not
    searched = compress(tiny_trained, tiny_splits, stepwise, out_dir=tmp_path / "searched", evaluate_test=False)
    fitted = compress(tiny_trained, tiny_splits, dataclasses.replace(stepwise, refit=True),
                      out_dir=tmp_path / "refit", evaluate_test=False, log=lines.append)
    example = tiny_splits.example_inputs()
    # the same search (refit changes only the final phase), so the same widths, FLOPs and params
    assert fitted.results["widths"] == searched.results["widths"]
    assert _widths(fitted.model, example) == {n: w for n, (_, w) in fitted.results["widths"].items()}
    for key in ("flops", "params"):
        assert fitted.results["final"][key] == searched.results["final"][key]
    # ... but another model: the original's weights, not the steps' cut of it
    assert any(not torch.equal(a, b) for a, b in zip(fitted.model.state_dict().values(),
                                                     searched.model.state_dict().values()))
    record = fitted.results["refit"]
    assert record["searched_val"] == pytest.approx(searched.results["final"]["val_acc"])
    assert record["refit_val"] == pytest.approx(fitted.results["final"]["val_acc"])  # no final epochs
    assert any(line.startswith("refit:") and "before the final fine-tune" in line for line in lines)
    assert searched.results["refit"] is None
    summary = (tmp_path / "refit" / "summary.md").read_text()
    assert "Refit: the final fine-tune started from the original model" in summary
    assert "Refit" not in (tmp_path / "searched" / "summary.md").read_text()
    assert all(torch.equal(before[k], v) for k, v in tiny_trained.state_dict().items())  # input untouched


def test_the_refit_model_is_the_original_with_its_least_important_units_masked_out(tiny_splits, tiny_trained,
                                                                                      tmp_path):
    """bn_samples=0: no BatchNorm re-estimation, so the refit model must compute exactly what the
    original computes with the removed units masked out, and those are the least important ones."""
    config = _config(rl=RLConfig(importance="l2", bn_samples=0, prune_filter_ratio=0.06))
    ctx = prepare(tiny_trained, tiny_splits, config, Path(tmp_path), lambda line: None)
    widths = {n: max(1, size // 2) for n, size in ctx.original_sizes.items()}
    model = refit(ctx, widths)
    example = tiny_splits.example_inputs()
    assert _widths(model, example) == widths
    graph = trace(ctx.original, example)
    removals = refit_removals(ctx, copy.deepcopy(ctx.original), ctx.graph_of(ctx.original), widths)
    scores = importance.get("l2")(ctx.original, graph)
    for name, units in removals.items():
        kept = np.setdiff1d(np.arange(ctx.original_sizes[name]), units)
        assert len(units) == ctx.original_sizes[name] - widths[name]
        assert scores[name][units].max() <= scores[name][kept].min()
    reference = masked_reference(ctx.original, graph, removals).eval()
    x = torch.randn(4, *example.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_refit_refuses_widths_the_original_cannot_have(tiny_splits, tiny_trained, tmp_path):
    ctx = prepare(tiny_trained, tiny_splits, _config(), Path(tmp_path), lambda line: None)
    name = ctx.names[0]
    for width in (0, ctx.original_sizes[name] + 1):
        with pytest.raises(PruningError, match=f"refit: group {name!r} cannot keep {width}"):
            refit(ctx, {**ctx.original_sizes, name: width})


def test_cli_refit_reaches_the_config():
    import argparse

    from rlpruner.commands import compress as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    config = command.config_from_args(parser.parse_args(["resnet8", "--refit", "--post-train-period", "0"]))
    assert config.refit and config.post_train_period == 0
    assert not command.config_from_args(parser.parse_args(["resnet8"])).refit
