"""Scale: a compression run on a streamed folder of 224x224 JPEGs, and what it costs as the folder grows.

    python benchmarks/scale.py              # ~25 min on 2 CPU cores: benchmarks/results/scale.{json,md}
    python benchmarks/scale.py --quick      # smoke run (small folders, small images)
    python benchmarks/scale.py --render     # regenerate scale.md from scale.json only

For each folder size the script generates a folder of JPEGs (10 classes, sizes between 224 and 320
pixels a side; kept under runs/bench/scale/ and reused), then runs `rlpruner.compress` on an
ImageNet-style ResNet-18 (7x7 stem, max-pool; random weights: the accuracy is meaningless here, the
cost is the point) at 224x224, with the folder streamed: images decoded per sample in DataLoader
workers, candidates scored on a fixed subset, the validation split cached on the device only up to
`val_cache_mb` and streamed beyond it.

Each run is a child process. The parent samples the proportional set size (PSS: shared pages
split between the processes sharing them, so the sum does not count the model twice) of the child
and all its DataLoader workers every 50 ms and records the peak. It also records the child's own
peak RSS, the per-step wall time split into scoring (candidates' BatchNorm re-estimation and
forward passes), surgery, policy and recovery, and candidates per second. Device memory is
recorded on CUDA only. Runs use one process (`world_size` 1): multi-process runs are not built yet.
Finished rows are kept (same settings), so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import ROOT, machine, render_only, study_files  # noqa: E402

WORK = ROOT / "runs" / "bench" / "scale"
PHASES = ("eval", "surgery", "policy", "importance", "recovery")  # the search's timers (rlpruner.search.step)


@dataclass(frozen=True)
class ScaleSettings:
    mode: str
    sizes: tuple[int, ...]        # images in the folder
    classes: int = 10
    image_size: int = 224
    source_sizes: tuple[int, int] = (224, 320)   # each JPEG's width and height are drawn from this range
    model: str = "resnet18"
    model_options: tuple[tuple[str, Any], ...] = (("stem", "imagenet"),)
    target_flops: float = 0.15
    prune_filter_ratio: float = 0.05
    sample_num: int = 4
    lr_epoch: int = 1
    score_samples: int = 64
    bn_samples: int = 64
    calibration_samples: int = 64
    kd_batch_size: int = 32
    kd_max_batches: int = 4
    final_epochs: int = 1
    eval_batch_size: int = 64
    val_fraction: float = 0.05
    test_fraction: float = 0.02
    val_cache_mb: int = 0         # 0: the validation split streams on every pass, whatever its size, so
                                  # the two folder sizes run the same way (the default 1024 would cache
                                  # the larger one's 1,000 images, 574 MiB, and the smaller one's too)
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def full_settings() -> ScaleSettings:
    return ScaleSettings("full", sizes=(2000, 20000))


def quick_settings() -> ScaleSettings:
    return ScaleSettings("quick", sizes=(60, 240), classes=3, image_size=32, source_sizes=(32, 48),
                         model="simple_cnn", model_options=(("widths", [8, 16]),), target_flops=0.2,
                         prune_filter_ratio=0.1, sample_num=2, score_samples=16, bn_samples=16,
                         calibration_samples=16, kd_batch_size=8, kd_max_batches=2, eval_batch_size=16,
                         val_fraction=0.1, test_fraction=0.05, val_cache_mb=0, threads=1)


# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------

def make_folder(root: Path, images: int, classes: int, source_sizes: tuple[int, int], seed: int = 0) -> Path:
    """`images` JPEGs in `classes` sub-folders: smooth random patterns tinted by class, each of its own
    size. Deterministic; a folder that is complete (its marker file names the count) is reused."""
    from PIL import Image

    marker = root / "complete.json"
    wanted = {"images": images, "classes": classes, "source_sizes": list(source_sizes), "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return root
    rng = np.random.default_rng(seed)
    tints = rng.integers(40, 216, (classes, 3))
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        c = i % classes
        w, h = (int(v) for v in rng.integers(source_sizes[0], source_sizes[1] + 1, 2))
        coarse = (rng.random((6, 6, 3)) * 80 - 40 + tints[c]).clip(0, 255).astype("uint8")
        Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC).save(
            root / f"class{c:03d}" / f"{i:06d}.jpg", quality=85)
    marker.write_text(json.dumps(wanted))
    return root


# --------------------------------------------------------------------------------------------------
# Memory of a process tree
# --------------------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc's child lists)."""
    found, queue = [], [pid]
    while queue:
        p = queue.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                queue += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def pss_bytes(pids: list[int]) -> int:
    """The summed proportional set size of `pids` (processes that ended meanwhile count 0)."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def run_watched(command: list[str], env: dict[str, str], interval: float = 0.05) -> tuple[int, int, float]:
    """(exit status, peak PSS of the process tree in bytes, seconds) of `command`."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    peak = 0
    while child.poll() is None:
        peak = max(peak, pss_bytes(descendants(child.pid)))
        time.sleep(interval)
    return child.returncode, peak, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# One run (in the child process)
# --------------------------------------------------------------------------------------------------

def child_run(settings: ScaleSettings, folder: Path, out: Path, result_path: Path) -> None:
    import resource

    import torch

    from rlpruner.data import default_workers, get_dataset
    from rlpruner.distill import DistillConfig
    from rlpruner.models import create_model
    from rlpruner.search import CompressConfig, RLConfig, Target, compress

    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    splits = get_dataset("imagefolder", folder, image_size=settings.image_size, stream=True,
                         val_fraction=settings.val_fraction, test_fraction=settings.test_fraction)
    torch.manual_seed(0)
    model = create_model(settings.model, num_classes=splits.num_classes, **dict(settings.model_options))
    config = CompressConfig(
        target=Target("flops", settings.target_flops),
        rl=RLConfig(prune_filter_ratio=settings.prune_filter_ratio, lr_epoch=settings.lr_epoch,
                    sample_num=settings.sample_num, score_samples=settings.score_samples,
                    bn_samples=settings.bn_samples, calibration_samples=settings.calibration_samples),
        kd=DistillConfig(batch_size=settings.kd_batch_size, max_batches=settings.kd_max_batches),
        final_epochs=settings.final_epochs, eval_batch_size=settings.eval_batch_size,
        val_cache_mb=settings.val_cache_mb, latency_repeats=3, report_batch=2, progress=False)
    result = compress(model, splits, config, out_dir=out, overwrite=True)
    steps = [{"step": r.step, "candidates": r.candidates, "wall_s": r.times.get("wall_s", 0.0),
              **{p: r.times.get(p, 0.0) for p in PHASES}} for r in result.records]
    device_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    row = {"images": len(splits.train) + len(splits.val) + (len(splits.test) if splits.test is not None else 0),
           "train": len(splits.train), "val": len(splits.val),
           "test": len(splits.test) if splits.test is not None else 0, "steps": steps,
           "final": result.results["final"], "base": result.results["base"],
           "seconds": time.perf_counter() - start,
           "child_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "device_peak_bytes": device_peak, "world_size": 1,
           "workers": default_workers(splits.train)}
    result_path.write_text(json.dumps(row))


def measure(settings: ScaleSettings, images: int, work: Path, log: Any) -> dict[str, Any]:
    folder = make_folder(work / settings.mode / f"folder-{images}", images, settings.classes, settings.source_sizes)
    out = work / settings.mode / f"run-{images}"
    result_path = out.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(settings.to_dict()),
               str(folder), str(out), str(result_path)]
    log(f"== {images} images: {folder}")
    status, peak, seconds = run_watched(command, env)
    if status != 0 or not result_path.exists():
        raise RuntimeError(f"the run on {images} images failed (exit status {status})")
    row = json.loads(result_path.read_text())
    return {**row, "folder_images": images, "peak_pss_bytes": peak, "wall_seconds": seconds}


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

def step_summary(row: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per step of each phase, and candidates scored per second of scoring."""
    steps = row["steps"]
    n = max(1, len(steps))
    summary = {p: sum(s[p] for s in steps) / n for p in ("wall_s", *PHASES)}
    scoring = sum(s["eval"] for s in steps)
    summary["candidates_per_s"] = sum(s["candidates"] for s in steps) / scoring if scoring else 0.0
    return summary


def render_markdown(results: dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    out = ["# Scale: a streamed folder of JPEGs, as it grows", "",
           (f"Generated by `{results['command']}` on {m.get('cpu', 'a CPU')} ({m.get('cores', '?')} cores), "
            f"torch {m.get('torch', '?')}, {s['threads']} thread(s), device {results.get('device', 'cpu')}. "
            f"Model {s['model']} {dict(s['model_options'])} at {s['image_size']}x{s['image_size']}, random "
            f"weights; target -{s['target_flops']:.0%} FLOPs, {s['sample_num']} candidates per round, "
            f"{s['lr_epoch']} round(s) per step, candidates scored on {s['score_samples']} validation images "
            f"after re-estimating BatchNorm on {s['bn_samples']} training images; recovery {s['kd_max_batches']} "
            f"KD batches of {s['kd_batch_size']} per step, final fine-tune {s['final_epochs']} epoch of at most "
            f"{s['kd_max_batches']} batches; validation = {s['val_fraction']:.0%} of the folder, cached on the "
            f"device up to {s['val_cache_mb']} MiB, streamed beyond. One process (world size 1)."), "",
           ("| images (train/val/test) | peak host memory, PSS of all processes (MiB) | main process peak RSS "
            "(MiB) | workers | steps | s/step | scoring | surgery | policy | importance | recovery | "
            "candidates/s | whole run (s) |"),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        t = step_summary(row)
        out.append(f"| {row['folder_images']:,} ({row['train']:,}/{row['val']:,}/{row['test']:,}) | "
                   f"{row['peak_pss_bytes'] / 2**20:,.0f} | {row['child_max_rss'] / 2**20:,.0f} | {row['workers']} | "
                   f"{len(row['steps'])} | {t['wall_s']:.1f} | {t['eval']:.1f} | {t['surgery']:.2f} | "
                   f"{t['policy']:.3f} | {t['importance']:.2f} | {t['recovery']:.1f} | {t['candidates_per_s']:.2f} | "
                   f"{row['wall_seconds']:.0f} |")
    rows = results["rows"]
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        growth = large["peak_pss_bytes"] / max(1, small["peak_pss_bytes"])
        out += ["", (f"From {small['folder_images']:,} to {large['folder_images']:,} images "
                     f"({large['folder_images'] / small['folder_images']:.0f}x), peak host memory changes "
                     f"{growth:.2f}x. Decoded into memory, the {large['folder_images']:,} images at "
                     f"{s['image_size']}² would take {large['folder_images'] * 3 * s['image_size'] ** 2 / 2**30:.1f} "
                     "GiB as uint8.")]
    out += ["", "Per-step columns are mean seconds per step (rlpruner's own phase timers); s/step is the whole "
            "step, including the validation passes of the guard and of recovery, which grow with the "
            "validation split. No GPU was used unless the device says so."]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small folders, small images, a tiny model")
    parser.add_argument("--render", action="store_true", help="regenerate scale.md from scale.json")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=WORK, help="where the folders and runs go (default: %(default)s)")
    parser.add_argument("--child", nargs=4, metavar=("SETTINGS", "FOLDER", "OUT", "RESULT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rlpruner.io import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    if args.child:
        raw = json.loads(args.child[0])
        raw["model_options"] = tuple(tuple(pair) for pair in raw["model_options"])
        settings = ScaleSettings(**{k: tuple(v) if isinstance(v, list) and k != "model_options" else v
                                    for k, v in raw.items()})
        child_run(settings, Path(args.child[1]), Path(args.child[2]), Path(args.child[3]))
        return 0
    results_dir, json_path, md_path = study_files("scale", args.results, args.quick)
    if args.render:
        return render_only(json_path, md_path, render_markdown)
    settings = quick_settings() if args.quick else full_settings()
    results_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    same = old.get("settings") == settings.to_dict()
    results = {"command": " ".join(["python benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
               "settings": settings.to_dict(), "machine": machine(), "device": "cpu",
               "rows": old.get("rows", []) if same else []}
    done = {r["folder_images"] for r in results["rows"]}
    for images in settings.sizes:
        if images in done:
            continue
        results["rows"].append(measure(settings, images, args.work, lambda line: print(line, flush=True)))
        results["rows"].sort(key=lambda r: r["folder_images"])
        atomic_write_json(json_path, results)
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
