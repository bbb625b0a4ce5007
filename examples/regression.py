"""Compress a regression CNN for its own metric (negative mean squared error).

    python examples/regression.py              # about a minute on 2 CPU cores
    python examples/regression.py --small      # seconds (what the tests run)

Each handwritten digit (scikit-learn's) is rotated by a random angle; the net predicts the angle's
sine and cosine. Higher is better for every rlpruner metric, so the metric is minus the MSE.
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rlpruner
from rlpruner.search import CompressConfig, RLConfig

SIZE = 16
SMALL = CompressConfig(rl=RLConfig(sample_num=3, lr_epoch=2, prune_filter_ratio=0.1), final_epochs=1,
                       progress=False)


def make_data(n: int, seed: int) -> TensorDataset:
    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(digits.images), (n,), generator=g)
    images = F.interpolate(torch.tensor(digits.images, dtype=torch.float32)[picks, None] / 16, size=SIZE,
                           mode="bilinear")
    angles = (torch.rand(n, generator=g) * 2 - 1) * math.pi / 2
    cos, sin = angles.cos(), angles.sin()
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1), torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = F.grid_sample(images, grid, align_corners=False)
    return TensorDataset(rotated, torch.stack([sin, cos], 1))


def regressor(width: int = 16) -> nn.Sequential:
    w = width
    layers = []
    for cin, cout in ((1, w), (w, 2 * w), (2 * w, 4 * w)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * w * (SIZE // 8) ** 2, 64), nn.ReLU(), nn.Linear(64, 2))


def mse_loss(outputs: torch.Tensor, batch) -> torch.Tensor:
    return F.mse_loss(outputs, batch[1])


def neg_mse(model: nn.Module, batches) -> float:
    errors = [F.mse_loss(model(x), y, reduction="sum") / y.numel() * len(y) for x, y in batches]
    return -float(sum(errors)) / sum(len(y) for _, y in batches)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", default="runs/example-regression")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, epochs = (200, 3) if args.small else (1500, 20)
    train_loader = DataLoader(make_data(n, 0), batch_size=32, shuffle=True, drop_last=True)
    val_loader = DataLoader(make_data(n // 4, 1), batch_size=64)
    model = regressor(8 if args.small else 16)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):  # the user's own training
        for x, y in train_loader:
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()

    config = SMALL if args.small else None  # None: the default search
    result = rlpruner.compress(model, (train_loader, val_loader), config, target="flops:0.5",
                               metric=neg_mse, loss=mse_loss, out_dir=args.out, overwrite=True)

    base, final = result.results["base"], result.results["final"]
    for key in ("params", "flops", "latency_ms", "val_acc"):
        print(f"{'-MSE' if key == 'val_acc' else key:>10}: {base[key]:12,.4g} -> {final[key]:12,.4g}")
    return result.results


if __name__ == "__main__":
    main()
