"""`rlpruner evaluate`: measure a saved model (params, FLOPs, latency, top-1/top-5) on one split."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import Splits
from ..errors import ConfigError
from ..models import SPEC_ATTR
from ..train import resolve_device
from .common import (add_allow_import_argument, add_data_arguments, add_out_argument, add_threads_argument,
                     check_fits, data_from_args, set_threads)

HELP = "measure a saved model: params, FLOPs, latency and accuracy on a data split; writes JSON"

# (flag, default, smallest allowed value, help)
NUMBER_OPTIONS = (
    ("--batch-size", 256, 1, "evaluation batch size"),
    ("--latency-batch", 1, 1, "batch size of the timed forward passes"),
    ("--latency-repeats", 50, 1, "timed forward passes (the median is reported)"),
    ("--latency-warmup", 10, 0, "untimed forward passes first"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="model file written by `rlpruner train` (or prune / compress)")
    add_data_arguments(parser, defaults=False)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="which split to score (default: %(default)s)")
    for flag, default, _, text in NUMBER_OPTIONS:
        parser.add_argument(flag, type=int, default=default, help=f"{text} (default: %(default)s)")
    add_threads_argument(parser)
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    add_allow_import_argument(parser)
    add_out_argument(parser, "JSON file to write (default: <checkpoint name>.eval.json next to it)")


def check_numbers(args: argparse.Namespace) -> None:
    for flag, _, minimum, _ in NUMBER_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < minimum:
            raise ConfigError(f"{flag} must be >= {minimum}, got {value}")


def measure(model: nn.Module, splits: Splits, args: argparse.Namespace,
            device: torch.device) -> dict[str, Any]:
    """Accuracy on the chosen split, params/FLOPs of one image, latency of a `--latency-batch` batch."""
    from ..metrics import count, measure_latency
    from ..train import evaluate

    example = splits.example_inputs(1)
    scores = evaluate(model, DataLoader(getattr(splits, args.split), batch_size=args.batch_size), device)
    latency = measure_latency(model, example, batch_size=args.latency_batch, warmup=args.latency_warmup,
                              repeats=args.latency_repeats, device=device)
    return {**count(model, example.to(device)).to_dict(), "latency": latency.to_dict(), **scores}


def run(args: argparse.Namespace) -> int:
    check_numbers(args)
    set_threads(args.threads)
    device = resolve_device(args.device)

    from ..io import atomic_write_json, load_checkpoint
    from ..metrics import format_table, human

    checkpoint = Path(args.checkpoint)
    output = Path(args.out) if args.out else checkpoint.with_name(checkpoint.stem + ".eval.json")
    model, meta = load_checkpoint(checkpoint, allow_imports=args.allow_import, device=device)
    spec, splits = data_from_args(args, meta, str(checkpoint))
    check_fits(model, splits, device, str(checkpoint))
    report = measure(model, splits, args, device)
    name = (getattr(model, SPEC_ATTR, None) or {}).get("name", meta.get("model", "?"))
    latency_column = f"latency ms (batch {args.latency_batch})"
    print(format_table([{
        "model": name, "data": f"{spec.name}/{args.split}", "params": human(report["params"]),
        "FLOPs": human(report["flops"]), latency_column: report["latency"]["median_ms"],
        "top-1": 100 * report["top1"], "top-5": 100 * report["top5"]}]))
    atomic_write_json(output, {"checkpoint": str(checkpoint), "model": name, "split": args.split,
                               "data": spec.resolved(splits).to_dict(), **report})
    print(f"wrote {output}")
    return 0
