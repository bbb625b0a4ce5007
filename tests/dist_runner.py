"""`rlpruner` under torchrun, with a fault on one rank (tests/test_distributed.py).

    torchrun --nproc-per-node 2 tests/dist_runner.py [--kill RANK:N] -- compress ARGS...
    torchrun --nproc-per-node 2 tests/dist_runner.py --api OUT_DIR

`--kill RANK:N`: the process of rank RANK kills itself (SIGKILL) when it starts scoring its Nth
candidate, as a crashed or pre-empted worker would. Otherwise this is `python -m rlpruner ARGS`.
`--api`: `rlpruner.compress` from Python with the user's own loaders of dict batches, metric, loss
and forward (no rlpruner dataset), as a user's script under torchrun would call it.
"""
from __future__ import annotations

import os
import signal
import sys

from rlpruner.cli import entry
from rlpruner.search import step as step_module


def api_run(out_dir: str) -> None:
    """A regression-style task on dict batches: the user's loaders, metric (negative MSE: not a
    ratio of counts, so rank 0 evaluates it), loss and forward."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    import rlpruner
    from rlpruner.distill import DistillConfig
    from rlpruner.search import CompressConfig, RLConfig

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(192, 3, 8, 8, generator=generator)
    targets = images.mean(dim=(1, 2, 3), keepdim=False)[:, None] * torch.tensor([1.0, -2.0])
    samples = [{"image": x, "target": y} for x, y in zip(images, targets)]
    train = DataLoader(samples[:128], batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    val = DataLoader(samples[128:], batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))

    def forward(net, batch):
        return net(batch["image"])

    def loss(outputs, batch):
        return nn.functional.mse_loss(outputs, batch["target"])

    def neg_mse(net, batches):
        return -float(sum(nn.functional.mse_loss(net(b["image"]), b["target"], reduction="sum") for b in batches))

    config = CompressConfig(rl=RLConfig(prune_filter_ratio=0.1, lr_epoch=2, sample_num=3, score_samples=32,
                                        bn_samples=32, calibration_samples=32),
                            kd=DistillConfig(epochs=1, batch_size=16), final_epochs=1, latency_repeats=1,
                            progress=False)
    rlpruner.compress(model, (train, val), config, target="flops:0.3", metric=neg_mse, loss=loss, forward=forward,
                      out_dir=out_dir, overwrite=True)


def arm(rank: int, nth: int) -> None:
    if int(os.environ.get("RANK", "0")) != rank:
        return
    real, calls = step_module.score, [0]

    def score(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    step_module.score = score


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--api"]:
        api_run(argv[1])
        sys.exit(0)
    if argv[:1] == ["--kill"]:
        rank, nth = argv[1].split(":")
        arm(int(rank), int(nth))
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    entry(argv)
