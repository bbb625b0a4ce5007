"""Knowledge-distillation loss and recovery loop."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rlpruner.distill import DistillConfig, distill, kd_loss
from rlpruner.errors import ConfigError


def _manual_kd(s, t, y, temperature, weight):
    p_t = F.softmax(t / temperature, dim=1)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum(1).mean()
    return (1 - weight) * temperature ** 2 * kl + weight * F.cross_entropy(s, y)


def test_kd_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    for temperature, weight in [(2.0, 0.25), (1.0, 0.0), (4.0, 1.0), (3.0, 0.5)]:
        assert kd_loss(s, t, y, temperature, weight).item() == pytest.approx(
            _manual_kd(s, t, y, temperature, weight).item(), rel=1e-5)


def test_kd_loss_is_pure_cross_entropy_when_student_equals_teacher():
    torch.manual_seed(1)
    s, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert kd_loss(s, s.clone(), y).item() == pytest.approx(0.25 * F.cross_entropy(s, y).item(), rel=1e-5)


def _blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    x = centres[y] + 0.6 * torch.randn(n, 4, generator=g)
    return x.view(n, 1, 2, 2), y


def _net():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def _loaders():
    train, val = TensorDataset(*_blobs(256, 0)), TensorDataset(*_blobs(96, 1))
    # no `test` attribute: distillation must never need one
    return SimpleNamespace(train=DataLoader(train, batch_size=32, shuffle=True,
                                            generator=torch.Generator().manual_seed(0)),
                           val=DataLoader(val, batch_size=96))


def test_distill_recovers_a_damaged_student_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    loaders = _loaders()
    teacher = _net()
    distill(teacher, _net(), loaders, DistillConfig(epochs=8, lr=0.1, ce_weight=1.0))  # CE only: plain training
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _net()
    result = distill(student, teacher, loaders, DistillConfig(epochs=6, lr=0.1))
    assert result.teacher_val > 0.8
    assert result.student_val > 0.8 and len(result.history) == 6
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert not student.training


def test_distill_keeps_the_best_validation_epoch():
    torch.manual_seed(0)
    loaders = _loaders()
    student = _net()
    result = distill(student, _net(), loaders, DistillConfig(epochs=4, lr=0.5, ce_weight=1.0))
    best = max(h["val_top1"] for h in result.history)
    assert result.student_val == best
    from rlpruner.train import evaluate
    assert evaluate(student, loaders.val, "cpu")["top1"] == pytest.approx(best)


def test_zero_epochs_only_measures():
    loaders = _loaders()
    student = _net()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = distill(student, _net(), loaders, DistillConfig(epochs=0), teacher_val=0.5)
    assert result.teacher_val == 0.5 and result.best_epoch == 0 and result.history == []
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("option, value", [("temperature", 0.0), ("ce_weight", 1.5), ("lr", -1.0),
                                           ("epochs", -1), ("lr", math.inf)])
def test_config_rejects_bad_values(option, value):
    with pytest.raises(ConfigError, match=option):
        DistillConfig(**{option: value})
