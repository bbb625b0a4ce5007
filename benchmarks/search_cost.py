"""What the RL-Pruner search costs, and what its defaults give up against an expensive search.

    python benchmarks/search_cost.py                 # writes benchmarks/results/search_cost.{json,md}
    python benchmarks/search_cost.py --quick         # a smoke run under runs/bench-quick/

The setting of the goal in the docs: ResNet-20 on the digits at 32x32 (val_fraction 0.2: ~360
validation images), a -50% FLOPs target, on 2 CPU threads. Each configuration searches with no
recovery between steps (so that the search alone is timed and compared) and then gets the same
final knowledge-distillation fine-tune; the search's time is `eval_s` + its overhead (trace,
importance, policy, surgery), as results.json reports it.

- ``default``    `RLConfig()`: what a user gets.
- ``expensive``  the same steps with the paper's search budget: 10 rounds x 10 candidates every step
                 (no early end), every candidate scored on the whole validation split (BatchNorm
                 recalibration on): what the default's cheaper search may lose.
- ``paper-steps`` the default search at the paper's 1% steps (twice as many steps).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import RESULTS, ROOT, WORK, machine  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "expensive": {"lr_epoch": 10, "sample_num": 10, "patience": None, "score_samples": None},
    "paper-steps": {"prune_filter_ratio": 0.01},
}


@dataclass(frozen=True)
class CostSettings:
    model: str = "resnet20"
    image_size: int = 32
    val_fraction: float = 0.2
    target: float = 0.5
    train_epochs: int = 15
    final_epochs: int = 10
    kd_lr: float = 0.01
    threads: int = 2
    seeds: tuple[int, ...] = (0,)
    configs: tuple[str, ...] = ("default", "expensive")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per config, e.g. for --quick


def quick() -> CostSettings:
    return CostSettings(model="resnet8", image_size=16, train_epochs=3, final_epochs=1, configs=("default",),
                        overrides={"default": {"lr_epoch": 2, "sample_num": 3, "prune_filter_ratio": 0.1}})


def base_model(settings: CostSettings, splits: Any, path: Path) -> Any:
    """The trained model of the setting, cached beside the runs."""
    import torch

    from rlpruner import io
    from rlpruner.models import create_model
    from rlpruner.train import TrainConfig, train

    wanted = {"model": settings.model, "image_size": settings.image_size, "val_fraction": settings.val_fraction,
              "epochs": settings.train_epochs}
    if path.exists():
        model, meta = io.load_checkpoint(path)
        if meta.get("cost") == wanted:
            return model
    torch.manual_seed(0)
    model = create_model(settings.model, num_classes=splits.num_classes, in_channels=splits.in_channels)
    train(model, splits, TrainConfig(epochs=settings.train_epochs, lr=0.05, seed=0, progress=False))
    io.save(model.eval(), path, meta={"cost": wanted})
    return model


def run_one(settings: CostSettings, name: str, seed: int, model: Any, splits: Any, work: Path) -> dict[str, Any]:
    from rlpruner.distill import DistillConfig
    from rlpruner.search import CompressConfig, RLConfig, Target, compress

    options = {**CONFIGS[name], **settings.overrides.get(name, {})}
    config = CompressConfig(target=Target("flops", settings.target), rl=RLConfig(**options),
                            kd=DistillConfig(epochs=1, lr=settings.kd_lr), post_train_period=0,
                            final_epochs=settings.final_epochs, seed=seed, progress=False)
    start = time.perf_counter()
    result = compress(model, splits, config, out_dir=work / f"{name}-s{seed}", overwrite=True)
    wall = time.perf_counter() - start
    r, timing = result.results, result.results["timing"]
    search_s = timing["eval_s"] + timing["search_s"]
    candidates = sum(record.candidates for record in result.records)
    return {"config": name, "seed": seed, "options": options, "steps": r["steps"], "candidates": candidates,
            "search_s": search_s, "eval_s": timing["eval_s"], "overhead_s": timing["search_s"],
            "final_kd_s": timing["final_s"], "wall_s": wall, "flops_reduction": r["reached"]["flops"],
            "params_reduction": r["reached"]["params"], "val_acc": r["final"]["val_acc"],
            "test_acc": r["final"].get("test_acc"), "base_val_acc": r["base"]["val_acc"],
            "base_test_acc": r["base"].get("test_acc"),
            "pruned_val_acc": result.records[-1].val_acc_pruned if result.records else None}


def run(settings: CostSettings, out: Path, work: Path, log: Any = print) -> dict[str, Any]:
    import torch

    from rlpruner.data import get_dataset
    from rlpruner.io import atomic_write_json, atomic_write_text

    torch.set_num_threads(settings.threads)
    splits = get_dataset("digits", image_size=settings.image_size, in_channels=3, val_fraction=settings.val_fraction)
    model = base_model(settings, splits, work / "base.rlp")
    results = {"kind": "search_cost", "machine": machine(), "settings": asdict(settings),
               "val_images": len(splits.val), "rows": []}
    for seed in settings.seeds:
        for name in settings.configs:
            row = run_one(settings, name, seed, model, splits, work)
            results["rows"].append(row)
            atomic_write_json(out.with_suffix(".json"), results)
            log(f"{name:>10s} seed {seed}: search {row['search_s']:.0f} s over {row['steps']} steps, FLOPs "
                f"-{row['flops_reduction']:.1%}, val {row['val_acc']:.2%} test {row['test_acc']:.2%}")
    atomic_write_text(out.with_suffix(".md"), "\n".join(table(results)) + "\n")
    return results


def table(results: dict[str, Any]) -> list[str]:
    """The markdown table of a results file (generated, never typed)."""
    s = results["settings"]
    lines = [f"{s['model']} on digits at {s['image_size']}x{s['image_size']} ({results['val_images']} validation "
             f"images), FLOPs -{s['target']:.0%}, {s['threads']} threads; no recovery during the search, then "
             f"{s['final_epochs']} KD epochs for every configuration. Machine: {results['machine']['cpu']}, "
             f"commit {results['machine']['commit']}.", "",
             "| configuration | seed | steps | candidates | search time | of it evaluation | FLOPs | params | val top-1 | test top-1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['config']} | {r['seed']} | {r['steps']} | {r['candidates']} | {r['search_s'] / 60:.1f} min | "
                     f"{r['eval_s'] / 60:.1f} min | -{r['flops_reduction']:.1%} | -{r['params_reduction']:.1%} | "
                     f"{r['val_acc']:.2%} | {r['test_acc']:.2%} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run under runs/bench-quick/")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    args = parser.parse_args(argv)
    settings = quick() if args.quick else CostSettings()
    if args.seeds:
        settings = CostSettings(**{**asdict(settings), "seeds": tuple(args.seeds)})
    if args.configs:
        settings = CostSettings(**{**asdict(settings), "configs": tuple(args.configs)})
    mode = "quick" if args.quick else "full"
    out = (ROOT / "runs" / "bench-quick" / "results" if args.quick else RESULTS) / "search_cost"
    out.parent.mkdir(parents=True, exist_ok=True)
    run(settings, out, WORK / mode / "search_cost", lambda line: print(line, flush=True))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
