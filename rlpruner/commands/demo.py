"""`rlpruner demo`: the whole method in a few minutes on the bundled digits.

Trains a small ResNet (or reuses the one cached in the output directory), compresses it with
RL-Pruner to a FLOPs target with knowledge-distillation recovery, and prints before/after params,
FLOPs, measured CPU latency and test accuracy (the test split is scored once, at the end).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..data import DataSpec, Splits
from ..distill import DistillConfig
from ..errors import CheckpointError, ConfigError
from ..search import CompressConfig, RLConfig, Target
from ..train import TrainConfig
from .common import add_out_argument, add_threads_argument, print_compress_summary, set_threads

HELP = "train a small model on the bundled digits and compress it with RL-Pruner (a few minutes on a CPU)"


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo does, sized for two CPU cores."""

    model: str = "resnet8"
    data: DataSpec = DataSpec(name="digits", image_size=16)
    train: TrainConfig = TrainConfig(epochs=20, lr=0.05, batch_size=64, warmup_epochs=1.0)
    target_flops: float = 0.6
    seed: int = 0

    def compress_config(self) -> CompressConfig:
        # The search's defaults with fewer candidates per step (at most 5 rounds x 8 instead of
        # 10 x 10), so that the demo takes about a minute on a CPU.
        return CompressConfig(
            target=Target("flops", self.target_flops),
            rl=RLConfig(lr_epoch=5, sample_num=8),
            kd=DistillConfig(epochs=1, lr=0.01, batch_size=64),
            final_epochs=10, latency_repeats=100, latency_warmup=20, report_batch=64, seed=self.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    plan = DemoPlan()
    add_out_argument(parser, "output directory (default: %(default)s)", default="runs/demo")
    parser.add_argument("--target-flops", type=float, default=plan.target_flops,
                        help="fraction of FLOPs to remove (default: %(default)s)")
    parser.add_argument("--train-epochs", type=int, default=plan.train.epochs,
                        help="epochs of the base model (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train the base model even if one is cached")
    parser.add_argument("--seed", type=int, default=plan.seed, help="default: %(default)s")
    add_threads_argument(parser, default=1,
                         help="torch CPU threads; one is fastest for a model this small, and immune to other "
                              "jobs competing for the cores (default: %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal)")


def base_model(plan: DemoPlan, splits: Splits, path: Path, retrain: bool) -> tuple[nn.Module, float]:
    """The cached base model when it was trained with this plan, else a freshly trained one."""
    from ..io import load_checkpoint
    from ..models import create_model
    from ..train import train

    key = {"model": plan.model, "data": plan.data.to_dict(), "train": asdict(replace(plan.train, progress=None))}
    if path.is_file() and not retrain:
        try:
            model, meta = load_checkpoint(path)
            if meta.get("demo") == key:
                print(f"using the base model cached in {path} (--retrain to train it again)", flush=True)
                return model, 0.0
        except CheckpointError as exc:
            print(f"ignoring {path}: {exc}", flush=True)
    torch.manual_seed(plan.seed)
    model = create_model(plan.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    print(f"training {plan.model} on digits for {plan.train.epochs} epochs...", flush=True)
    result = train(model, splits, plan.train, checkpoint_path=path,
                   checkpoint_meta={"demo": key, "model": plan.model, "data": plan.data.to_dict(),
                                    "input_shape": list(splits.input_shape())})
    print(f"base model: val top-1 {result.best_val['top1']:.2%} (epoch {result.best_epoch}), "
          f"{result.seconds:.0f} s", flush=True)
    return model, result.seconds


def run(args: argparse.Namespace) -> int:
    from ..search import compress

    start = time.perf_counter()
    set_threads(args.threads)
    if args.train_epochs < 1:
        raise ConfigError(f"--train-epochs must be >= 1, got {args.train_epochs}")
    plan = DemoPlan(target_flops=args.target_flops, seed=args.seed,
                    train=replace(DemoPlan().train, epochs=args.train_epochs, seed=args.seed, progress=args.progress))
    config = replace(plan.compress_config(), progress=args.progress)  # validates the target before any work
    out = Path(args.out)
    splits = plan.data.load()
    model, _ = base_model(plan, splits, out / "base.rlp", args.retrain)
    print(f"compressing with RL-Pruner to -{plan.target_flops:.0%} FLOPs "
          f"({config.rl.lr_epoch}x{config.rl.sample_num} candidates per step, KD after every step)...", flush=True)
    result = compress(model, splits, config, out_dir=out / "compress", overwrite=True,
                      log=lambda line: print(line, flush=True), meta={"data": plan.data.to_dict()})
    print_compress_summary(result.results)
    print(f"total {time.perf_counter() - start:.0f} s; compressed model {result.paths['model']}; "
          f"open {result.paths['html']} for the report")
    return 0
