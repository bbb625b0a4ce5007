"""What the subcommands share: the common options, and loading a model and its data from them.

Every command imports from here and from the library, never from another command, so each option
(`--out/-o`, `--allow-import`, `--threads`, the data group) is defined once and means one thing.
"""
from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import DataSpec, Splits, list_datasets
from ..errors import ConfigError

THREADS_HELP = "torch CPU threads (default: torch's choice)"


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------

def add_out_argument(parser: argparse.ArgumentParser, help: str, *, default: Any = None,
                     type: Any = None) -> None:
    """``--out/--output/-o``: where a command writes its result (a file or a run directory)."""
    parser.add_argument("--out", "--output", "-o", dest="out", default=default, type=type, help=help)


MODEL_HELP = ("a checkpoint (from `rlpruner train` / compress / prune), a zoo model name, a library model "
              "'timm:NAME' or 'torchvision:NAME', or an import path 'package.module:factory'")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model (positional or ``--model``), ``--weights FILE``, ``--partial-weights``, ``--allow-import``."""
    parser.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    parser.add_argument("--model", dest="model_option", default=None, metavar="MODEL",
                        help="the same as the positional MODEL")
    add_weights_arguments(parser)
    add_allow_import_argument(parser)


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights FILE`` and ``--partial-weights``: a user's state dict for a model built by name."""
    parser.add_argument("--weights", type=Path, default=None, metavar="FILE",
                        help="the model's trained weights: a state dict in .safetensors, or .pth/.pt read "
                             "with torch.load(weights_only=True) (pickled objects are refused)")
    parser.add_argument("--partial-weights", action="store_true",
                        help="load the tensors of --weights that fit and list the rest (e.g. a classifier "
                             "for another number of classes) instead of refusing")


def model_source(args: argparse.Namespace) -> str:
    """The model named by the positional argument or ``--model`` (exactly one of them)."""
    positional, option = getattr(args, "model", None), getattr(args, "model_option", None)
    if positional is not None and option is not None and positional != option:
        raise ConfigError(f"two models given: {positional!r} and --model {option!r}; give one")
    source = positional if positional is not None else option
    if source is None:
        raise ConfigError("give a model: a checkpoint, a zoo name (see `rlpruner train --help`), "
                          "timm:NAME, torchvision:NAME or package.module:factory")
    return source


def add_allow_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                        help="trust this module (or import path) to build a model saved by import path; "
                             "importing it runs its code (repeatable)")


def add_threads_argument(parser: Any, *, default: int | None = None, help: str = THREADS_HELP) -> None:
    """``--threads``; `parser` is a parser or an argument group."""
    parser.add_argument("--threads", type=int, default=default, help=help)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def add_data_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """Dataset options; with defaults=False every option defaults to None (= take it from elsewhere)."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="digits" if defaults else None,
                       help=f"{', '.join(list_datasets())} (default: %(default)s)")
    group.add_argument("--data-root", default=None,
                       help="folder with the CIFAR archives or the image folder "
                            "(default: $RLPRUNER_DATA or ./data)")
    group.add_argument("--image-size", type=int, default=None,
                       help="square input size (default: the dataset's)")
    group.add_argument("--in-channels", type=int, default=None, help="1 or 3 (default: the dataset's)")
    group.add_argument("--data-seed", type=int, default=0 if defaults else None,
                       help="seed of the train/val/test split (default: %(default)s)")
    group.add_argument("--val-fraction", type=float, default=0.1 if defaults else None,
                       help="share of the training data held out for validation (default: %(default)s)")
    group.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                       help="dataset-specific option, e.g. difficulty=0.8 for synthetic (repeatable)")


def parse_options(items: list[str], option: str) -> dict[str, Any]:
    """KEY=VALUE strings to a dict; values are read as JSON when they parse (numbers, booleans)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option}: expected KEY=VALUE, got '{item}'")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def data_spec_from_args(args: argparse.Namespace, base: DataSpec | None = None) -> DataSpec:
    """The DataSpec the arguments describe; options not given on the command line come from `base`."""
    spec = (base or DataSpec()).to_dict()
    if args.dataset is not None and args.dataset != spec["name"]:
        spec.update(name=args.dataset, root=None, options={})  # root and options belong to the old dataset
    given = {"root": args.data_root, "image_size": args.image_size, "in_channels": args.in_channels,
             "seed": args.data_seed, "val_fraction": args.val_fraction}
    spec.update({key: value for key, value in given.items() if value is not None})
    spec["options"] = {**spec["options"], **parse_options(args.data_option, "--data-option")}
    return DataSpec(**spec)


# --------------------------------------------------------------------------------------------------
# Loading a model and its data
# --------------------------------------------------------------------------------------------------

def is_checkpoint(source: str) -> bool:
    path = Path(source)
    return path.suffix in (".rlp", ".safetensors") or path.is_file()


def load_model(source: str, allow_imports: list[str], splits: Splits | None = None
               ) -> tuple[nn.Module, dict]:
    """(model, checkpoint meta) from a checkpoint path, or a fresh zoo / library / import-path model
    sized for `splits`."""
    from ..io import load_checkpoint
    from ..models import create_model

    if is_checkpoint(source):
        return load_checkpoint(Path(source), allow_imports=allow_imports)
    return create_model(source, num_classes=splits.num_classes, in_channels=splits.in_channels), {}


def check_weights_file(args: argparse.Namespace) -> None:
    """A missing ``--weights`` file is refused before any data or model is loaded."""
    weights = getattr(args, "weights", None)
    if weights is not None and not weights.is_file():
        raise ConfigError(f"--weights {weights}: no such file")


def apply_weights(model: nn.Module, args: argparse.Namespace) -> None:
    """Load ``--weights`` into a model built by name; prints what did not fit with --partial-weights."""
    from ..io import load_weights

    report = load_weights(model, args.weights, strict=not args.partial_weights)
    print(f"weights: {report.describe()}", flush=True)


def data_from_args(args: argparse.Namespace, meta: dict, source: str) -> tuple[DataSpec, Splits]:
    """The data the arguments describe; what they leave out comes from the checkpoint's stored spec."""
    stored = meta.get("data")
    base = DataSpec.from_dict(stored, f"{source}: meta.data") if stored else None
    spec = data_spec_from_args(args, base)
    return spec, spec.load()


@dataclass
class Loaded:
    model: nn.Module
    meta: dict            # the checkpoint's meta; {} for a model built from a name
    spec: DataSpec
    splits: Splits
    fresh: bool           # built from a name without --weights: untrained weights
    source: str           # the model as the user named it


def load_model_and_data(args: argparse.Namespace, *, seed: int | None = None) -> Loaded:
    """The model (checkpoint, zoo or library name, import path; ``--weights``) and the data for it.

    A checkpoint is read first, so its stored data spec fills in the options not given; a model
    built from a name is sized for the data (seeded with `seed` when given), then given --weights.
    """
    source = model_source(args)
    weights = getattr(args, "weights", None)
    checkpoint = is_checkpoint(source)
    if weights is not None and checkpoint:
        raise ConfigError(f"--weights applies to a model built by name; {source} is a checkpoint that "
                          "already holds its weights")
    check_weights_file(args)
    model, meta = load_model(source, args.allow_import) if checkpoint else (None, {})
    spec, splits = data_from_args(args, meta, source)
    if model is None:
        if seed is not None:
            torch.manual_seed(seed)
        model, _ = load_model(source, args.allow_import, splits)
        if weights is not None:
            apply_weights(model, args)
    return Loaded(model, meta, spec, splits, fresh=not checkpoint and weights is None, source=source)


def check_fits(model: nn.Module, splits: Splits, device: torch.device, source: str) -> None:
    """One forward pass on real inputs, so a model/dataset mismatch is one clear line, not a traceback."""
    inputs = splits.example_inputs(1).to(device)
    was_training = model.training
    try:
        with torch.inference_mode():
            outputs = model.eval()(inputs)
    except Exception as exc:  # the model's own shape/value errors, whatever their type
        raise ConfigError(f"{source} does not accept {splits.name} inputs of shape {tuple(inputs.shape)}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        model.train(was_training)
    if outputs.ndim != 2 or outputs.shape[1] != splits.num_classes:
        raise ConfigError(f"{source} outputs shape {tuple(outputs.shape)}, but {splits.name} has "
                          f"{splits.num_classes} classes")


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

def command_line(args: argparse.Namespace) -> str | None:
    """The command line that ran this command, quoted for a shell (None outside `rlpruner.cli.main`)."""
    argv = getattr(args, "_argv", None)
    return None if argv is None else shlex.join(["rlpruner", *argv])


def print_compress_summary(results: dict) -> None:
    """Before/after table and reductions of a `rlpruner.search.compress` run (accuracy shown in %)."""
    from ..metrics import format_table, human

    rows, batches = [], results.get("latency", {})
    for label, key in (("original", "base"), ("compressed", "final")):
        row = results[key]
        rows.append({"model": label, "params": human(row["params"]), "FLOPs": human(row["flops"]),
                     f"ms @{batches.get('batch', 1)}": row["latency_ms"]})
        if row.get("latency_batch_ms") is not None:
            rows[-1][f"ms @{batches.get('report_batch')}"] = row["latency_batch_ms"]
        if row.get("predicted_latency_ms") is not None:
            rows[-1][f"predicted ms @{batches.get('batch', 1)}"] = row["predicted_latency_ms"]
        rows[-1]["val top-1"] = 100 * row["val_acc"]
        if row.get("test_acc") is not None:
            rows[-1]["test top-1"] = 100 * row["test_acc"]
    print(format_table(rows))
    reached, timing = results["reached"], results["timing"]
    print(f"reduction: FLOPs {reached['flops']:.1%}, params {reached['params']:.1%}, latency "
          f"{reached['latency']:.1%}, channels {reached['sparsity']:.1%}; {results['steps']} steps in "
          f"{results['time_s']:.0f} s; search overhead {timing['search_s']:.1f} s vs {timing['eval_s']:.1f} s "
          f"of candidate evaluation ({(timing['overhead'] or 0):.1%})")
