"""`rlpruner evaluate`: measure a saved model (params, FLOPs, latency, top-1/top-5) on one split."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DataSpec, Splits
from ..errors import ConfigError
from ..train import resolve_device
from .train import add_data_arguments, data_spec_from_args, set_threads

HELP = "measure a saved model: params, FLOPs, latency and accuracy on a data split; writes JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="model file written by `rlpruner train` / `prune` / `compress`")
    add_data_arguments(parser, defaults=False)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="which split to score (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size (default: %(default)s)")
    parser.add_argument("--latency-batch", type=int, default=1, help="batch size timed (default: %(default)s)")
    parser.add_argument("--latency-repeats", type=int, default=50, help="timed runs (default: %(default)s)")
    parser.add_argument("--latency-warmup", type=int, default=10, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    parser.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                        help="trust this module to build a model saved by import path (repeatable)")
    parser.add_argument("--output", "-o", default=None,
                        help="JSON file to write (default: <checkpoint name>.eval.json next to it)")


def check_numbers(args: argparse.Namespace) -> None:
    for option, value, minimum in (("--batch-size", args.batch_size, 1), ("--latency-batch", args.latency_batch, 1),
                                   ("--latency-repeats", args.latency_repeats, 1),
                                   ("--latency-warmup", args.latency_warmup, 0)):
        if value < minimum:
            raise ConfigError(f"{option} must be >= {minimum}, got {value}")


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


def run(args: argparse.Namespace) -> int:
    check_numbers(args)
    set_threads(args.threads)
    device = resolve_device(args.device)

    from ..io import atomic_write_json, load_checkpoint
    from ..metrics import count, format_table, human, measure_latency
    from ..train import evaluate

    checkpoint = Path(args.checkpoint)
    output = Path(args.output) if args.output else checkpoint.with_name(checkpoint.stem + ".eval.json")
    model, meta = load_checkpoint(checkpoint, allow_imports=args.allow_import, device=device)
    stored = meta.get("data")
    spec = data_spec_from_args(args, DataSpec.from_dict(stored, f"{checkpoint}: meta.data") if stored else None)
    splits = spec.load()
    check_fits(model, splits, device, str(checkpoint))
    dataset = getattr(splits, args.split)
    scores = evaluate(model, DataLoader(dataset, batch_size=args.batch_size), device)
    counts = count(model, splits.example_inputs(1).to(device))
    latency = measure_latency(model, splits.example_inputs(1), batch_size=args.latency_batch,
                              warmup=args.latency_warmup, repeats=args.latency_repeats, device=device)
    name = getattr(model, "rlpruner_spec", {}).get("name", meta.get("model", "?"))
    print(format_table([{
        "model": name, "data": f"{spec.name}/{args.split}", "params": human(counts.params),
        "FLOPs": human(counts.flops), f"latency ms (batch {args.latency_batch})": latency.median_ms,
        "top-1": scores["top1"], "top-5": scores["top5"]}]))
    atomic_write_json(output, {"checkpoint": str(checkpoint), "model": name, "data": spec.resolved(splits).to_dict(),
                               "split": args.split, **counts.to_dict(), "latency": latency.to_dict(), **scores})
    print(f"wrote {output}")
    return 0
