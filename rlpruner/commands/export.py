"""`rlpruner export`: turn a saved model into an ONNX or TorchScript file, verified against PyTorch."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import EXPORT_FORMATS, ONNX_EXPORTERS, ExportReport, export, load_checkpoint
from ..models import SPEC_ATTR
from .common import add_allow_import_argument, add_out_argument

HELP = "export a saved (pruned) model to ONNX or TorchScript and check it against PyTorch"
_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a model written by rlpruner.save / train / compress")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="onnx")
    add_out_argument(parser, "output file (default: the checkpoint path with .onnx / .torchscript.pt)",
                     type=Path)
    parser.add_argument("--input-size", type=int, nargs="+", metavar="N", default=None,
                        help="input height [width] (default: from the checkpoint's meta, else 32)")
    parser.add_argument("--channels", type=int, default=None,
                        help="input channels (default: from the checkpoint's meta, else the model's)")
    parser.add_argument("--batch-size", type=int, default=1,
                        help="batch size of the example input (the fixed batch with --static-batch); "
                             "the export serves any batch and is verified at this one and another")
    parser.add_argument("--static-batch", dest="dynamic_batch", action="store_false",
                        help="fix the batch at --batch-size (for a model whose forward hard-codes it)")
    add_allow_import_argument(parser)
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--exporter", choices=ONNX_EXPORTERS, default="auto",
                        help="ONNX exporter: dynamo needs onnxscript; auto uses it when installed")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="do not run the exported file (needed for ONNX without onnxruntime)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example input")


def run(args: argparse.Namespace) -> int:
    model, meta = load_checkpoint(args.checkpoint, allow_imports=args.allow_import)
    shape = input_shape(args, meta, getattr(model, SPEC_ATTR, None) or {})
    torch.manual_seed(args.seed)
    inputs = torch.randn(shape)
    output = args.out or args.checkpoint.with_suffix(_SUFFIX[args.format])
    print(f"exporting {args.checkpoint} ({type(model).__name__}, input {list(shape)}) "
          f"to {args.format}...", flush=True)
    report = export(model, output, args.format, inputs, verify=args.verify, opset=args.opset,
                    exporter=args.exporter, dynamic_batch=args.dynamic_batch)
    print(format_report(report))
    return 0


def input_shape(args: argparse.Namespace, meta: dict, spec: dict) -> tuple[int, int, int, int]:
    """Batch x channels x height x width from the flags, the checkpoint's meta, or the defaults."""
    saved = saved_input_shape(meta)
    channels = args.channels
    if channels is None:
        channels = saved[0] if saved else spec.get("kwargs", {}).get("in_channels", 3)
    size = args.input_size if args.input_size is not None else (saved[1:] if saved else [32])
    if len(size) not in (1, 2):
        raise ConfigError(f"--input-size takes a height and optionally a width, got {size}")
    height, width = size[0], size[-1]
    dims = {"--batch-size": args.batch_size, "--channels": channels, "--input-size": height,
            "--input-size width": width}
    for flag, value in dims.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    return (args.batch_size, channels, height, width)


def saved_input_shape(meta: dict) -> list | None:
    """[C, H, W] from meta "input_shape" (demo), or meta "data" (train/compress store their DataSpec)."""
    shape = meta.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3:
        return shape
    data = meta.get("data")
    if isinstance(data, dict) and isinstance(data.get("image_size"), int):
        return [data.get("in_channels") or 3, data["image_size"], data["image_size"]]
    return None


def format_report(report: ExportReport) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    rows = [
        ("format", f"{report.format} ({report.exporter})"),
        ("file", str(report.path)),
        ("size", f"{report.size_bytes / 1024:.1f} KiB"),
        ("batch", _batch_text(report)),
        ("max |diff| vs PyTorch", "not verified" if report.max_abs_diff is None
         else f"{report.max_abs_diff:.3g}"),
        ("latency (exported)", ms(report.latency_ms)),
        ("latency (PyTorch)", ms(report.torch_latency_ms)),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _batch_text(report: ExportReport) -> str:
    kind = "dynamic" if report.dynamic_batch else "static"
    if not report.batch_sizes:
        return f"{kind} (not verified)"
    return f"{kind} (verified at {', '.join(map(str, report.batch_sizes))})"
