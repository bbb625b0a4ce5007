"""Compress a detection-style net (feature pyramid, class and box heads) for its own metric.

    python examples/detection.py              # about a minute on 2 CPU cores
    python examples/detection.py --small      # seconds (what the tests run)

Each generated image holds one handwritten digit (scikit-learn's) of random size at a random place
on noise; the net predicts the digit's class and its box. The metric is the mean over images of the
box IoU when the class is right (0 when it is wrong).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader

import rlpruner
from rlpruner.search import CompressConfig, RLConfig

SIZE, CLASSES = 32, 10
SMALL = CompressConfig(rl=RLConfig(sample_num=3, lr_epoch=2, prune_filter_ratio=0.1), final_epochs=1,
                       progress=False)


def make_data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(image, class, box) samples; the box is (x0, y0, x1, y1) in [0, 1]."""
    digits = load_digits()
    g = torch.Generator().manual_seed(seed)
    glyphs = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    samples = []
    for k in torch.randint(len(glyphs), (n,), generator=g).tolist():
        side = int(torch.randint(10, 24, (1,), generator=g))
        y, x = torch.randint(SIZE - side, (2,), generator=g).tolist()
        image = torch.rand(1, SIZE, SIZE, generator=g) * 0.3
        image[:, y:y + side, x:x + side] += F.interpolate(glyphs[k:k + 1], size=side, mode="bilinear")[0]
        box = torch.tensor([x, y, x + side, y + side], dtype=torch.float32) / SIZE
        samples.append((image, torch.tensor(int(digits.target[k])), box))
    return samples


def block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class PyramidDetector(nn.Module):
    """Backbone stages C2..C4, a top-down feature pyramid (1x1 laterals added to upsampled coarser
    levels), and two heads shared by every level: class scores and a box, pooled over positions."""

    def __init__(self, width: int = 16, fpn: int = 32):
        super().__init__()
        w = width
        self.c2, self.c3, self.c4 = block(1, w, 2), block(w, 2 * w, 2), block(2 * w, 4 * w, 2)
        self.lat2, self.lat3, self.lat4 = nn.Conv2d(w, fpn, 1), nn.Conv2d(2 * w, fpn, 1), nn.Conv2d(4 * w, fpn, 1)
        self.shared = block(fpn, fpn)
        self.cls, self.box = nn.Conv2d(fpn, CLASSES, 1), nn.Conv2d(fpn, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c2 = self.c2(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + F.interpolate(p4, scale_factor=2.0)
        p2 = self.lat2(c2) + F.interpolate(p3, scale_factor=2.0)
        levels = [self.shared(p) for p in (p2, p3, p4)]
        logits = sum(self.cls(f).mean((2, 3)) for f in levels) / 3
        boxes = torch.sigmoid(sum(self.box(f).mean((2, 3)) for f in levels) / 3)
        return logits, boxes


def det_loss(outputs: tuple[torch.Tensor, torch.Tensor], batch) -> torch.Tensor:
    logits, boxes = outputs
    return F.cross_entropy(logits, batch[1]) + 5 * F.l1_loss(boxes, batch[2])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda r: (r[:, 2:] - r[:, :2]).clamp(min=0).prod(1)
    return inter / (area(a) + area(b) - inter)


def detection_score(model: nn.Module, batches) -> float:
    """Mean over images of the box IoU when the predicted class is right, else 0."""
    total, seen = 0.0, 0
    for images, labels, boxes in batches:
        logits, predicted = model(images)
        total += float((box_iou(predicted, boxes) * (logits.argmax(1) == labels)).sum())
        seen += len(labels)
    return total / seen


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny run (tests)")
    parser.add_argument("--out", default="runs/example-detection")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, epochs = (200, 3) if args.small else (1500, 20)
    train_loader = DataLoader(make_data(n, 0), batch_size=32, shuffle=True, drop_last=True)
    val_loader = DataLoader(make_data(n // 4, 1), batch_size=64)
    model = PyramidDetector(8 if args.small else 16)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):  # the user's own training
        for batch in train_loader:
            optimizer.zero_grad()
            det_loss(model(batch[0]), batch).backward()
            optimizer.step()

    config = SMALL if args.small else None  # None: the default search
    result = rlpruner.compress(model, (train_loader, val_loader), config, target="flops:0.5",
                               metric=detection_score, loss=det_loss, out_dir=args.out, overwrite=True)

    base, final = result.results["base"], result.results["final"]
    for key in ("params", "flops", "latency_ms", "val_acc"):
        print(f"{'score' if key == 'val_acc' else key:>10}: {base[key]:12,.4g} -> {final[key]:12,.4g}")
    return result.results


if __name__ == "__main__":
    main()
