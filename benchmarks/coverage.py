"""Coverage: how deep rlpruner prunes models it has never seen, and whether the result is exact.

    python benchmarks/coverage.py                 # zoo models, plus timm / torchvision models when installed
    python benchmarks/coverage.py --only vit_tiny_patch16_224 skresnet18
    python benchmarks/coverage.py --render-only   # regenerate the table from the results file

Per model, with random weights:
- prunable share: conv/linear output channels that lie in prunable groups (`DependencyGraph.coverage`);
- frozen by the forward check: groups whose pruning breaks the model (a hard-coded count), found by
  `rlpruner.isolate.breaking_groups` and left whole while everything else prunes;
- params removed by `rlpruner.prune(model, x, ratio=0.5)` (L2, ratio 0.5 of every prunable group);
- exact: the pruned model computes what the original computes with the removed channels masked out
  (tests/masking.py), for random removals in every exact group (3 seeds); the worst relative error.
Writes benchmarks/results/coverage.json and coverage.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlpruner  # noqa: E402
from rlpruner.graph import trace  # noqa: E402
from rlpruner.io import atomic_write_json, atomic_write_text  # noqa: E402
from rlpruner.isolate import breaking_groups, frozen_reasons  # noqa: E402
from rlpruner.models import create_model, list_models  # noqa: E402
from rlpruner.surgery import prune_channels  # noqa: E402
from tests.masking import masked_reference, outputs, random_removals, randomize  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# Models from the libraries users have, each with a structure our zoo lacks; input size each needs.
TIMM = {
    "resnet18": 64, "skresnet18": 64, "mixnet_s": 64, "res2net50_14w_8s": 64, "cspresnet50": 64,
    "ghostnet_100": 64, "nfnet_l0": 64, "poolformer_s12": 64, "edgenext_xx_small": 224,
    "efficientformer_l1": 224, "levit_128s": 224, "vit_tiny_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224, "convnext_atto": 64,
}
TORCHVISION = {"resnet18": 64, "mobilenet_v3_small": 64, "vit_b_16": 224, "swin_t": 224, "maxvit_t": 224}


def catalogue() -> list[tuple[str, int]]:
    """(name as rlpruner.create_model takes it, input size): the zoo, then each library if it imports."""
    rows = [(name, 32) for name in list_models()]
    for prefix, models in (("timm", TIMM), ("torchvision", TORCHVISION)):
        try:
            library = __import__(prefix)
        except Exception:  # noqa: BLE001 - not installed, or an install that does not import
            continue
        if "stand-in" in getattr(library, "__version__", ""):  # tests/stand_ins: not the real library
            continue
        rows += [(f"{prefix}:{name}", size) for name, size in models.items()]
    return rows


def measure(name: str, size: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = randomize(create_model(name, num_classes=10).eval())
    x = torch.randn(2, 3, size, size)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = trace(model, x)
        probe = {g.name: np.arange(max(1, g.size // 2)) for g in graph.prunable_groups()}
        broken = breaking_groups(model, graph, probe, x)
        graph = graph.freeze(frozen_reasons(broken))
        coverage = graph.coverage()
        errors = []
        for seed in range(3):
            removals = random_removals(graph, seed)
            pruned = prune_channels(model, graph, removals, inplace=False)
            ref, got = outputs(masked_reference(model, graph, removals), x), outputs(pruned, x)
            errors.append(max(float((a - b).abs().max()) / max(float(a.abs().max()), 1e-6)
                              for a, b in zip(ref, got)))
        params = sum(p.numel() for p in model.parameters())
        small = rlpruner.prune(model, x, ratio=0.5)
        removed = 1 - sum(p.numel() for p in small.parameters()) / params
    frozen = sorted(coverage.frozen.items(), key=lambda kv: -kv[1])
    return {
        "model": name, "input": size, "groups": len(graph.groups), "prunable_groups": len(graph.prunable_groups()),
        "exact_groups": sum(g.exact for g in graph.prunable_groups()), "channels": coverage.channels,
        "prunable_share": coverage.share, "frozen_by_forward_check": sorted(broken),
        "params_removed_at_0_5": removed, "max_rel_error": max(errors), "exact": max(errors) <= 1e-4,
        "top_frozen_reason": frozen[0][0] if frozen else "", "seconds": time.perf_counter() - start,
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Coverage: prunable share, params removed at ratio 0.5, exactness",
        "",
        f"Machine: {results['machine']}. torch {results['torch']}. Random weights. Generated by "
        "`python benchmarks/coverage.py`.",
        "",
        "*prunable*: share of conv/linear output channels in prunable groups. *broken*: groups frozen because "
        "pruning them breaks the forward (a hard-coded count), found by bisection; the rest prunes. "
        "*exact*: pruned = original with the removed channels masked, for random removals in every exact "
        "group (3 seeds; worst relative error). *removed*: parameters removed by "
        "`rlpruner.prune(model, x, ratio=0.5)`.",
        "",
        "| model | input | prunable groups | prunable | broken | removed at 0.5 | exact (max rel. err.) | "
        "largest frozen share |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['input']}² | fails: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['input']}² | {r['prunable_groups']}/{r['groups']} | {r['prunable_share']:.1%} | "
            f"{len(r['frozen_by_forward_check'])} | {r['params_removed_at_0_5']:.0%} | "
            f"{'yes' if r['exact'] else 'NO'} ({r['max_rel_error']:.1e}) | {r['top_frozen_reason'][:90]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model names (zoo, timm: or torchvision: names)")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    path = RESULTS / "coverage.json"
    if not args.render_only:
        rows = []
        for name, size in catalogue():
            if args.only and name not in args.only and name.split(":")[-1] not in args.only:
                continue
            try:
                row = measure(name, size)
            except Exception as exc:  # noqa: BLE001 - a model that fails is a row, not the end of the run
                traceback.print_exc()
                row = {"model": name, "input": size, "error": f"{type(exc).__name__}: {str(exc)[:120]}"}
            print({k: v for k, v in row.items() if k != "frozen_by_forward_check"}, flush=True)
            rows.append(row)
        atomic_write_json(path, {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                                 "torch": torch.__version__, "rows": rows})
    import json

    atomic_write_text(RESULTS / "coverage.md", render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
