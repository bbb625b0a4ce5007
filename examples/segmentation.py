"""Compress a U-Net-style segmentation net for its own metric (mIoU), with dict batches.

    python examples/segmentation.py              # about a minute on 2 CPU cores
    python examples/segmentation.py --small      # seconds (what the tests run)

The data are handwritten digits (scikit-learn's, no download) pasted on noise; every pixel is
labelled background (0) or its digit's class + 1, so the net segments 11 classes.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader

import rlpruner
from rlpruner.distill import DistillConfig
from rlpruner.search import CompressConfig, RLConfig

SIZE, CLASSES = 24, 11
SMALL = CompressConfig(rl=RLConfig(sample_num=3, lr_epoch=2, prune_filter_ratio=0.1), final_epochs=1,
                       progress=False)  # a few seconds: for the tests


def make_data(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    glyphs = F.interpolate(torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, size=12, mode="bilinear")
    samples = []
    for k in torch.randint(len(glyphs), (n,), generator=g).tolist():
        image, mask = torch.rand(1, SIZE, SIZE, generator=g) * 0.4, torch.zeros(SIZE, SIZE, dtype=torch.long)
        y, x = torch.randint(SIZE - 12, (2,), generator=g).tolist()
        ink = glyphs[k, 0] > 0.3
        image[0, y:y + 12, x:x + 12][ink] = glyphs[k, 0][ink]
        mask[y:y + 12, x:x + 12][ink] = int(digits.target[k]) + 1
        samples.append({"image": image, "mask": mask})
    return samples


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """Encoder-decoder whose decoder concatenates the encoder's features (skip connections)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), block(2 * w, w)
        self.head = nn.Conv2d(w, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def forward(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["image"])


def seg_loss(outputs: torch.Tensor, batch: dict) -> torch.Tensor:
    return F.cross_entropy(outputs, batch["mask"])


def miou(model: nn.Module, batches) -> float:
    """Mean intersection over union over the classes present in the labels or the predictions."""
    inter, union = torch.zeros(CLASSES), torch.zeros(CLASSES)
    for batch in batches:
        pred, mask = forward(model, batch).argmax(1), batch["mask"]
        for c in range(CLASSES):
            inter[c] += ((pred == c) & (mask == c)).sum()
            union[c] += ((pred == c) | (mask == c)).sum()
    return float((inter[union > 0] / union[union > 0]).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", default="runs/example-segmentation")
    parser.add_argument("--kd-outputs", default="auto", help="how recovery distils the outputs: auto (here: "
                        "per-pixel logits), logits, mse or smooth_l1")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, epochs = (200, 3) if args.small else (1200, 20)
    train_loader = DataLoader(make_data(n, 0), batch_size=32, shuffle=True, drop_last=True)
    val_loader = DataLoader(make_data(n // 4, 1), batch_size=64)
    model = UNet(8 if args.small else 16)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):  # the user's own training
        for batch in train_loader:
            optimizer.zero_grad()
            seg_loss(forward(model, batch), batch).backward()
            optimizer.step()

    config = dataclasses.replace(SMALL if args.small else CompressConfig(),  # otherwise the default search
                                 kd=DistillConfig(outputs=args.kd_outputs))
    result = rlpruner.compress(model, (train_loader, val_loader), config, target="flops:0.5",
                               metric=miou, loss=seg_loss, forward=forward, out_dir=args.out, overwrite=True)

    base, final = result.results["base"], result.results["final"]
    for key in ("params", "flops", "latency_ms", "val_acc"):
        print(f"{'mIoU' if key == 'val_acc' else key:>10}: {base[key]:12,.4g} -> {final[key]:12,.4g}")
    return result.results


if __name__ == "__main__":
    main()
