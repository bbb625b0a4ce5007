"""`rlpruner prune`: one-shot structured pruning of a model (same ratio for every layer, or per group)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..errors import ConfigError
from ..importance import NAMES as IMPORTANCE_NAMES
from .common import add_model_arguments, add_data_arguments, add_out_argument, load_model_and_data

HELP = "one-shot pruning: trace the model, remove the least important channels, save the smaller model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--ratio", type=float, default=None,
                        help="fraction of the units of every prunable group to remove, in [0, 1)")
    parser.add_argument("--ratios", default=None, metavar="JSON",
                        help='per-group fractions, e.g. \'{"layer1.0.conv1": 0.5}\' (see --show-groups)')
    parser.add_argument("--importance", default="l2", choices=IMPORTANCE_NAMES,
                        help="criterion ranking the channels of a group (default: %(default)s); taylor and "
                             "activation use a calibration batch from the dataset")
    parser.add_argument("--calibration-batch", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--round-to", type=int, default=None,
                        help="keep a multiple of this many channels per group (hardware-friendly widths)")
    parser.add_argument("--keep", action="append", default=[], metavar="MODULE",
                        help="module path whose channels must not be pruned (repeatable)")
    parser.add_argument("--strict", action="store_true",
                        help="fail on an operation with unknown channel semantics instead of freezing it")
    parser.add_argument("--show-groups", action="store_true", help="print the coupled channel groups and exit")
    add_out_argument(parser, "where to save the pruned model (default: <model>-pruned.safetensors)")
    add_data_arguments(parser, defaults=False)


def run(args: argparse.Namespace) -> int:
    from .. import io, prune, trace
    from ..metrics import count, format_table, human

    ratio = _ratio(args)
    loaded = load_model_and_data(args)
    model, meta, spec, splits = loaded.model, loaded.meta, loaded.spec, loaded.splits
    example = splits.example_inputs(1)
    if args.show_groups:
        print(trace(model, example, keep=args.keep, strict=args.strict).summary())
        return 0
    if ratio is None:
        raise ConfigError("give --ratio or --ratios (or --show-groups to list the groups)")
    before = count(model, example)
    data = _calibration(splits, args.calibration_batch) if args.importance in ("taylor", "activation") else None
    prune(model, example, ratio, importance=args.importance, keep=args.keep, round_to=args.round_to,
          data=data, strict=args.strict)
    after = count(model, example)
    output = Path(args.out) if args.out else Path(f"{Path(loaded.source).stem.replace(':', '-')}-pruned.safetensors")
    io.save(model, output, meta={**meta, "data": spec.resolved(splits).to_dict(),
                                 "pruning": {"ratio": ratio, "importance": args.importance}})
    rows = [{"model": label, "params": human(c.params), "FLOPs": human(c.flops)}
            for label, c in (("original", before), ("pruned", after))]
    print(format_table(rows))
    print(f"FLOPs -{1 - after.flops / before.flops:.1%}, params -{1 - after.params / before.params:.1%}; "
          f"wrote {output} (fine-tune it, e.g. with `rlpruner train`, or use `rlpruner compress`)")
    return 0


def _ratio(args: argparse.Namespace) -> float | dict[str, float] | None:
    if args.ratio is not None and args.ratios is not None:
        raise ConfigError("give either --ratio or --ratios, not both")
    if args.ratios is None:
        return args.ratio
    try:
        ratios = json.loads(args.ratios)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--ratios is not valid JSON: {exc}") from exc
    if not isinstance(ratios, dict):
        raise ConfigError('--ratios must be a JSON object like {"group name": 0.5}')
    return ratios


def _calibration(splits, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.utils.data import DataLoader

    if size < 1:
        raise ConfigError(f"--calibration-batch must be >= 1, got {size}")
    inputs, targets = next(iter(DataLoader(splits.train, batch_size=size, shuffle=False)))
    return inputs, targets
