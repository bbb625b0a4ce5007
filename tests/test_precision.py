"""Mixed precision and channels_last: resolved per device, applied to every forward of a run, and
off by default on CPU (so CPU runs stay bit-identical)."""
from __future__ import annotations

import copy

import pytest
import torch

import rlpruner
from rlpruner.distill import DistillConfig
from rlpruner.errors import ConfigError
from rlpruner.precision import Precision
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.task import Task
from rlpruner.train import fit_epoch, make_optimizer, TrainConfig


def test_auto_is_off_on_cpu_and_bad_modes_are_refused():
    cpu = Precision.resolve("auto", None, torch.device("cpu"))
    assert cpu.dtype is None and not cpu.channels_last and not cpu.active
    task = Task()
    assert cpu.apply(task) is task
    assert Precision.resolve("bf16", True, torch.device("cpu")).name == "amp bf16, channels_last"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Precision.resolve("fp16", None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="amp must be one of"):
        Precision.resolve("int8", None, torch.device("cpu"))
    with pytest.raises(ConfigError, match="amp must be one of"):
        CompressConfig(amp="half")


def test_applied_forward_autocasts_converts_the_model_and_returns_float32(tiny_splits, tiny_trained):
    model, full = copy.deepcopy(tiny_trained).eval(), copy.deepcopy(tiny_trained).eval()
    task = Precision.resolve("bf16", True, torch.device("cpu")).apply(Task())
    batch = next(iter(torch.utils.data.DataLoader(tiny_splits.val, batch_size=8)))
    with torch.no_grad():
        out = task.forward(model, batch)
        reference = full(batch[0])
    assert out.dtype == torch.float32
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, reference, atol=0.02 * reference.abs().max().item())  # bf16: close, not equal
    assert not torch.equal(out, reference)


def test_fit_epoch_with_a_gradient_scaler_trains(tiny_splits, tiny_trained):
    model = copy.deepcopy(tiny_trained)
    optimizer = make_optimizer(model, TrainConfig(lr=0.01))
    loader = torch.utils.data.DataLoader(tiny_splits.train, batch_size=16)
    before = [p.detach().clone() for p in model.parameters()]

    def batch_loss(m, batch):
        out = m(batch[0])
        return torch.nn.functional.cross_entropy(out, batch[1]), out

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    fit = fit_epoch(model, loader, optimizer, None, batch_loss, "cpu", progress=False, scaler=scaler)
    assert fit["loss"] > 0 and scaler.get_scale() > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_compress_in_bf16_channels_last_on_cpu_saves_a_model_that_reloads(tiny_splits, tiny_trained, tmp_path):
    config = CompressConfig(target=Target("flops", 0.3), rl=RLConfig(prune_filter_ratio=0.1, lr_epoch=1, sample_num=2),
                            kd=DistillConfig(epochs=1, batch_size=16, max_batches=3), final_epochs=1,
                            latency_repeats=1, latency_warmup=0, progress=False, amp="bf16", channels_last=True)
    result = compress(tiny_trained, tiny_splits, config, out_dir=tmp_path)
    assert result.results["precision"] == "amp bf16, channels_last" and result.results["world_size"] == 1
    assert result.results["reached"]["flops"] >= 0.3
    loaded = rlpruner.load(tmp_path / "model.rlp")
    x = tiny_splits.example_inputs(4)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model.float()(x), atol=1e-5)


def test_train_in_bf16_learns_and_bad_amp_is_refused(tiny_splits):
    from rlpruner.models import create_model
    from rlpruner.train import train

    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    result = train(model, tiny_splits, TrainConfig(epochs=3, lr=0.05, batch_size=16, amp="bf16", channels_last=True,
                                                   progress=False))
    assert result.best_val["top1"] > 0.5
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig(amp="half")
