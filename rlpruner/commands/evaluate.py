"""`rlpruner evaluate`: measure a saved model (params, FLOPs, latency, top-1/top-5) on one split."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataSpec, Splits
from ..errors import ConfigError
from ..train import resolve_device
from .train import add_data_arguments, data_spec_from_args, set_threads

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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    parser.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                        help="trust this module to build a model saved by import path (repeatable)")
    parser.add_argument("--output", "-o", default=None,
                        help="JSON file to write (default: <checkpoint name>.eval.json next to it)")


def check_numbers(args: argparse.Namespace) -> None:
    for flag, _, minimum, _ in NUMBER_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < minimum:
            raise ConfigError(f"{flag} must be >= {minimum}, got {value}")


def check_fits(model: nn.Module, splits: Splits, device: torch.device, source: str) -> None:
    """One forward pass on real inputs, so a model/dataset mismatch is one clear line, not a traceback."""
    inputs = splits.example_inputs(1).to(device)
    try:
        with torch.inference_mode():
            outputs = model(inputs)
    except RuntimeError as exc:
        raise ConfigError(f"{source} does not accept {splits.name} inputs of shape {tuple(inputs.shape)}: "
                          f"{str(exc).splitlines()[0]}") from exc
    if outputs.ndim != 2 or outputs.shape[1] != splits.num_classes:
        raise ConfigError(f"{source} outputs shape {tuple(outputs.shape)}, but {splits.name} has "
                          f"{splits.num_classes} classes")


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
    output = Path(args.output) if args.output else checkpoint.with_name(checkpoint.stem + ".eval.json")
    model, meta = load_checkpoint(checkpoint, allow_imports=args.allow_import, device=device)
    stored = meta.get("data")
    base = DataSpec.from_dict(stored, f"{checkpoint}: meta.data") if stored else None
    spec = data_spec_from_args(args, base)
    splits = spec.load()
    check_fits(model, splits, device, str(checkpoint))
    report = measure(model, splits, args, device)
    name = getattr(model, "rlpruner_spec", {}).get("name", meta.get("model", "?"))
    latency_column = f"latency ms (batch {args.latency_batch})"
    print(format_table([{
        "model": name, "data": f"{spec.name}/{args.split}", "params": human(report["params"]),
        "FLOPs": human(report["flops"]), latency_column: report["latency"]["median_ms"],
        "top-1": report["top1"], "top-5": report["top5"]}]))
    atomic_write_json(output, {"checkpoint": str(checkpoint), "model": name, "split": args.split,
                               "data": spec.resolved(splits).to_dict(), **report})
    print(f"wrote {output}")
    return 0
