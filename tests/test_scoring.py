"""How the search scores candidates: BatchNorm recalibration, stratified samples, judges, equal cost."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import rlpruner
from rlpruner.batchnorm import recalibrate
from rlpruner.data import get_dataset
from rlpruner.data.base import stratified_subset
from rlpruner.distill import DistillConfig, LogitsKD, RegressionKD
from rlpruner.errors import ConfigError
from rlpruner.importance import get
from rlpruner.models import create_model
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.search.data import SplitsSource, prepare_data
from rlpruner.search.judges import JUDGES, Evidence
from rlpruner.task import Task
from rlpruner.surgery import apply_slices
from rlpruner.train import TrainConfig, train


def test_recalibration_gives_the_batch_statistics_and_leaves_a_sharing_parent_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4))
    net.eval()
    graph = rlpruner.trace(net, torch.randn(1, 3, 8, 8))
    parent_stats = {k: v.clone() for k, v in net.state_dict().items()}
    copy = apply_slices(net, graph.slices({graph.prunable_groups()[0].name: [0, 2]}), inplace=False)
    batches = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(3)]
    recalibrate(copy, batches)
    # the parent shares every unchanged tensor with the copy, and none of them moved
    assert all(torch.equal(parent_stats[k], v) for k, v in net.state_dict().items())
    # cumulative average over the batches: exactly the mean of the per-batch statistics
    x = torch.cat(batches)
    pre_bn = copy[0](x)
    per_batch_means = torch.stack([copy[0](b).mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(copy[1].running_mean, per_batch_means, atol=1e-5)
    assert not torch.allclose(copy[1].running_mean, torch.zeros(4))
    assert pre_bn.shape[1] == 4 and not copy.training and copy[1].momentum == 0.1


def test_recalibration_is_a_no_op_without_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    recalibrate(net, [torch.randn(2, 3, 8, 8)])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_recalibration_without_batches_keeps_the_statistics():
    """bn_samples=0 means "off": the trained statistics stay, they are not reset to mean 0, var 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].running_mean.uniform_(1, 2)
        net[1].running_var.uniform_(3, 4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    out = net.eval()(x)
    recalibrate(net, [])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net(x), out) and not net.training


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    picked = stratified_subset(labels, 20, seed=3)
    assert len(picked) == 20 and len(set(picked)) == 20
    assert np.bincount(labels[picked]).tolist() == [12, 6, 2]
    assert picked.tolist() == stratified_subset(labels, 20, seed=3).tolist()
    assert picked.tolist() != stratified_subset(labels, 20, seed=4).tolist()
    assert stratified_subset(labels, 500, seed=0).tolist() == list(range(100))


def test_variance_criterion_prefers_channels_that_vary():
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=True))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 5.0]]).view(3, 2, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, 7.0, 0.0]))  # channel 1 is a constant: no variance at all
    head = nn.Sequential(net, nn.Conv2d(3, 2, 1))
    graph = rlpruner.trace(head, torch.randn(1, 2, 4, 4))
    x = torch.randn(8, 2, 4, 4)
    scores = get("variance", data=(x, torch.zeros(8)))(head, graph)[graph.prunable_groups()[0].name]
    assert np.argsort(scores).tolist() == [1, 0, 2]


@pytest.mark.parametrize("distiller, shape", [(LogitsKD(), (5, 3)), (LogitsKD(), (5, 3, 4, 4)),
                                              (RegressionKD("mse"), (5, 2)), (RegressionKD("smooth_l1"), (5, 2))])
def test_kl_judge_is_zero_for_the_reference_and_negative_otherwise(distiller, shape):
    ref = [torch.randn(*shape)]
    judge = JUDGES.get("kl")
    assert judge.score(Evidence(0.5, ref, ref, distiller=distiller)) == pytest.approx(0.0, abs=1e-6)
    assert judge.score(Evidence(0.5, [ref[0] + torch.randn(*shape)], ref, distiller=distiller)) < 0
    assert JUDGES.get("accuracy").score(Evidence(0.5)) == 0.5


def test_loss_judge_is_minus_the_mean_loss_and_prefers_the_more_confident_right_answer():
    labels = torch.tensor([0, 1, 1])
    batches = [(torch.zeros(2, 1), labels[:2]), (torch.zeros(1, 1), labels[2:])]
    sure = [torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([[0.0, 4.0]])]
    unsure = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0]])]  # the same top-1
    judge = JUDGES.get("loss")
    scores = [judge.score(Evidence(1.0, out, batches=batches, task=Task())) for out in (sure, unsure)]
    expected = -torch.nn.functional.cross_entropy(torch.cat(sure), labels).item()  # weighted by batch size
    assert scores[0] == pytest.approx(expected, rel=1e-6)
    assert scores[0] > scores[1]


@pytest.fixture(scope="module")
def trained():
    splits = get_dataset("synthetic", image_size=8, in_channels=1, num_classes=3, samples_per_class=30,
                         val_fraction=0.3)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16, 16])
    train(model, splits, TrainConfig(epochs=3, lr=0.05, batch_size=16))
    return model, splits


def _config(**rl):
    return CompressConfig(target=Target("flops", 0.5), rl=RLConfig(**{"prune_filter_ratio": 0.1, "lr_epoch": 2,
                                                                      "sample_num": 3, **rl}),
                          kd=DistillConfig(epochs=0), final_epochs=0, latency_repeats=1, latency_warmup=0,
                          progress=False)


def test_candidates_of_a_step_remove_equal_flops(trained, tmp_path, monkeypatch):
    from rlpruner.search import step as step_module

    model, splits = trained
    removed: dict[int, list[int]] = {}
    real_score = step_module.score

    def watch(ctx, parent, plan, counts, pd, reference=None):
        candidate = real_score(ctx, parent, plan, counts, pd, reference)
        now = plan.graph.count()[1]
        removed.setdefault(int(plan.sizes.sum()), []).append(now - candidate.flops)
        return candidate

    monkeypatch.setattr(step_module, "score", watch)
    result = compress(model, splits, _config(), out_dir=tmp_path, evaluate_test=False)
    assert result.results["reached"]["flops"] >= 0.5
    steps = list(removed.values())
    steps[-1] = steps[-1][:-1]  # the last step's final call rescored the candidate trimmed to the target
    assert len(steps) >= 2 and all(len(r) >= 6 for r in steps)
    assert max(max(r) / min(r) for r in steps) < 1.2  # within a step: a channel's FLOPs apart at most

    equal_channels = {}

    def watch_channels(ctx, parent, plan, counts, pd, reference=None):
        equal_channels.setdefault(int(plan.sizes.sum()), set()).add(int(counts.sum()))
        return real_score(ctx, parent, plan, counts, pd, reference)

    monkeypatch.setattr(step_module, "score", watch_channels)
    compress(model, splits, _config(equal_cost=False), out_dir=tmp_path / "channels", evaluate_test=False)
    assert all(len(c) <= 2 for c in equal_channels.values())  # one budget (and a trimmed rescore)


def test_records_say_how_candidates_were_judged_and_why_the_guard_fired(trained, tmp_path):
    model, splits = trained
    lines = []
    config = dataclasses.replace(_config(guard_threshold=1e-6, guard_retries=1, judge="kl", bn_samples=32,
                                         score_samples=16))
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False, log=lines.append)
    first = result.records[0]
    assert (first.judge, first.score_samples, first.bn_samples) == ("kl", 16, 32)
    assert "[kl on 16 images, BN 32]" in "\n".join(lines)
    fired = [r for r in result.records if r.guard_resets]
    assert fired and all("below the previous pruned model" in r.guard_reason for r in fired)
    assert all(r.guard_reason == "" for r in result.records if not r.guard_resets)


def test_the_loss_judge_scores_candidates_with_the_tasks_own_loss(trained, tmp_path):
    model, splits = trained
    seen = []

    def loss(outputs, batch):  # a user's loss: constant, so every candidate's reward is minus it
        seen.append(len(batch[1]))
        return outputs.sum() * 0.0 + 7.0

    config = dataclasses.replace(_config(judge="loss", importance="l1", score_samples=16, guard_threshold=None))
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False, loss=loss)
    assert result.records and all(r.judge == "loss" for r in result.records)
    assert all(r.reward == pytest.approx(-7.0) for r in result.records)
    assert 16 in seen  # called on the scoring subset's batches (one batch of 16 images)


def test_a_probe_trains_a_private_copy_of_a_candidate_towards_the_teacher(trained):
    from rlpruner.distill import output_kd, probe

    model, splits = trained
    model.eval()
    graph = rlpruner.trace(model, splits.example_inputs())
    group = graph.prunable_groups()[1]
    candidate = apply_slices(model, graph.slices({group.name: np.arange(group.size // 2)}), inplace=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.stack([splits.train[i][0] for i in range(32)])
    batches = [(images, torch.tensor([splits.train[i][1] for i in range(32)]))]
    with torch.no_grad():
        references = [model(images)]
    config = DistillConfig(lr=0.05)
    kd = output_kd(config, references[0], batches[0])

    def kd_distance(net):
        with torch.no_grad():
            return kd.distance(net.eval()(images), references[0])

    start = kd_distance(recalibrate(candidate, batches, Task().forward))
    tuned = probe(candidate, batches, references, config, Task(), None, 5)
    assert tuned is not candidate and kd_distance(tuned) < start
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # shared tensors untouched
    assert kd_distance(candidate) == pytest.approx(start)


def test_a_probed_search_says_so_in_its_records_and_log(trained, tmp_path):
    model, splits = trained
    lines = []
    config = _config(probe_steps=1, bn_samples=32, guard_threshold=None)
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False, log=lines.append)
    assert all(r.probe_steps == 1 for r in result.records)
    assert "BN 32, probe 1]" in "\n".join(lines)
    assert result.results["timing"]["probe_s"] > 0
    with pytest.raises(ConfigError, match="probe_steps"):
        RLConfig(probe_steps=1, bn_samples=0)


def test_patience_ends_a_step_once_the_distribution_stops_improving(trained, tmp_path, monkeypatch):
    from rlpruner.search import step as step_module

    model, splits = trained
    calls = {"patient": 0, "all": 0}
    real_score = step_module.score

    def counting(key):
        def watch(*args, **kwargs):
            calls[key] += 1
            return real_score(*args, **kwargs)
        return watch

    base = dict(lr_epoch=8, sample_num=2, guard_threshold=None)
    monkeypatch.setattr(step_module, "score", counting("all"))
    full = compress(model, splits, _config(patience=None, **base), out_dir=tmp_path / "all", evaluate_test=False)
    monkeypatch.setattr(step_module, "score", counting("patient"))
    patient = compress(model, splits, _config(patience=1, **base), out_dir=tmp_path / "p", evaluate_test=False)
    steps = len(full.records)
    assert calls["all"] >= steps * 8 * 2       # every round of every step (plus trims)
    assert calls["patient"] < calls["all"]     # some step stopped early...
    assert calls["patient"] >= len(patient.records) * 2 * 2  # ...but never before two rounds


def test_trim_gives_back_coarse_chunks_while_the_goal_holds():
    from rlpruner.search.step import _give_back

    # group 0 units cost 10, group 1 units cost 1; the goal: remove at least 21 of a total 100
    def kept(counts):
        removed = 10 * counts[0] + counts[1]
        return None if removed < 21 else 100 - removed

    assert _give_back(np.array([3, 2]), np.array([5, 5]), 1, kept).tolist() == [2, 1]  # exactly 21
    assert _give_back(np.array([2, 1]), np.array([5, 5]), 1, kept).tolist() == [2, 1]  # nothing to give
    # chunks of 2 with a partial first chunk of 1 (capacity 5): 3 units -> 1 -> 0
    assert _give_back(np.array([0, 3]), np.array([5, 5]), 2, lambda c: None if c[1] < 1 else -c[1]).tolist() == [0, 1]


def test_candidates_can_be_scored_on_training_images_the_bn_recalibration_does_not_use(trained, tmp_path):
    model, splits = trained
    config = _config(score_split="train", score_samples=24, bn_samples=16)
    data = prepare_data(SplitsSource(splits), config, torch.device("cpu"), Task(), model)
    scored = torch.cat([x for x, _ in data.score_batches])
    bn = torch.cat([x for x, _ in data.bn_batches])
    train = torch.stack([splits.train[i][0] for i in range(len(splits.train))])
    in_train = lambda rows: [int(torch.nonzero((train == row).flatten(1).all(1))[0]) for row in rows]  # noqa: E731
    score_ids, bn_ids = in_train(scored), in_train(bn)
    assert len(score_ids) == 24 and not set(score_ids) & set(bn_ids)     # training images, none of the BN ones
    labels = torch.cat([y for _, y in data.score_batches])
    assert torch.bincount(labels).tolist() == [8, 8, 8]                   # class-stratified
    lines = []
    result = compress(model, splits, config, out_dir=tmp_path, evaluate_test=False, log=lines.append)
    assert all(r.score_split == "train" and r.score_samples == 24 for r in result.records)
    assert "[accuracy on 24 training images, BN 16]" in "\n".join(lines)
    with pytest.raises(ConfigError, match="score_samples must be a number of images when score_split is 'train'"):
        RLConfig(score_split="train", score_samples=None)
    with pytest.raises(ConfigError, match="score_split must be one of val, train"):
        RLConfig(score_split="test")
