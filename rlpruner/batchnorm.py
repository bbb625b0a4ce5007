"""BatchNorm recalibration ("adaptive BN"): re-estimate running statistics after pruning.

Right after channels are removed, a network's BatchNorm layers still hold the statistics of the
unpruned network, so its accuracy sits near chance and tells little about how good the pruned
structure is. Re-estimating the statistics on a few training batches (EagleEye, ECCV'20) makes a
candidate's score predict its accuracy after recovery far better. Only BN buffers change: no weight
is trained.

`recalibrate` gives every BN layer fresh buffers before it writes them, so a structural copy that
shares its tensors with another model (a search candidate) never changes that model.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BN]:
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[Any],
                forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on `batches` (on the model's
    device) as a cumulative average; the rest of the model runs in eval mode. A batch is the model's
    input, or anything `forward(model, batch)` runs the model on. Returns `model`, in eval mode. A
    model without BatchNorm, or no batch at all, leaves the statistics as they were."""
    layers = batchnorm_layers(model)
    if not layers:
        return model.eval()
    model.eval()
    saved_momentum, saved = [], [(bn.running_mean, bn.running_var, bn.num_batches_tracked) for bn in layers]
    for layer in layers:
        # new tensors, not in-place resets: the old buffers may be shared with another model
        layer.running_mean = torch.zeros_like(layer.running_mean)
        layer.running_var = torch.ones_like(layer.running_var)
        layer.num_batches_tracked = torch.zeros_like(layer.num_batches_tracked)
        saved_momentum.append(layer.momentum)
        layer.momentum = None  # cumulative moving average: every batch counts equally
        layer.train()
    seen = 0
    try:
        for batch in batches:
            model(batch) if forward is None else forward(model, batch)
            seen += 1
    finally:
        for layer, momentum, old in zip(layers, saved_momentum, saved):
            layer.momentum = momentum
            layer.eval()
            if not seen:  # no batch (recalibration off, or an interrupted first batch): the old statistics
                layer.running_mean, layer.running_var, layer.num_batches_tracked = old
    return model
