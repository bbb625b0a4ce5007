"""Which judge ranks pruning candidates the way a short recovery does: a rank-correlation study.

    python benchmarks/judges.py             # the study: benchmarks/results/judges.{json,md}
    python benchmarks/judges.py --quick     # smoke run (one small setting, 6 candidates): runs/bench-quick/results/
    python benchmarks/judges.py --render    # regenerate judges.md from judges.json only

In one RL-Pruner step every candidate is a cheap structural copy scored by a "judge"; the policy
learns from those scores, so a judge is only worth its cost if its ranking of the candidates
predicts their ranking after recovery. For every (model, dataset) of the grid a base model is
trained once (cached under runs/bench/judges/), then for every prune level N candidates are drawn
the way the search draws them (a distribution sampled around the density init, the level's channel
budget allocated by it, the lowest-Taylor units of each group removed) and each one gets

- every judge's score: ``raw_full`` (whole validation split, stale BatchNorm statistics: the old
  search), ``bn_full`` and ``bn_S`` (after BatchNorm recalibration; whole split or a stratified
  subset of S images), ``kl_raw`` / ``kl_256`` (minus the mean KL divergence to the base model on the
  256-image subset, without / with recalibration), with ``--train-subsets N`` also ``train_N`` (top-1
  on N training images that the BN recalibration does not use), ``agree_N`` (how often the
  candidate's prediction on them is the unpruned model's: no labels), ``kltrain_N`` (minus the KL
  divergence to the unpruned model there: no labels) and ``losstrain_N`` (minus the cross-entropy
  there), and ``flops_left`` (no
  forward pass: a reference line), each with its cost in seconds;
- the ground truth: top-1 after ONE epoch of KD from the base model, every recovery seeded
  identically, so candidates differ only by their structure; on the whole validation split, or
  with ``--truth heldout`` on the validation images that no judge scored on (a judge on a subset
  of validation otherwise shares its images, and their noise, with the truth).

    python benchmarks/judges.py --noise 0.05 --budget flops --levels 0.15 0.3 --truth heldout \
        --train-subsets 512 1024 2048 --probe-steps --settings vgg11/synthetic-hard-10k@16 ... \
        --results benchmarks/results/judges-heldout

The Spearman correlation of each judge with the ground truth, per (setting, level) and its mean,
goes to the JSON with every raw number; `render_markdown` builds the table from it. The test split
is dropped on loading and never touched. Blocks already in the results file (same settings) are
kept, so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.settings import (ALLOW_IMPORTS, DENSENET, RESNET56, VGG, WORK, DatasetSpec, ModelSpec,  # noqa: E402
                                 machine, portable, render_only, study_files)

TRAIN_SIZES = (256, 512, 1024, 2048)  # training-image subsets (--train-subsets) the table orders and describes
JUDGE_ORDER = ("raw_full", "kl_raw", "bn_full", "bn_64", "bn_128", "bn_256", "kl_256", "loss_full", "loss_128",
               "probe1_128", "probe3_128", *(f"{kind}_{size}" for kind in ("train", "agree", "kltrain", "losstrain")
                                             for size in TRAIN_SIZES), "flops_left")
JUDGE_NOTES = {"raw_full": "top-1, whole val, stale BN", "kl_raw": "-KL to base, 256 imgs, stale BN",
               "bn_full": "top-1, whole val, BN recal.", "kl_256": "-KL to base, 256 imgs, BN recal.",
               "loss_full": "-cross-entropy, whole val, BN recal.",
               "flops_left": "share of FLOPs kept, no forward pass",
               **{f"bn_{s}": f"top-1, {s}-img subset, BN recal." for s in (64, 128, 256)},
               **{f"loss_{s}": f"-cross-entropy, {s}-img subset, BN recal." for s in (64, 128, 256)},
               **{f"probe{k}_128": f"top-1, 128-img subset, after {k} KD step(s) on the BN batches" for k in (1, 3)},
               **{f"train_{s}": f"top-1, {s} training imgs, BN recal." for s in TRAIN_SIZES},
               **{f"agree_{s}": f"argmax agreement with the unpruned model, {s} training imgs, BN recal."
                  for s in TRAIN_SIZES},
               **{f"kltrain_{s}": f"-KL to the unpruned model, {s} training imgs, BN recal." for s in TRAIN_SIZES},
               **{f"losstrain_{s}": f"-cross-entropy, {s} training imgs, BN recal." for s in TRAIN_SIZES}}
LEVEL_SEED = 17  # mixed into the candidate generator's seed


@dataclass(frozen=True)
class Setting:
    model: ModelSpec
    dataset: DatasetSpec
    image_size: int

    @property
    def label(self) -> str:
        return f"{self.model.label}/{self.dataset.label}@{self.image_size}"


@dataclass(frozen=True)
class JudgeSettings:
    mode: str
    settings: tuple[Setting, ...]
    levels: tuple[float, ...] = (0.25, 0.4)   # share of the prunable channels removed in one step
    candidates: int = 16
    noise: float = 0.3                        # policy.sample noise (the search's default is 0.04)
    subsets: tuple[int, ...] = (64, 128, 256)
    kl_subset: int = 256
    loss_subsets: tuple[int, ...] = (128,)    # subsets also judged by the task's loss (same forward pass)
    probe_steps: tuple[int, ...] = (1, 3)     # KD steps on the BN batches before top-1 on the 128 subset
    train_subsets: tuple[int, ...] = ()       # training images (disjoint from the BN images) judged by top-1
                                              # (`train_N`) and by agreement with the unpruned model (`agree_N`)
    truth: str = "val"                        # "val": whole-validation top-1 after recovery; "heldout": top-1
                                              # after recovery on the validation images no judge scored on
    budget: str = "channels"                  # a level is a share of the prunable channels every candidate
                                              # removes ("channels"), or of the FLOPs ("flops": each candidate's
                                              # channel budget is the smallest that removes it, as the search's
                                              # equal-cost steps do, so no judge gains by seeing FLOPs)
    bn_samples: int = 256
    calibration_samples: int = 256
    importance: str = "taylor"
    train_epochs: int = 15
    train_lr: float = 0.05
    batch_size: int = 64
    kd_epochs: int = 1
    kd_lr: float = 0.01
    eval_batch_size: int = 256
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


TRUTHS = ("val", "heldout")
ADDED_SETTINGS = {"train_subsets": [], "truth": "val", "budget": "channels"}  # what results written before
                                                                                # these fields meant
BUDGETS = ("channels", "flops")


def same_settings(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a results file was made with `new` (a file older than a setting had its default)."""
    return bool(old) and {**ADDED_SETTINGS, **old} == new


DIGITS = DatasetSpec("digits", "digits", {"val_fraction": 0.2})
SYNTHETIC = DatasetSpec("synthetic-hard", "synthetic", {"difficulty": 0.9, "num_classes": 20,
                                                        "samples_per_class": 100, "val_fraction": 0.2})
RESNET = ModelSpec("resnet20", "resnet20", family="residual")
MOBILENET = ModelSpec("mobilenetv3s", "mobilenetv3_small", {"width_mult": 0.5}, family="depthwise + SE")


# the hard set with five times the samples: 2,000 validation images, so a truth held out from every judge
# is measured on ~1,700 images (about 1 point of binomial noise, below the spread of close candidates)
SYNTHETIC_10K = DatasetSpec("synthetic-hard-10k", "synthetic", {"difficulty": 0.9, "num_classes": 20,
                                                                "samples_per_class": 500, "val_fraction": 0.2})
SETTINGS = {s.label: s for s in (*(Setting(m, d, size) for m in (RESNET, MOBILENET) for d, size in ((DIGITS, 32),
                                                                                                  (SYNTHETIC, 16))),
                                  *(Setting(m, d, 16) for m in (VGG, DENSENET, RESNET56) for d in (SYNTHETIC,)),
                                  *(Setting(m, SYNTHETIC_10K, 16) for m in (RESNET, MOBILENET, VGG, DENSENET, RESNET56)))}


def full(candidates: int = 16) -> JudgeSettings:
    return JudgeSettings(mode="full", candidates=candidates,
                         settings=(Setting(RESNET, DIGITS, 32), Setting(RESNET, SYNTHETIC, 16),
                                   Setting(MOBILENET, DIGITS, 32)))


def quick(candidates: int = 6) -> JudgeSettings:
    return JudgeSettings(mode="quick", candidates=candidates, levels=(0.4,), train_epochs=3,
                         settings=(Setting(ModelSpec("resnet8", "resnet8", family="residual"), DIGITS, 16),))


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------

class Clock:
    """perf_counter seconds of one call, kept under a name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, key: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return value


def load_splits(setting: Setting) -> Any:
    """The setting's data with the test split dropped, so nothing below can evaluate on it."""
    splits = setting.dataset.load(setting.image_size)
    return replace(splits, test=None)


def base_model(setting: Setting, config: JudgeSettings, splits: Any, log: Callable[[str], None]
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained base model of a setting, from runs/bench/judges/ when trained with the same settings."""
    from rlpruner import io
    from rlpruner.train import TrainConfig, train

    path = WORK / "judges" / f"{setting.model.label}-{setting.dataset.label}-{setting.image_size}.safetensors"
    wanted = {"setting": json.loads(json.dumps(asdict(setting))), "epochs": config.train_epochs,
              "lr": config.train_lr, "batch_size": config.batch_size, "seed": config.seed}
    if path.exists():
        model, meta = io.load_checkpoint(path, allow_imports=ALLOW_IMPORTS)
        if meta.get("bench") == wanted:
            return model.eval(), {"checkpoint": portable(path), "train_seconds": meta["train_seconds"],
                                  "cached": True}
    log(f"  training the base model ({config.train_epochs} epochs)")
    torch.manual_seed(config.seed)
    model = setting.model.create(splits.num_classes, splits.in_channels)
    start = time.perf_counter()
    train(model, splits, TrainConfig(epochs=config.train_epochs, lr=config.train_lr, batch_size=config.batch_size,
                                     seed=config.seed, progress=False))
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    io.save(model.eval(), path, meta={"bench": wanted, "train_seconds": seconds})
    return model, {"checkpoint": portable(path), "train_seconds": seconds, "cached": False}


@torch.no_grad()
def _logits(model: torch.nn.Module, batches: list) -> list[torch.Tensor]:
    model.eval()
    return [model(x) for x, _ in batches]


def _kl_score(logits: list[torch.Tensor], labels: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    from rlpruner.distill import LogitsKD
    from rlpruner.search.judges import JUDGES, Evidence

    return JUDGES.get("kl").score(Evidence(0.0, logits, reference, distiller=LogitsKD()))


def _loss_score(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> float:
    """Minus the mean cross-entropy: the search's ``loss`` judge for a classifier."""
    total = sum(float(torch.nn.functional.cross_entropy(z, y, reduction="sum")) for z, y in zip(logits, labels))
    return -total / max(1, sum(len(y) for y in labels))


def measure_setting(setting: Setting, config: JudgeSettings, levels: tuple[float, ...],
                    log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One block (a dict of raw numbers) per prune level of `setting`."""
    from rlpruner import importance
    from rlpruner.allocation import policy
    from rlpruner.data.base import dataset_labels, stratified_subset
    from rlpruner.graph import trace
    from rlpruner.search.config import CompressConfig, RLConfig
    from rlpruner.search.data import SplitsSource, prepare_data, subset_batches
    from rlpruner.task import Task, top1

    from benchmarks.headroom import at_target

    clock = Clock()
    splits = clock("load", lambda: load_splits(setting))
    model, base_info = clock("base", lambda: base_model(setting, config, splits, log))
    device = torch.device("cpu")
    compress = CompressConfig(rl=RLConfig(score_samples=config.kl_subset, bn_samples=config.bn_samples,
                                          calibration_samples=config.calibration_samples,
                                          importance=config.importance),
                              eval_batch_size=config.eval_batch_size, seed=config.seed)
    data = clock("prepare_data", lambda: prepare_data(SplitsSource(splits), compress, device, Task(), model))
    val_labels = dataset_labels(splits.val)
    picked = {s: stratified_subset(val_labels, s, config.seed) for s in sorted({*config.subsets, config.kl_subset})}
    subsets = {s: subset_batches(splits.val, i, config.eval_batch_size) for s, i in picked.items()}
    judged = np.unique(np.concatenate(list(picked.values())))
    heldout = subset_batches(splits.val, np.setdiff1d(np.arange(len(splits.val)), judged), config.eval_batch_size)
    train_sets = train_subsets(splits, config)
    graph = clock("trace", lambda: trace(model, data.example))
    groups = graph.prunable_groups()
    names = [g.name for g in groups]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    capacity = policy.capacity(sizes, 1, 1)
    pd0 = policy.density_init(sizes, capacity)
    torch.manual_seed(config.seed)
    scores = clock("importance", lambda: importance.get(config.importance, data=data.calibration)(model, graph))
    base_params, base_flops = graph.count()
    base_val = top1(_logits(model, data.val_batches), [y for _, y in data.val_batches])
    reference = _logits(model, subsets[config.kl_subset])
    train_reference = {n: _logits(model, b) for n, b in train_sets.items()}
    common = {"setting": setting.label, "model": setting.model.label, "dataset": setting.dataset.label,
              "image_size": setting.image_size, "base_val_acc": base_val, "base_params": base_params,
              "base_flops": base_flops, "prunable_units": int(sizes.sum()), "groups": len(names),
              "train": len(splits.train), "val": len(splits.val),
              "subset_sizes": {str(s): sum(len(y) for _, y in b) for s, b in subsets.items()},
              "heldout": sum(len(y) for _, y in heldout),
              "train_subset_sizes": {str(s): sum(len(y) for _, y in b) for s, b in train_sets.items()},
              "bn_batches": len(data.bn_batches), "bn_samples": sum(len(x) for x, _ in data.bn_batches),
              **base_info}
    blocks = []
    for level in levels:
        start = time.perf_counter()
        budget = int(round(level * int(sizes.sum())))  # with budget "flops": each candidate's own, below
        rng = np.random.default_rng([config.seed, LEVEL_SEED, int(round(level * 1000))])
        candidates = []
        for index in range(config.candidates):
            pd = policy.sample(pd0, config.noise, rng, capacity)
            if config.budget == "flops":
                removed = at_target(graph, names, capacity, pd, level, base_flops)
                counts = np.array([removed.get(n, 0) for n in names], dtype=np.int64)
            else:
                counts = policy.allocate(pd, budget, capacity)
            removals = {n: importance.lowest(np.asarray(scores[n]), int(c)) for n, c in zip(names, counts) if c > 0}
            candidates.append(_candidate(model, graph, removals, counts, data, subsets, reference, splits,
                                         config, base_val, base_flops, Extra(heldout, train_sets, train_reference)))
            row = candidates[-1]
            log(f"  -{level:.0%} #{index:2d}  raw {row['judges']['raw_full']:.3f}  bn {row['judges']['bn_full']:.3f}"
                f"  kl {row['judges']['kl_256']:.3f}  -> KD {row['truth']:.3f}  ({row['seconds']['kd']:.1f} s KD)")
        blocks.append({**common, "level": level, "budget": budget, "candidates": candidates,
                       "seconds": time.perf_counter() - start, "setup_seconds": dict(clock.seconds),
                       **summarise(candidates, config.truth)})
    return blocks


def train_subsets(splits: Any, config: JudgeSettings) -> dict[int, list]:
    """Samples of the training split for the `train_N`/`agree_N` judges, drawn as the search draws its
    scoring images with `score_split="train"` (none of the BN recalibration's images)."""
    from rlpruner.data.base import dataset_labels
    from rlpruner.search.data import bn_subset, subset_batches, train_scoring_subset

    if not config.train_subsets:
        return {}
    labels = dataset_labels(splits.train)
    bn = bn_subset(labels, config.bn_samples, config.seed)
    return {n: subset_batches(splits.train, train_scoring_subset(labels, bn, n, config.seed), config.eval_batch_size)
            for n in config.train_subsets}


@dataclass(frozen=True)
class Extra:
    """What the held-out truth and the training-image judges need: the validation images no judge
    scores on, the training subsets and the unpruned model's predictions on them."""

    heldout: list
    train: dict[int, list]
    train_reference: dict[int, list]  # the unpruned model's logits on them


def _candidate(model, graph, removals, counts, data, subsets, reference, splits, config: JudgeSettings,
               base_val: float, base_flops: int, extra: Extra) -> dict[str, Any]:
    """Every judge's score and cost for one candidate, then its accuracy after one KD epoch."""
    from rlpruner.batchnorm import recalibrate
    from rlpruner.data import make_loaders
    from rlpruner.distill import DistillConfig, distill, probe
    from rlpruner.surgery import apply_slices
    from rlpruner.task import Task, classify_forward, top1

    clock = Clock()

    def surgery():
        slices = graph.slices(removals)
        return apply_slices(model, slices, inplace=False), graph.count(slices=slices)

    candidate, (params, flops) = clock("surgery", surgery)
    val_labels = [y for _, y in data.val_batches]
    judges: dict[str, float] = {}
    kl_batches = subsets[config.kl_subset]
    kl_labels = [y for _, y in kl_batches]
    # stale BatchNorm statistics first (recalibration gives the copy fresh buffers; the base keeps its own)
    judges["raw_full"] = clock("raw_full", lambda: top1(_logits(candidate, data.val_batches), val_labels))
    judges["kl_raw"] = clock("kl_raw", lambda: _kl_score(_logits(candidate, kl_batches), kl_labels, reference))
    clock("bn", lambda: recalibrate(candidate, data.bn_batches, classify_forward))
    shared = {"loss_full": "bn_full", **{f"loss_{s}": f"bn_{s}" for s in config.loss_subsets}}  # same logits
    full_logits = clock("bn_full", lambda: _logits(candidate, data.val_batches))
    judges["bn_full"] = top1(full_logits, val_labels)
    judges["loss_full"] = _loss_score(full_logits, val_labels)
    for size in config.subsets:
        batches = subsets[size]
        logits = clock(f"bn_{size}", lambda: _logits(candidate, batches))
        judges[f"bn_{size}"] = top1(logits, [y for _, y in batches])
        if size in config.loss_subsets:
            judges[f"loss_{size}"] = _loss_score(logits, [y for _, y in batches])
    judges[f"kl_{config.kl_subset}"] = clock(f"kl_{config.kl_subset}",
                                             lambda: _kl_score(_logits(candidate, kl_batches), kl_labels, reference))
    for size, batches in extra.train.items():
        logits = clock(f"train_{size}", lambda: _logits(candidate, batches))
        labels = [y for _, y in batches]
        judges[f"train_{size}"] = top1(logits, labels)
        judges[f"agree_{size}"] = top1(logits, [z.argmax(1) for z in extra.train_reference[size]])
        judges[f"kltrain_{size}"] = _kl_score(logits, labels, extra.train_reference[size])
        judges[f"losstrain_{size}"] = _loss_score(logits, labels)
        for name in ("agree", "kltrain", "losstrain"):  # the same forward pass
            shared[f"{name}_{size}"] = f"train_{size}"
    references = _logits(model, data.bn_batches)  # the base is the teacher, as in the ground truth
    kd = DistillConfig(epochs=config.kd_epochs, lr=config.kd_lr, batch_size=config.batch_size, progress=False)
    probe_batches = subsets[128]
    for steps in config.probe_steps:
        def probed(steps=steps):
            torch.manual_seed(config.seed)
            tuned = probe(candidate, data.bn_batches, references, kd, Task(), None, steps)
            return top1(_logits(tuned, probe_batches), [y for _, y in probe_batches])
        judges[f"probe{steps}_128"] = clock(f"probe{steps}_128", probed)
    judges["flops_left"] = flops / base_flops
    costs = {name: clock.seconds.get(shared.get(name, name), 0.0) +
             (clock.seconds["bn"] if name.startswith(("bn_", "kl_", "loss_", "probe", "train_", "agree_", "kltrain_",
                                                       "losstrain_"))
              and name != "kl_raw" else 0.0)
             for name in judges}
    # ground truth: the recalibrated candidate (as the search cuts it) after one identically seeded KD epoch
    student = copy.deepcopy(candidate)

    def recover() -> float:
        torch.manual_seed(config.seed)
        loaders = make_loaders(splits, kd.batch_size, augment=kd.augment, seed=config.seed)
        return distill(student, model, SimpleNamespace(train=loaders.train, val=data.val_batches), kd,
                       teacher_val=base_val).student_val

    truth = clock("kd", recover)
    heldout = top1(_logits(student, extra.heldout), [y for _, y in extra.heldout])
    return {"counts": [int(c) for c in counts], "params": params, "flops": flops, "judges": judges,
            "judge_seconds": costs, "truth": truth, "truth_heldout": heldout, "seconds": dict(clock.seconds)}


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------

def spearman(a: list[float], b: list[float]) -> float | None:
    """scipy's Spearman rho (average ranks for ties); None when undefined (a constant side)."""
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    rho = float(spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def summarise(candidates: list[dict[str, Any]], truth_kind: str = "val") -> dict[str, Any]:
    """Per judge: Spearman with the ground truth (`truth_kind`: whole validation, or the images no
    judge saw), the regret of picking its best candidate (best truth minus the truth of the judge's
    argmax, first on ties) and the mean seconds per candidate."""
    truth = [c["truth" if truth_kind == "val" else "truth_heldout"] for c in candidates]
    out: dict[str, Any] = {"spearman": {}, "regret": {}, "cost": {},
                           "truth_range": [min(truth), max(truth)], "truth_std": float(np.std(truth)),
                           "kd_seconds": float(np.mean([c["seconds"]["kd"] for c in candidates])),
                           "surgery_seconds": float(np.mean([c["seconds"]["surgery"] for c in candidates]))}
    for name in candidates[0]["judges"]:
        scores = [c["judges"][name] for c in candidates]
        out["spearman"][name] = spearman(scores, truth)
        out["regret"][name] = max(truth) - truth[int(np.argmax(scores))]
        out["cost"][name] = float(np.mean([c["judge_seconds"][name] for c in candidates]))
    return out


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

def _judges(results: dict[str, Any]) -> list[str]:
    seen = {name for block in results["blocks"] for name in block["spearman"]}
    return [j for j in JUDGE_ORDER if j in seen] + sorted(seen - set(JUDGE_ORDER))


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render_markdown(results: dict[str, Any]) -> str:
    """The judges.md page: Spearman of every judge per setting and level, the mean, the mean regret and
    the cost per candidate; then what every setting's candidates looked like. Numbers only from `results`."""
    blocks = results["blocks"]
    columns = [f"{b['setting']} −{b['level']:.0%}" for b in blocks]
    heldout = results["settings"].get("truth", "val") == "heldout"
    equal = ("every candidate of a column removes the same FLOPs (as the search's steps do)"
             if results["settings"].get("budget") == "flops" else "every candidate of a column removes the same "
             "number of channels (their FLOPs differ)")
    truth = ("top-1 after recovery on the validation images that no judge scored on (none of the subsets: "
             "a judge and the truth share no image)" if heldout else "whole-validation top-1 after recovery")
    lines = [f"# Judges: rank correlation with accuracy after {results['settings']['kd_epochs']} KD epoch(s)", "",
             f"Generated by `benchmarks/judges.py` from `judges.json` ({results.get('command', '')}); "
             f"{results['settings']['candidates']} candidates per column, noise {results['settings']['noise']}, "
             f"BN recalibration on {results['settings']['bn_samples']} training images; {equal}; test split never "
             "used.", "",
             f"Spearman ρ between a judge's score and the candidate's {truth} (higher is better); *mean ρ* over the columns; *regret*: mean points of post-recovery accuracy "
             "lost by taking the judge's top candidate instead of the best one; *cost*: mean milliseconds per "
             "candidate (forward passes, plus BN recalibration for the recalibrated judges; the structural "
             "copy, common to all, is listed below).", "",
             "| judge | " + " | ".join(columns) + " | mean ρ | regret (pts) | cost (ms) |",
             "|---|" + "---:|" * (len(columns) + 3)]
    for name in _judges(results):
        rhos = [b["spearman"].get(name) for b in blocks]
        regret = _mean([b["regret"].get(name) for b in blocks])
        cost = _mean([b["cost"].get(name) for b in blocks])
        label = f"`{name}`" + (f" ({JUDGE_NOTES[name]})" if name in JUDGE_NOTES else "")
        lines.append(f"| {label} | " + " | ".join(_fmt(r, "+.2f") for r in rhos) +
                     f" | {_fmt(_mean(rhos), '+.2f')} | {_fmt(None if regret is None else regret * 100, '.2f')}"
                     f" | {_fmt(None if cost is None else cost * 1000, '.1f')} |")
    lines += ["", "| setting | level | base val | after KD: min–max (std) | val / subset imgs | held out | "
                  "training imgs judged | BN batches | surgery (ms) | KD (s) | block (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in blocks:
        lo, hi = b["truth_range"]
        train = ", ".join(str(v) for v in b.get("train_subset_sizes", {}).values()) or "—"
        lines.append(f"| {b['setting']} | −{b['level']:.0%} | {b['base_val_acc']:.1%} | {lo:.1%}–{hi:.1%} "
                     f"({b['truth_std'] * 100:.1f}) | {b['val']} / {', '.join(str(v) for v in b['subset_sizes'].values())} | "
                     f"{b.get('heldout', '—')} | {train} | "
                     f"{b['bn_batches']} | {b['surgery_seconds'] * 1000:.1f} | {b['kd_seconds']:.1f} | {b['seconds']:.0f} |")
    m = results.get("machine", {})
    lines += ["", f"Measured on {m.get('cpu', '?')}, torch {m.get('torch', '?')}, 1 thread, {m.get('date', '?')}; "
                  f"wall time {results.get('wall_seconds', 0) / 60:.1f} min.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: one small setting, 6 candidates")
    parser.add_argument("--candidates", type=int, default=None, help="candidates per setting and level")
    parser.add_argument("--noise", type=float, default=None,
                        help="spread of the candidate distributions (default 0.3; the search's own is 0.04)")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder (default: benchmarks/results; --quick: runs/bench-quick/results)")
    parser.add_argument("--render", action="store_true", help="only regenerate judges.md from judges.json")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=None, metavar="SETTING",
                        help=f"(model, dataset, size) settings to study instead of the preset's: {', '.join(SETTINGS)}")
    parser.add_argument("--train-subsets", type=int, nargs="+", default=None, metavar="N",
                        help="also judge on N training images (top-1: train_N; agreement with the unpruned model: "
                             "agree_N)")
    parser.add_argument("--truth", choices=TRUTHS, default=None,
                        help="the ground truth: whole validation after recovery (val, default) or only the "
                             "validation images no judge scored on (heldout)")
    parser.add_argument("--levels", type=float, nargs="+", default=None,
                        help="shares of the prunable channels (or with --budget flops, of the FLOPs) one candidate "
                             "removes (default 0.25 0.4)")
    parser.add_argument("--budget", choices=BUDGETS, default=None,
                        help="candidates of a level remove the same channels (default) or the same FLOPs, as the "
                             "search's steps do")
    parser.add_argument("--probe-steps", type=int, nargs="*", default=None, metavar="K",
                        help="probe judges to run (KD steps before scoring; none: no probe judge)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rlpruner.io import atomic_write_json, atomic_write_text

    args = parse_args(argv)
    results_dir, json_path, md_path = study_files("judges", args.results, args.quick)
    if args.render:
        return render_only(json_path, md_path, render_markdown)
    config = quick(args.candidates or 6) if args.quick else full(args.candidates or 16)
    if args.noise is not None:
        config = replace(config, noise=args.noise)
    overrides = {"settings": None if args.settings is None else tuple(SETTINGS[label] for label in args.settings),
                 "train_subsets": None if args.train_subsets is None else tuple(args.train_subsets),
                 "truth": args.truth, "probe_steps": None if args.probe_steps is None else tuple(args.probe_steps),
                 "levels": None if args.levels is None else tuple(args.levels), "budget": args.budget}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    torch.set_num_threads(1)
    results_dir.mkdir(parents=True, exist_ok=True)
    old = json.loads(json_path.read_text()) if json_path.exists() else {}
    kept = old.get("blocks", []) if same_settings(old.get("settings", {}), config.to_dict()) else []
    results = {"command": " ".join(["python benchmarks/judges.py", *(argv if argv is not None else sys.argv[1:])]),
               "settings": config.to_dict(), "machine": {**machine(), "threads": torch.get_num_threads()},
               "test_split_used": False, "blocks": kept,
               "wall_seconds": old.get("wall_seconds", 0.0) if kept else 0.0}
    log = lambda line: print(line, flush=True)  # noqa: E731
    start = time.perf_counter()
    for setting in config.settings:
        done = {b["level"] for b in results["blocks"] if b["setting"] == setting.label}
        levels = tuple(level for level in config.levels if level not in done)
        if not levels:
            continue
        log(f"== {setting.label}  levels {', '.join(f'{x:.0%}' for x in levels)}")
        for block in measure_setting(setting, config, levels, log):
            results["blocks"].append(block)
            results["wall_seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            results["mean_spearman"] = {n: _mean([b["spearman"].get(n) for b in results["blocks"]])
                                        for n in _judges(results)}
            atomic_write_json(json_path, results)
            log(f"  -{block['level']:.0%}: " + "  ".join(f"{n} {_fmt(r, '+.2f')}" for n, r in block["spearman"].items()))
    order = {(s.label, level): i for i, s in enumerate(config.settings) for level in config.levels}
    results["blocks"].sort(key=lambda b: order.get((b["setting"], b["level"]), len(order)))
    atomic_write_json(json_path, results)
    atomic_write_text(md_path, render_markdown(results))
    print(render_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
