"""Any task through `rlpruner.compress`: user metric, loss and forward, batches of any structure,
distillation of non-logit outputs, the example models, and the errors a user meets."""
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from masking import assert_close, masked_reference, outputs, random_removals, randomize
from torch.utils.data import DataLoader, TensorDataset

import rlpruner
from rlpruner import io
from rlpruner.distill import DistillConfig, LogitsKD, RegressionKD, output_kd
from rlpruner.errors import ConfigError, DataError
from rlpruner.importance import Calibration
from rlpruner.importance import get as get_importance
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.task import TaskError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import detection
import regression
import segmentation

FAST = CompressConfig(target=Target("flops", 0.3), rl=RLConfig(prune_filter_ratio=0.08, lr_epoch=2, sample_num=3),
                      kd=DistillConfig(epochs=1, batch_size=16, lr=0.01), final_epochs=1, latency_repeats=2,
                      latency_warmup=0, progress=False)


def user_top1(model, batches):
    hits = [(model(x).argmax(1) == y).sum() for x, y in batches]
    return float(sum(hits)) / sum(len(y) for _, y in batches)


def user_ce(outputs, batch):
    return F.cross_entropy(outputs, batch[1])


def _same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = [{k: v for k, v in r.to_dict().items() if k not in ("times", "latency_ms")} for r in a.records]
    assert strip == [{k: v for k, v in r.to_dict().items() if k not in ("times", "latency_ms")} for r in b.records]


def test_three_line_call_matches_the_config_path_bit_for_bit(tiny_splits, tiny_trained, tmp_path):
    """Classification through target=/metric=/loss= gives what CompressConfig gives."""
    config = FAST
    by_config = compress(tiny_trained, tiny_splits, config, out_dir=tmp_path / "a")
    by_call = compress(tiny_trained, tiny_splits, dataclasses.replace(config, target=Target("flops", 0.9)),
                       target="flops:0.3", metric=user_top1, loss=user_ce, out_dir=tmp_path / "b")
    _same(by_config, by_call)
    for key in ("val_acc", "test_acc", "flops", "params"):
        assert by_call.results["final"][key] == by_config.results["final"][key]
    assert by_call.results["metric"]["name"] == "user_top1" and by_config.results["metric"]["name"] == "top-1"


def test_user_loaders_of_any_batch_structure_compress_and_resume_identically(tiny_splits, tiny_trained, tmp_path):
    """Dict batches from plain DataLoaders, a user forward; a run cut after a step resumes to the
    same model as the uninterrupted one."""
    def as_dicts(dataset):
        return [{"pixels": x, "label": y} for x, y in (dataset[i] for i in range(len(dataset)))]

    data = (DataLoader(as_dicts(tiny_splits.train), batch_size=16, shuffle=True, drop_last=True),
            DataLoader(as_dicts(tiny_splits.val), batch_size=32), DataLoader(as_dicts(tiny_splits.test), batch_size=32))

    def forward(model, batch):
        return model(batch["pixels"])

    def loss(outputs, batch):
        return F.cross_entropy(outputs, batch["label"])

    def metric(model, batches):
        return sum(float((forward(model, b).argmax(1) == b["label"]).sum()) for b in batches) / sum(
            len(b["label"]) for b in batches)

    full = compress(tiny_trained, data, FAST, metric=metric, loss=loss, forward=forward, out_dir=tmp_path / "full")
    assert full.results["reached"]["flops"] >= 0.3 and len(full.records) >= 2
    assert full.results["distill_outputs"] == "logits"  # integer labels of the outputs' shape in the dict
    assert 0.0 <= full.results["final"]["test_acc"] <= 1.0

    class Stop(Exception):
        pass

    def stop_after_one(record):
        if record.step == 1:
            raise Stop

    with pytest.raises(Stop):
        compress(tiny_trained, data, FAST, metric=metric, loss=loss, forward=forward, out_dir=tmp_path / "cut",
                 on_step=stop_after_one)
    resumed = compress(tiny_trained, data, FAST, metric=metric, loss=loss, forward=forward, out_dir=tmp_path / "cut",
                       resume=True)
    _same(full, resumed)


@pytest.mark.parametrize("example, reached_metric", [(segmentation, "miou"), (detection, "detection_score"),
                                                     (regression, "neg_mse")])
def test_examples_prune_to_the_target_and_report_their_metric(example, reached_metric, tmp_path):
    results = example.main(["--small", "--out", str(tmp_path)])
    assert results["reached"]["flops"] >= 0.5 - 1e-9
    assert results["metric"] == {"name": reached_metric, "percent": False}
    for side in ("base", "final"):
        assert math.isfinite(results[side]["val_acc"]) and results[side]["params"] > 0
    assert results["final"]["params"] < results["base"]["params"]
    summary = (tmp_path / "summary.md").read_text()
    assert f"val {reached_metric}" in summary and "pt" not in summary.split(f"val {reached_metric}")[1].split("\n")[0]


@pytest.mark.parametrize("build, shape", [(lambda: segmentation.UNet(8), (2, 1, 24, 24)),
                                          (lambda: detection.PyramidDetector(8, 16), (2, 1, 32, 32)),
                                          (lambda: regression.regressor(8), (2, 1, 16, 16))])
def test_example_architectures_prune_exactly(build, shape):
    """Concatenating skips, a pyramid whose levels share heads, a flatten into a linear layer: the
    pruned model computes what the original computes with the removed channels masked out."""
    torch.manual_seed(0)
    model = randomize(build().eval())
    x = torch.randn(*shape)
    graph = rlpruner.trace(model, x)
    assert graph.prunable_groups()
    for seed in range(3):
        removals = random_removals(graph, seed)
        pruned = rlpruner.prune_channels(model, graph, removals, inplace=False)
        for got, want in zip(outputs(pruned, x), outputs(masked_reference(model, graph, removals), x), strict=True):
            assert_close(got, want)


def test_a_user_model_compressed_for_segmentation_saves_loads_and_exports(tmp_path):
    torch.manual_seed(0)
    model = rlpruner.create_model("segmentation:UNet", width=8)
    data = (DataLoader(segmentation.make_data(96, 0), batch_size=32, shuffle=True, drop_last=True),
            DataLoader(segmentation.make_data(32, 1), batch_size=32))
    result = compress(model, data, FAST, metric=segmentation.miou, loss=segmentation.seg_loss,
                      forward=segmentation.forward, out_dir=tmp_path)
    assert result.results["distill_outputs"] == "logits"  # per-pixel class scores against the dict's mask
    path = result.paths["model"]
    assert path.name == "model.rlp"
    loaded = io.load(path, allow_imports=["segmentation"])
    x = torch.rand(2, 1, 24, 24)
    assert torch.equal(loaded(x), result.model.eval()(x))
    pytest.importorskip("onnxruntime")
    io.export(loaded, tmp_path / "seg.onnx", "onnx", x[:1])  # verified against PyTorch before writing
    assert (tmp_path / "seg.onnx").stat().st_size > 0


def test_output_distillation_follows_the_outputs():
    config = DistillConfig()
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert output_kd(config, logits, (torch.zeros(4), labels)).name == "logits"
    assert output_kd(config, torch.randn(4, 3, 5, 5), {"x": 0, "mask": torch.zeros(4, 5, 5, dtype=torch.long)}
                     ).name == "logits"
    assert output_kd(config, torch.randn(4, 2), (torch.zeros(4), torch.randn(4, 2))).name == "mse"
    assert output_kd(config, (logits, torch.randn(4, 4)), (torch.zeros(4), labels)).name == "mse"
    assert output_kd(dataclasses.replace(config, outputs="smooth_l1"), logits, (None, labels)).name == "smooth_l1"
    # segmentation KL is the per-pixel mean: a (N, C, 1, 1) map gives the classifier's value
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    assert LogitsKD(2.0).loss(s[..., None, None].expand(4, 3, 5, 5), t[..., None, None].expand(4, 3, 5, 5), 1.0
                              ).item() == pytest.approx(LogitsKD(2.0).loss(s, t, 1.0).item(), rel=1e-5)
    # dicts of outputs: the mean over tensors of each one's MSE
    a, b = {"cls": torch.zeros(4, 3), "box": torch.zeros(4, 4)}, {"cls": torch.ones(4, 3), "box": 3 * torch.ones(4, 4)}
    assert RegressionKD("mse").loss(a, b, 1.0).item() == pytest.approx((1 + 9) / 2)


def test_a_metric_may_return_any_real_number_type():
    from rlpruner.task import checked_metric

    for value in (1, 0.5, np.float32(0.25), np.float64(-3.0), torch.tensor(0.75), torch.tensor([2.0])):
        assert checked_metric(value, "m") == pytest.approx(float(value))
    for bad in (True, "0.5", None, torch.tensor([1.0, 2.0]), np.float32("nan")):
        with pytest.raises(TaskError):
            checked_metric(bad, "m")


def test_taylor_importance_uses_the_task_loss():
    torch.manual_seed(0)
    model = regression.regressor(8).eval()
    graph = rlpruner.trace(model, torch.randn(1, 1, 16, 16))
    batch = {"x": torch.randn(8, 1, 16, 16), "y": torch.randn(8, 2)}

    def scores(loss):
        data = Calibration(batches=(batch,), forward=lambda m, b: m(b["x"]), loss=loss)
        return get_importance("taylor", data=data)(model, graph)

    mse = scores(lambda out, b: F.mse_loss(out, b["y"]))
    l1 = scores(lambda out, b: F.l1_loss(out, b["y"]))
    assert mse.keys() == l1.keys()
    assert any(not torch.allclose(torch.as_tensor(mse[k]), torch.as_tensor(l1[k])) for k in mse)
    # one-shot pruning takes the same calibration (a dict batch, the task's loss)
    before = sum(p.numel() for p in model.parameters())
    data = Calibration(batches=(batch,), forward=lambda m, b: m(b["x"]), loss=lambda out, b: F.mse_loss(out, b["y"]))
    small = rlpruner.prune(model, torch.randn(1, 1, 16, 16), 0.5, importance="taylor", data=data)
    assert sum(p.numel() for p in small.parameters()) < before


def _tensor_data(n=48):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(ds, batch_size=16, drop_last=True), DataLoader(ds, batch_size=16)


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": lambda m, b: float("nan")}, r"metric '<lambda>' returned nan"),
    ({"metric": lambda m, b: "good"}, "must return a number, got str"),
    ({"loss": lambda out, batch: F.cross_entropy(out, batch[1], reduction="none")},
     r"must return a scalar tensor, got \(\d+,\)"),
    ({"loss": lambda out, batch: out.sum() * float("inf")}, "must be finite"),
    ({"forward": lambda m, b: m.features(b[0]) if hasattr(m, "features") else b[0]}, "without calling the model"),
    ({"forward": lambda m, b: m(b[0]).argmax(1), "loss": lambda out, b: torch.tensor(0.0)}, "cannot be compared"),
    ({"metric": 3}, "metric must be a function"),
])
def test_a_task_that_cannot_work_fails_before_any_work(tiny_trained, tmp_path, kwargs, message):
    with pytest.raises(TaskError, match=message):
        compress(tiny_trained, _tensor_data(), FAST, out_dir=tmp_path, **kwargs)
    assert not (tmp_path / "state.json").exists()


def test_bad_data_is_named(tiny_trained, tmp_path):
    train_loader, val_loader = _tensor_data()
    with pytest.raises(DataError, match="validation loader yields no batches"):
        compress(tiny_trained, (train_loader, []), FAST, out_dir=tmp_path)
    with pytest.raises(DataError, match="training loader yields no batches"):
        compress(tiny_trained, (iter(()), val_loader), FAST, out_dir=tmp_path)
    dicts = [{"image": x, "label": y} for x, y in val_loader]
    with pytest.raises(TaskError, match="pass forward="):
        compress(tiny_trained, (dicts, dicts), FAST, out_dir=tmp_path)
    forward = lambda model, batch: model(batch["image"])  # noqa: E731
    with pytest.raises(TaskError, match=r"default loss is cross-entropy against batch\[1\].*dicts.*pass loss="):
        compress(tiny_trained, (dicts, dicts), FAST, forward=forward, out_dir=tmp_path)
    loss = lambda outputs, batch: F.cross_entropy(outputs, batch["label"])  # noqa: E731
    with pytest.raises(TaskError, match=r"default metric is top-1 .*pass metric="):
        compress(tiny_trained, (dicts, dicts), FAST, forward=forward, loss=loss, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="data must be"):
        compress(tiny_trained, "digits", FAST, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="kind:fraction"):
        compress(tiny_trained, (train_loader, val_loader), FAST, target="half", out_dir=tmp_path)
