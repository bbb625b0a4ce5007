"""`rlpruner train`: train a zoo model (or a model from an import path) on a dataset, keep the best
epoch on validation, save it as a checkpoint and print its measurements.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..data import Splits
from ..distributed import join
from ..errors import ConfigError
from ..train import EpochStats, TrainConfig, TrainResult, resolve_device
from .common import (add_data_arguments, add_out_argument, add_threads_argument, add_weights_arguments, apply_weights,
                     check_weights_file, data_spec_from_args, set_threads)

HELP = "train a model on a dataset and save the best-on-validation checkpoint"

# (flag, type, help) of the TrainConfig fields set from the command line; defaults come from TrainConfig
TRAIN_OPTIONS = (
    ("--epochs", int, "training epochs"),
    ("--lr", float, "peak learning rate"),
    ("--batch-size", int, "training batch size"),
    ("--momentum", float, "SGD momentum (Nesterov)"),
    ("--weight-decay", float, "on weights, not on biases/norm scales"),
    ("--warmup-epochs", float, "linear warm-up before the cosine decay"),
    ("--label-smoothing", float, "cross-entropy label smoothing"),
    ("--seed", int, "model-init and training seed"),
    ("--device", str, "cpu, cuda, cuda:N, mps or auto"),
    ("--workers", int, "DataLoader worker processes; None: up to 8 for a streamed folder, else 0"),
    ("--amp", str, "mixed precision: auto (bf16 on CUDA, fp16 on GPUs without bf16, off on CPU), off, bf16, fp16"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="resnet20",
                        help="zoo model name, 'timm:NAME', 'torchvision:NAME' or 'package.module:factory' "
                             "(default: %(default)s)")
    add_weights_arguments(parser)
    add_data_arguments(parser)
    defaults = TrainConfig()
    group = parser.add_argument_group("training")
    for flag, kind, text in TRAIN_OPTIONS:
        group.add_argument(flag, type=kind, default=getattr(defaults, _dest(flag)),
                           help=f"{text} (default: %(default)s)")
    group.add_argument("--no-augment", action="store_true", help="train without random crops/flips")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels_last memory format for convolutions (default: on for CUDA)")
    add_threads_argument(group)
    add_out_argument(parser, "checkpoint to write (default: runs/<model>-<dataset>.safetensors); "
                             "<name>.train.json with the history goes next to it")


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {_dest(flag): getattr(args, _dest(flag)) for flag, _, _ in TRAIN_OPTIONS}
    return TrainConfig(**values, augment=not args.no_augment, channels_last=args.channels_last)


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(checkpoint, history JSON), checked to be writable before any training time is spent."""
    stem = args.model.replace(":", "-").replace(".", "_").replace("/", "_")
    checkpoint = Path(args.out) if args.out else Path("runs") / f"{stem}-{args.dataset}.safetensors"
    if checkpoint.is_dir() or not checkpoint.stem:
        raise ConfigError(f"--out {checkpoint}: must be a file path, "
                          f"e.g. {checkpoint / 'model.safetensors'}")
    existing = next((p for p in checkpoint.absolute().parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"--out {checkpoint}: cannot write there ({existing} is not a writable folder)")
    return checkpoint, checkpoint.with_name(checkpoint.stem + ".train.json")


def log_epoch(stats: EpochStats, epochs: int) -> None:
    """One line per epoch; accuracies are fractions, shown in percent."""
    print(f"epoch {stats.epoch:>3}/{epochs}  lr {stats.lr:.4f}  train loss {stats.train_loss:.3f} "
          f"top1 {100 * stats.train_top1:5.1f}  val loss {stats.val_loss:.3f} top1 {100 * stats.val_top1:5.1f}  "
          f"({stats.seconds:.1f}s)", flush=True)


def describe(model_name: str, splits: Splits, params: int, flops: int, epochs: int) -> str:
    from ..metrics import human

    size = f"{splits.in_channels}x{splits.image_size}x{splits.image_size}"
    counts = f"{len(splits.train)}/{len(splits.val)}/{len(splits.test)}"
    return (f"training {model_name} ({human(params)} params, {human(flops)} FLOPs) on {splits.name} {size}, "
            f"{counts} train/val/test images, {epochs} epochs")


def summary_row(model_name: str, dataset: str, params: int, flops: int,
                result: TrainResult) -> dict[str, Any]:
    from ..metrics import human

    return {"model": model_name, "dataset": dataset, "params": human(params), "FLOPs": human(flops),
            "best epoch": result.best_epoch, "val top-1": 100 * result.best_val["top1"],
            "test top-1": 100 * result.test["top1"], "test top-5": 100 * result.test["top5"],
            "time (s)": result.seconds}


def run(args: argparse.Namespace) -> int:
    config = train_config_from_args(args)  # every number is checked before any work starts
    world = join(resolve_device(config.device))  # torchrun's processes, or this one alone
    set_threads(args.threads)
    checkpoint, history_path = output_paths(args)
    check_weights_file(args)
    spec = data_spec_from_args(args)
    splits = spec.load()
    spec = spec.resolved(splits)

    from ..io import atomic_write_json
    from ..metrics import count, format_table
    from ..models import create_model
    from ..train import train

    torch.manual_seed(config.seed)
    model = create_model(args.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    if args.weights is not None:  # fine-tune from the user's weights
        apply_weights(model, args)
    counts = count(model, splits.example_inputs(1))
    if world.main:
        print(describe(args.model, splits, counts.params, counts.flops, config.epochs), flush=True)
    meta = {"model": args.model, "data": spec.to_dict(), "train": asdict(config), "world_size": world.size}
    result = train(model, splits, config, on_epoch=lambda stats: log_epoch(stats, config.epochs),
                   checkpoint_path=checkpoint, checkpoint_meta=meta)
    if world.main:  # rank 0 alone writes (train() saved the checkpoint there too)
        atomic_write_json(history_path, {**meta, **counts.to_dict(), **result.to_dict()})
        print(format_table([summary_row(args.model, spec.name, counts.params, counts.flops, result)]))
        print(f"saved {checkpoint} (best on validation) and {history_path}")
    return 0
