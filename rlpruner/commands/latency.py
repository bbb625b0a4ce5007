"""`rlpruner latency`: build (or reuse) a model's latency table on a runtime and report its error."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .common import (add_model_arguments, add_out_argument, apply_weights, check_weights_file, is_checkpoint,
                     model_source, parse_options)

HELP = "build or reuse the latency table of a model on a runtime (torch-cpu, torch-cuda, onnxruntime-cpu) and check it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..latency import RUNTIMES

    add_model_arguments(parser)
    parser.add_argument("--input", default=None, metavar="CxHxW",
                        help="one sample's shape (default: the checkpoint's, else 3x224x224)")
    parser.add_argument("--num-classes", type=int, default=1000, help="for a model built by name (default: %(default)s)")
    parser.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                        help="option of a model built by name, e.g. stem=imagenet (repeatable)")
    parser.add_argument("--runtime", default="torch-cpu", help=f"{', '.join(RUNTIMES.names())} (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads while timing (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="batch size the table is for (default: %(default)s)")
    parser.add_argument("--points", type=int, default=6, help="widths timed per layer and axis (default: %(default)s)")
    parser.add_argument("--round-to", type=int, default=1,
                        help="the table's widths are multiples of this (default: %(default)s)")
    parser.add_argument("--check", type=int, default=8, metavar="N",
                        help="random pruned models timed to measure the table's error; 0: none (default: %(default)s)")
    parser.add_argument("--rounding", action="store_true",
                        help="also measure which width multiple the runtime likes (what --round-to auto picks)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="latency table directory (default: ~/.cache/rlpruner/latency)")
    add_out_argument(parser, "JSON file with the table's error and fit (default: print only)")


def _shape(text: str | None, meta: dict[str, Any]) -> tuple[int, ...]:
    if text is None:
        return tuple(meta.get("input_shape") or (3, 224, 224))
    try:
        shape = tuple(int(d) for d in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input {text!r} must look like 3x224x224 (positive sizes)")
    return shape


def run(args: argparse.Namespace) -> int:
    from ..graph import trace
    from ..io import atomic_write_json, load_checkpoint
    from ..latency import cached_table, choose_round_to, find_ops, get_runtime, prediction_error, rounding_costs
    from ..models import create_model

    for option, value, minimum in (("--batch", args.batch, 1), ("--check", args.check, 0),
                                   ("--round-to", args.round_to, 1), ("--num-classes", args.num_classes, 1)):
        if value < minimum:
            raise ConfigError(f"{option} must be >= {minimum}, got {value}")
    check_weights_file(args)
    runtime = get_runtime(args.runtime, args.threads)
    source = model_source(args)
    if is_checkpoint(source):
        model, meta = load_checkpoint(Path(source), allow_imports=args.allow_import)
    else:
        model, meta = create_model(source, num_classes=args.num_classes,
                                   **parse_options(args.model_args, "--model-arg")), {}
        if args.weights is not None:
            apply_weights(model, args)
    model.eval()
    example = torch.randn(1, *_shape(args.input, meta), generator=torch.Generator().manual_seed(0))
    graph = trace(model, example)
    table = cached_table(model, graph, example, runtime, batch=args.batch, points=args.points,
                         multiple=args.round_to, cache_dir=args.cache, log=print)
    report: dict[str, Any] = {"model": source, "input": list(example.shape[1:]), "key": table.key,
                              "layers": len(table.ops), "distinct": len(table.curves), "fit": vars(table.fit),
                              "calibration": table.calibration}
    print(f"{len(table.ops)} layers ({len(table.curves)} distinct); fit: {table.fit.describe()}")
    for row in table.calibration:
        print(f"  calibration {row['model']:>28s}: measured {row['measured_ms']:.3f} ms, predicted "
              f"{row['predicted_ms']:.3f} ms")
    if args.check:
        error = prediction_error(model, graph, table, runtime, example, samples=args.check, multiple=args.round_to,
                                 log=print)
        report["error"] = error.to_dict()
        print(f"error on {args.check} random pruned models (timed in turns with the original): median "
              f"{error.median:.1%}, worst {error.worst:.1%}; of their latency as a share of the original's: median "
              f"{report['error']['share_median']:.1%}, worst {report['error']['share_worst']:.1%}")
    if args.rounding:
        costs = rounding_costs(find_ops(model, graph, example), runtime, args.batch)
        report["rounding"] = {"costs": costs, "round_to": choose_round_to(costs)}
        print(f"width multiples (mean slowdown against the fastest wider width): "
              f"{', '.join(f'{m}: {c:.3f}' for m, c in costs.items())}; round_to auto: {report['rounding']['round_to']}")
    if args.out:
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    return 0
