"""Training loop: schedule, config checks, learning on digits, determinism, best-on-validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rlpruner.data import get_dataset, make_loaders
from rlpruner.errors import ConfigError
from rlpruner.train import (TrainConfig, evaluate, lr_factor, make_optimizer, make_scheduler, resolve_device,
                            train, train_one_epoch)



@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", image_size=8)


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine():
    factors = [lr_factor(step, total_steps=110, warmup_steps=10) for step in range(110)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.001
    assert lr_factor(100, 100, 0, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_scheduler_steps_per_iteration():
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(model, TrainConfig(lr=0.2))
    scheduler = make_scheduler(optimizer, epochs=2, steps_per_epoch=5, warmup_epochs=1)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:5] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.2]) and lrs[5] == pytest.approx(0.2)
    assert lrs[9] < lrs[6] < lrs[5]
    # weight decay only on weight matrices, not on biases
    assert [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]


@pytest.mark.parametrize("option, value", [("epochs", 0), ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")),
                                           ("batch_size", 0), ("momentum", 1.0), ("weight_decay", -1e-4),
                                           ("warmup_epochs", 99), ("label_smoothing", 1.0)])
def test_config_rejects_bad_numbers(option, value):
    with pytest.raises(ConfigError, match=option):
        TrainConfig(**{option: value})


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_training_learns_digits_deterministically_and_keeps_the_best_on_validation(digits):
    config = TrainConfig(epochs=4, lr=0.1, batch_size=64, seed=1, warmup_epochs=0.5)
    epochs = []
    model = tiny_cnn()
    result = train(model, digits, config, on_epoch=epochs.append)
    assert [e.epoch for e in epochs] == [1, 2, 3, 4] and result.history == epochs
    assert result.test["top1"] > 0.60  # chance is 10%
    best = max(epochs, key=lambda e: (e.val_top1, -e.val_loss))
    assert result.best_epoch == best.epoch and result.best_val["top1"] == best.val_top1
    # the model holds the best epoch's weights: re-evaluating it gives the recorded validation score
    loaders = make_loaders(digits, 64)
    assert evaluate(model, loaders.val)["top1"] == pytest.approx(best.val_top1)
    again = tiny_cnn()
    train(again, digits, config)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_train_one_epoch_takes_a_custom_loss_that_sees_the_inputs(digits):
    model = tiny_cnn()
    loaders = make_loaders(digits, 128, augment=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    seen = []

    def loss_fn(outputs, targets, inputs):
        seen.append(inputs.shape[0])
        return nn.functional.cross_entropy(outputs, targets)

    stats = train_one_epoch(model, loaders.train, optimizer, None, loss_fn, "cpu", progress=False)
    assert sum(seen) == len(loaders.train) * 128 and stats["loss"] > 0 and 0 <= stats["top1"] <= 1


def test_evaluate_top5_with_few_classes_and_diverging_loss(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = torch.randn(10, 1, 8, 8)
    loader = [(x, torch.zeros(10, dtype=torch.long))]
    scores = evaluate(model, loader)
    assert scores["top5"] == 1.0 and scores["samples"] == 10 and model.training
    with pytest.raises(ConfigError, match="lower the learning rate"):
        train(tiny_cnn(), digits, TrainConfig(epochs=1, lr=1e30, batch_size=256))
