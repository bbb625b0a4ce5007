"""Scale: what a compression run costs as the data grows, in one process and in two (torchrun).

    python benchmarks/scale.py              # ~1 h on 2 CPU cores: benchmarks/results/scale.{json,md}
    python benchmarks/scale.py --quick      # smoke run (small data, a tiny model)
    python benchmarks/scale.py --render     # regenerate scale.md from scale.json only

Two cases, each run with 1 and with 2 processes (`torchrun --nproc-per-node 2`; the threads of the
machine are shared among the processes):

- **folder**: a generated folder of JPEGs (10 classes, sizes between 224 and 320 pixels a side; kept
  under runs/bench/scale/ and reused) at 2,000 and 20,000 images, streamed: images decoded per sample
  in DataLoader workers, candidates scored on a fixed subset, validation cached on the device only up
  to `val_cache_mb` and streamed beyond. Model: an ImageNet-style ResNet-18 (7x7 stem, max-pool) at
  224x224.
- **cifar**: a CIFAR-size generated set in memory (the `synthetic` dataset: 50,000 training and
  10,000 validation images at 32x32, 10 classes), with the CIFAR ResNet-56.

Weights are random: the accuracy is meaningless here, the cost is the point. Each run is a child
process (or a torchrun launch). The parent samples the proportional set size (PSS: shared pages
split between the processes sharing them, so the sum does not count a library twice) of the whole
process tree (torchrun's agent, every rank and their DataLoader workers) every 50 ms and records the
peak. Rank 0 records its own peak RSS, the per-step wall time split into scoring (candidates'
BatchNorm re-estimation and forward passes), surgery, policy, importance and recovery, and
candidates per second; device memory on CUDA only. Finished rows are kept (same settings), so an
interrupted study resumes.
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
class Case:
    name: str                     # "folder" (streamed JPEGs) or "cifar" (in memory)
    dataset: str                  # "imagefolder" or "synthetic"
    sizes: tuple[int, ...]        # images in the data set
    processes: tuple[int, ...] = (1, 2)
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
    threads: int = 2              # shared among the processes

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Case:
        raw = dict(raw)
        raw["model_options"] = tuple(tuple(pair) for pair in raw["model_options"])
        return cls(**{k: tuple(v) if isinstance(v, list) and k != "model_options" else v for k, v in raw.items()})


@dataclass(frozen=True)
class ScaleSettings:
    mode: str
    cases: tuple[Case, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "cases": [c.to_dict() for c in self.cases]}


CIFAR_SPLIT = {"val_fraction": 10 / 62, "test_fraction": 2 / 62}  # 62,000 images: 50,000 / 10,000 / 2,000


def full_settings() -> ScaleSettings:
    return ScaleSettings("full", (
        Case("folder", "imagefolder", sizes=(2000, 20000)),
        Case("cifar", "synthetic", sizes=(62000,), image_size=32, model="resnet56", model_options=(),
             target_flops=0.1, score_samples=256, bn_samples=128, calibration_samples=128, kd_batch_size=128,
             eval_batch_size=256, val_cache_mb=1024, **CIFAR_SPLIT)))


def quick_settings() -> ScaleSettings:
    tiny = dict(classes=3, image_size=32, source_sizes=(32, 48), model="simple_cnn", model_options=(("widths", [8, 16]),),
                target_flops=0.2, prune_filter_ratio=0.1, sample_num=2, score_samples=16, bn_samples=16,
                calibration_samples=16, kd_batch_size=8, kd_max_batches=2, eval_batch_size=16, val_fraction=0.1,
                test_fraction=0.05, val_cache_mb=0, threads=1)
    return ScaleSettings("quick", (Case("folder", "imagefolder", sizes=(60, 240), processes=(1,), **tiny),
                                   Case("cifar", "synthetic", sizes=(300,), processes=(2,), **{**tiny, "threads": 2})))


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

def child_run(case: Case, data: Path | None, images: int, out: Path, result_path: Path) -> None:
    """One compression run (every rank of a torchrun launch runs this; rank 0 writes the row)."""
    import resource

    import torch

    from rlpruner.data import default_workers, get_dataset
    from rlpruner.distill import DistillConfig
    from rlpruner.models import create_model
    from rlpruner.search import CompressConfig, RLConfig, Target, compress

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, case.threads // world_size))
    start = time.perf_counter()
    if case.dataset == "imagefolder":
        splits = get_dataset("imagefolder", data, image_size=case.image_size, stream=True,
                             val_fraction=case.val_fraction, test_fraction=case.test_fraction)
    else:
        splits = get_dataset("synthetic", image_size=case.image_size, num_classes=case.classes,
                             samples_per_class=images // case.classes, val_fraction=case.val_fraction,
                             test_fraction=case.test_fraction)
    torch.manual_seed(0)
    model = create_model(case.model, num_classes=splits.num_classes, **dict(case.model_options))
    config = CompressConfig(
        target=Target("flops", case.target_flops),
        rl=RLConfig(prune_filter_ratio=case.prune_filter_ratio, lr_epoch=case.lr_epoch,
                    sample_num=case.sample_num, score_samples=case.score_samples,
                    bn_samples=case.bn_samples, calibration_samples=case.calibration_samples),
        kd=DistillConfig(batch_size=case.kd_batch_size, max_batches=case.kd_max_batches),
        final_epochs=case.final_epochs, eval_batch_size=case.eval_batch_size,
        val_cache_mb=case.val_cache_mb, latency_repeats=3, report_batch=2, progress=False)
    result = compress(model, splits, config, out_dir=out, overwrite=True)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    steps = [{"step": r.step, "candidates": r.candidates, "scored_by": r.scored_by, "wall_s": r.times.get("wall_s", 0.0),
              **{p: r.times.get(p, 0.0) for p in PHASES}} for r in result.records]
    device_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    row = {"images": len(splits.train) + len(splits.val) + (len(splits.test) if splits.test is not None else 0),
           "train": len(splits.train), "val": len(splits.val),
           "test": len(splits.test) if splits.test is not None else 0, "steps": steps,
           "final": result.results["final"], "base": result.results["base"],
           "seconds": time.perf_counter() - start,
           "child_max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "device_peak_bytes": device_peak, "world_size": result.results["world_size"],
           "workers": default_workers(splits.train)}
    result_path.write_text(json.dumps(row))


def measure(case: Case, images: int, processes: int, work: Path, log: Any) -> dict[str, Any]:
    folder = (make_folder(work / f"folder-{case.image_size}-{images}", images, case.classes, case.source_sizes)
              if case.dataset == "imagefolder" else None)
    out = work / f"run-{case.name}-{images}-{processes}p"
    result_path = out.with_suffix(".json")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(max(1, case.threads // processes))}
    launch = ([sys.executable] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)])
    command = [*launch, str(Path(__file__).resolve()), "--child", json.dumps(case.to_dict()), str(folder or ""),
               str(images), str(out), str(result_path)]
    log(f"== {case.name}: {images} images, {processes} process(es)")
    status, peak, seconds = run_watched(command, env)
    if status != 0 or not result_path.exists():
        raise RuntimeError(f"the {case.name} run on {images} images with {processes} process(es) failed "
                           f"(exit status {status})")
    row = json.loads(result_path.read_text())
    return {**row, "folder_images": images, "processes": processes, "peak_pss_bytes": peak, "wall_seconds": seconds}


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

def step_summary(row: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per step of each phase, and candidates scored per second of the step's scoring
    time (rank 0's clock; with several processes every rank scores its share meanwhile)."""
    steps = row["steps"]
    n = max(1, len(steps))
    summary = {p: sum(s[p] for s in steps) / n for p in ("wall_s", *PHASES)}
    scoring = sum(s["eval"] for s in steps)
    summary["candidates_per_s"] = sum(s["candidates"] for s in steps) / scoring if scoring else 0.0
    return summary


def _case_line(case: dict[str, Any]) -> str:
    data = ("a streamed folder of JPEGs, validation cached on the device up to "
            f"{case['val_cache_mb']} MiB and streamed beyond" if case["dataset"] == "imagefolder"
            else "generated images held in memory")
    return (f"**{case['name']}**: {case['model']} {dict(case['model_options']) or ''} at "
            f"{case['image_size']}x{case['image_size']} on {data}, random weights; target -{case['target_flops']:.0%} "
            f"FLOPs, {case['sample_num']} candidates per round, {case['lr_epoch']} round(s) per step, candidates "
            f"scored on {case['score_samples']} validation images after re-estimating BatchNorm on "
            f"{case['bn_samples']} training images; recovery {case['kd_max_batches']} KD batches of "
            f"{case['kd_batch_size']} per step, final fine-tune {case['final_epochs']} epoch of at most "
            f"{case['kd_max_batches']} batches; validation = {case['val_fraction']:.0%} of the images; "
            f"{case['threads']} CPU thread(s) shared among the processes.")


def render_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = ["# Scale: what a run costs as the data grows, in one process and in two", "",
           (f"Generated by `{results['command']}` on {m.get('cpu', 'a CPU')} ({m.get('cores', '?')} cores), "
            f"torch {m.get('torch', '?')}, device {results.get('device', 'cpu')}. Two processes are a "
            "`torchrun --nproc-per-node 2` launch (gloo on CPU): candidates split between the ranks, KD as "
            "DDP over parts of each batch, validation summed over each rank's part."), ""]
    for case in results["settings"]["cases"]:
        rows = [r for r in results["rows"] if r["case"] == case["name"]]
        out += [_case_line(case), "",
                ("| images (train/val/test) | processes | peak host memory, PSS of all processes (MiB) | rank 0 "
                 "peak RSS (MiB) | workers per rank | steps | s/step | scoring | surgery | policy | importance | "
                 "recovery | candidates/s | whole run (s) |"),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            t = step_summary(row)
            out.append(f"| {row['folder_images']:,} ({row['train']:,}/{row['val']:,}/{row['test']:,}) | "
                       f"{row['processes']} | {row['peak_pss_bytes'] / 2**20:,.0f} | {row['child_max_rss'] / 2**20:,.0f} | "
                       f"{row['workers']} | {len(row['steps'])} | {t['wall_s']:.1f} | {t['eval']:.1f} | "
                       f"{t['surgery']:.2f} | {t['policy']:.3f} | {t['importance']:.2f} | {t['recovery']:.1f} | "
                       f"{t['candidates_per_s']:.2f} | {row['wall_seconds']:.0f} |")
        out += [""] + _growth_lines(case, rows) + _process_lines(rows)
    out += ["Per-step columns are mean seconds per step (rlpruner's own phase timers, rank 0's clock); s/step "
            "is the whole step. Scoring is the `eval` timer: the candidates' passes and the guard's pass over "
            "the whole validation split, which grows with the split (so candidates/s, candidates per second of "
            "it, falls as the data grows); recovery includes its validation passes. No GPU was used unless the "
            "device says so."]
    return "\n".join(out) + "\n"


def _growth_lines(case: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """How peak host memory changes from the smallest to the largest data set, per process count."""
    lines = []
    for processes in sorted({r["processes"] for r in rows}):
        same = sorted((r for r in rows if r["processes"] == processes), key=lambda r: r["folder_images"])
        if len(same) < 2:
            continue
        small, large = same[0], same[-1]
        growth = large["peak_pss_bytes"] / max(1, small["peak_pss_bytes"])
        decoded = large["folder_images"] * 3 * case["image_size"] ** 2 / 2**30
        lines.append(f"{processes} process(es): from {small['folder_images']:,} to {large['folder_images']:,} "
                     f"images ({large['folder_images'] / small['folder_images']:.0f}x), peak host memory changes "
                     f"{growth:.2f}x. Decoded into memory, the {large['folder_images']:,} images at "
                     f"{case['image_size']}² would take {decoded:.1f} GiB as uint8.")
    return [*lines, ""] if lines else []


def _process_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Two processes against one on the same data: time per step and memory."""
    lines = []
    for images in sorted({r["folder_images"] for r in rows}):
        by = {r["processes"]: r for r in rows if r["folder_images"] == images}
        if 1 in by and 2 in by:
            one, two = step_summary(by[1]), step_summary(by[2])
            split = sorted(by[2]["steps"][-1].get("scored_by", [])) if by[2]["steps"] else []
            lines.append(f"{images:,} images: 2 processes take {two['wall_s'] / max(one['wall_s'], 1e-9):.2f}x the "
                         f"time per step of 1 (scoring {two['eval'] / max(one['eval'], 1e-9):.2f}x, recovery "
                         f"{two['recovery'] / max(one['recovery'], 1e-9):.2f}x) and "
                         f"{by[2]['peak_pss_bytes'] / max(1, by[1]['peak_pss_bytes']):.2f}x the peak host memory; "
                         f"candidates per step split {split} between the ranks.")
    return [*lines, ""] if lines else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, a tiny model")
    parser.add_argument("--render", action="store_true", help="regenerate scale.md from scale.json")
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=WORK, help="where the folders and runs go (default: %(default)s)")
    parser.add_argument("--child", nargs=5, metavar=("CASE", "FOLDER", "IMAGES", "OUT", "RESULT"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rlpruner.io import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    if args.child:
        case, folder, images, out, result = args.child
        child_run(Case.from_dict(json.loads(case)), Path(folder) if folder else None, int(images), Path(out),
                  Path(result))
        return 0
    results_dir, json_path, md_path = study_files("scale", args.results, args.quick)
    if args.render:
        return render_only(json_path, md_path, render_markdown)
    settings = quick_settings() if args.quick else full_settings()
    results_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    same_cases = {c["name"] for c in old.get("settings", {}).get("cases", [])
                  if c in settings.to_dict()["cases"]}  # a case whose settings changed runs again
    results = {"command": " ".join(["python benchmarks/scale.py", *(argv if argv is not None else sys.argv[1:])]),
               "settings": settings.to_dict(), "machine": machine(), "device": "cpu",
               "rows": [r for r in old.get("rows", []) if r.get("case") in same_cases]}
    done = {(r["case"], r["folder_images"], r["processes"]) for r in results["rows"]}
    work = args.work / settings.mode
    for case in settings.cases:
        for images in case.sizes:
            for processes in case.processes:
                if (case.name, images, processes) in done:
                    continue
                row = measure(case, images, processes, work, lambda line: print(line, flush=True))
                results["rows"].append({"case": case.name, **row})
                results["rows"].sort(key=lambda r: (r["case"], r["folder_images"], r["processes"]))
                atomic_write_json(json_path, results)
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
