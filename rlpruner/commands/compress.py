"""`rlpruner compress`: RL-Pruner on a model (zoo name, checkpoint or import path) until a target is met."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..allocation import ALLOCATORS
from ..distill import DistillConfig
from ..precision import AMP_MODES
from ..search import STRATEGIES, CompressConfig, RLConfig, Reward, Target
from ..search.config import SCORE_SPLITS
from ..search.judges import JUDGES
from .common import (add_model_arguments, add_data_arguments, add_out_argument, add_threads_argument,
                     check_fits, command_line, load_model_and_data, print_compress_summary, set_threads)

HELP = "compress a model with RL-Pruner (learned per-layer pruning, KD recovery) to a FLOPs/params/sparsity/latency target"

_BOOL = argparse.BooleanOptionalAction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_out_argument(parser, "run directory (default: runs/compress-<model>)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished or killed run in --out")
    parser.add_argument("--method", choices=ALLOCATORS.names(), default="rl",
                        help="per-layer allocation: rl (the learned distribution), uniform (the same fraction of "
                             "every layer) or global (global L2-magnitude ranking); the baselines run in the same "
                             "loop with the same recovery budget (default: %(default)s)")
    add_data_arguments(parser, defaults=False)
    _add_target_arguments(parser)
    _add_rl_arguments(parser)
    _add_kd_arguments(parser)
    _add_run_arguments(parser)


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("target (one of; fractions removed, default --target-flops 0.5)")
    exclusive = group.add_mutually_exclusive_group()
    for kind in ("flops", "params", "sparsity", "latency"):
        exclusive.add_argument(f"--target-{kind}", type=float, default=None, metavar="FRACTION",
                               help=f"stop once this fraction of the original {kind} is removed")
    reward = parser.add_argument_group("reward")
    reward.add_argument("--strategy", choices=STRATEGIES, default="accuracy",
                        help="Q = val top-1 (+ 0.25 x the reduction the strategy names) (default: %(default)s)")
    for kind in ("flops", "params", "latency"):
        reward.add_argument(f"--{kind}-weight", type=float, default=None,
                            help=f"weight of the {kind} reduction in Q (default: 0.25 with --strategy {kind}, else 0)")


def _add_rl_arguments(parser: argparse.ArgumentParser) -> None:
    d = RLConfig()
    group = parser.add_argument_group("RL-Pruner")
    group.add_argument("--prune-filter-ratio", type=float, default=d.prune_filter_ratio,
                       help="step size: what this share of the original prunable channels removes (in the target's "
                            "unit with --equal-cost) (default: %(default)s)")
    group.add_argument("--lr-epoch", type=int, default=d.lr_epoch, help="sampling rounds per step (default: %(default)s)")
    group.add_argument("--sample-num", type=int, default=d.sample_num, help="candidates per round (default: %(default)s)")
    group.add_argument("--patience", type=int, default=d.patience,
                       help="end a step after this many rounds in a row without a better candidate (default: %(default)s)")
    group.add_argument("--no-patience", dest="patience", action="store_const", const=None,
                       help="always run all --lr-epoch rounds")
    group.add_argument("--noise", type=float, default=d.noise, help="sampling noise (default: %(default)s)")
    group.add_argument("--step-length", type=float, default=d.step_length, help="policy step lambda (default: %(default)s)")
    group.add_argument("--clip", type=float, default=d.clip, help="PPO ratio clip delta (default: %(default)s)")
    group.add_argument("--no-clip", dest="clip", action="store_const", const=None, help="update the policy unclipped")
    group.add_argument("--epsilon", type=float, default=d.epsilon, help="initial exploration rate (default: %(default)s)")
    group.add_argument("--epsilon-schedule", choices=("cosine", "linear", "constant"), default=d.epsilon_schedule,
                       help="decay of epsilon (default: %(default)s)")
    group.add_argument("--epsilon-decay-fraction", type=float, default=d.epsilon_decay_fraction,
                       help="share of the planned steps over which epsilon decays to 0 (default: %(default)s)")
    group.add_argument("--sample-step", type=int, default=d.sample_step, help="look-ahead depth (default: %(default)s)")
    group.add_argument("--lookahead-samples", type=int, default=d.lookahead_samples,
                       help="candidates per look-ahead level (default: %(default)s)")
    group.add_argument("--gamma", type=float, default=d.gamma, help="look-ahead discount (default: %(default)s)")
    group.add_argument("--guard-threshold", type=float, default=d.guard_threshold,
                       help="relative val-accuracy drop that resets the policy (default: %(default)s)")
    group.add_argument("--no-guard", dest="guard_threshold", action="store_const", const=None,
                       help="never reset the policy on an accuracy drop")
    group.add_argument("--guard-retries", type=int, default=d.guard_retries, help="default: %(default)s")
    group.add_argument("--importance", default=d.importance,
                       help="l1, l2, taylor, activation, bn_scale or random (default: %(default)s)")
    group.add_argument("--calibration-samples", type=int, default=d.calibration_samples, help="default: %(default)s")
    group.add_argument("--judge", choices=JUDGES.names(), default=d.judge,
                       help="what scores a candidate: accuracy, loss (minus the task's loss), or kl (label-free: "
                            "closeness to the current model's predictions) (default: %(default)s)")
    group.add_argument("--score-samples", type=int, default=d.score_samples,
                       help="validation images (class-stratified) that score candidates (default: %(default)s)")
    group.add_argument("--all-val", dest="score_samples", action="store_const", const=None,
                       help="score candidates on the whole validation split")
    group.add_argument("--score-split", choices=SCORE_SPLITS, default=d.score_split,
                       help="score candidates on validation images or on training images that the BatchNorm "
                            "re-estimation does not use (default: %(default)s)")
    group.add_argument("--bn-samples", type=int, default=d.bn_samples,
                       help="training images that re-estimate each candidate's BatchNorm statistics; 0: off "
                            "(default: %(default)s)")
    group.add_argument("--probe-steps", type=int, default=d.probe_steps,
                       help="KD steps each candidate takes on the BN images before it is scored; 0: off "
                            "(default: %(default)s)")
    group.add_argument("--probe-lr", type=float, default=d.probe_lr, help="their learning rate (default: %(default)s)")
    group.add_argument("--anchor-margin", type=float, default=d.anchor_margin,
                       help="score the step's allocation along the distribution itself too; a sampled candidate "
                            "must beat it by more than this (judge's unit) to be chosen or move the distribution "
                            "(default: off)")
    group.add_argument("--equal-cost", action=_BOOL, default=d.equal_cost,
                       help="every candidate of a step removes the same FLOPs/params (else the same number of "
                            "channels, as in the paper) (default: %(default)s)")
    group.add_argument("--min-keep", type=int, default=d.min_keep, help="channels every group keeps (default: %(default)s)")
    group.add_argument("--max-group-ratio", type=float, default=d.max_group_ratio, metavar="R",
                       help="the run removes at most this share of any group's original width, with every method "
                            "(as Torch-Pruning's max_pruning_ratio); 1: no floor but --min-keep (default: %(default)s)")
    group.add_argument("--round-to", type=_round_to, default=d.round_to, metavar="N|auto",
                       help="keep every layer's width a multiple of N; auto: 1, or with a latency target or "
                            "reward the multiple the latency runtime likes, measured (default: %(default)s)")
    group.add_argument("--keep", action="append", default=[], metavar="MODULE", help="never prune this module (repeatable)")


def _add_kd_arguments(parser: argparse.ArgumentParser) -> None:
    d, c = DistillConfig(), CompressConfig()
    group = parser.add_argument_group("recovery (knowledge distillation)")
    group.add_argument("--kd-epochs", type=int, default=d.epochs, help="KD epochs per recovery (default: %(default)s)")
    group.add_argument("--post-train-period", type=int, default=c.post_train_period,
                       help="recover after every N steps; 0: only the final fine-tune (default: %(default)s)")
    group.add_argument("--final-epochs", type=int, default=c.final_epochs, help="final KD fine-tune (default: %(default)s)")
    group.add_argument("--refit", action=_BOOL, default=c.refit,
                       help="fine-tune the original pruned afresh to the found widths, not the model the steps cut; "
                            "with --post-train-period 0 the search only decides the widths (default: %(default)s)")
    group.add_argument("--kd-lr", type=float, default=d.lr, help="default: %(default)s")
    group.add_argument("--kd-momentum", type=float, default=d.momentum, help="default: %(default)s")
    group.add_argument("--kd-weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    group.add_argument("--kd-nesterov", action=_BOOL, default=d.nesterov, help="default: %(default)s")
    group.add_argument("--kd-warmup-epochs", type=float, default=d.warmup_epochs, help="default: %(default)s")
    group.add_argument("--kd-temperature", type=float, default=d.temperature, help="default: %(default)s")
    group.add_argument("--kd-ce-weight", type=float, default=d.ce_weight,
                       help="weight s of the hard-label loss (default: %(default)s)")
    group.add_argument("--kd-batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    group.add_argument("--kd-max-batches", type=int, default=d.max_batches, metavar="N",
                       help="training batches per KD epoch at most, for ImageNet-size data (default: all)")
    group.add_argument("--kd-augment", action=_BOOL, default=d.augment, help="default: %(default)s")
    group.add_argument("--switch-teacher", action=_BOOL, default=d.switch_teacher,
                       help="the student becomes the teacher once better on validation (default: %(default)s)")
    group.add_argument("--switch-margin", type=float, default=d.switch_margin,
                       help="... better by more than this accuracy fraction (default: %(default)s)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    c = CompressConfig()
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=c.seed, help="default: %(default)s")
    group.add_argument("--device", default=c.device, help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    add_threads_argument(group)
    group.add_argument("--eval-batch-size", type=int, default=c.eval_batch_size, help="default: %(default)s")
    group.add_argument("--amp", choices=AMP_MODES, default=c.amp,
                       help="mixed precision: auto = bf16 on CUDA (fp16 with a gradient scaler on GPUs without "
                            "bf16), off on CPU (default: %(default)s)")
    group.add_argument("--channels-last", action=_BOOL, default=c.channels_last,
                       help="channels_last memory format for convolutions (default: on for CUDA)")
    group.add_argument("--workers", type=int, default=c.workers,
                       help="DataLoader worker processes for streamed image folders; results do not depend on it "
                            "(default: up to 8)")
    group.add_argument("--val-cache-mb", type=int, default=c.val_cache_mb,
                       help="keep the validation split on the device when it fits in this many MiB, else read it "
                            "again for every full evaluation (default: %(default)s)")
    group.add_argument("--latency-batch", type=int, default=c.latency_batch, help="default: %(default)s")
    group.add_argument("--latency-repeats", type=int, default=c.latency_repeats,
                       help="the model and the original take at least 4/5 this many turns of 5 timed calls "
                            "(default: %(default)s)")
    group.add_argument("--latency-threads", type=int, default=c.latency_threads,
                       help="threads while timing (default: %(default)s)")
    group.add_argument("--latency-runtime", default=c.latency_runtime,
                       help="where latency is measured and predicted: torch-cpu, torch-cuda, onnxruntime-cpu; "
                            "auto: PyTorch on --device (default: %(default)s)")
    group.add_argument("--latency-cache", default=c.latency_cache, metavar="DIR",
                       help="directory of latency tables, reused across runs (default: ~/.cache/rlpruner/latency)")
    group.add_argument("--latency-points", type=int, default=c.latency_points,
                       help="widths timed per layer and axis when a latency table is built (default: %(default)s)")
    group.add_argument("--latency-checks", type=int, default=c.latency_checks,
                       help="with --target-latency, time the model when the table says the target is reached; "
                            "if it misses by more than --latency-slack, prune on towards a goal corrected by the "
                            "measurement, at most this many times; 0 trusts the table (default: %(default)s)")
    group.add_argument("--latency-slack", type=float, default=c.latency_slack,
                       help="how far the measured reduction may fall short of --target-latency, a fraction of "
                            "the original's latency; a timing counts as a miss only when its 95%% interval lies "
                            "wholly below (default: %(default)s)")
    group.add_argument("--latency-fresh", action=_BOOL, default=c.latency_fresh,
                       help="time the model against the original in a fresh process (CPU runtimes), away from "
                            "the heap the run's training fragmented (default: when the run optimises latency)")
    group.add_argument("--latency-pair-seconds", type=float, default=c.latency_pair_s, metavar="S",
                       help="how long the model and the original are timed against each other in turns, for "
                            "the report's latency change and each --latency-checks timing; at least "
                            "max(8, --latency-repeats x 4/5) turns (default: %(default)s)")
    group.add_argument("--test", action=_BOOL, default=True,
                       help="evaluate the test split once, on the final model (default: %(default)s)")
    group.add_argument("--progress", action=_BOOL, default=None, help="progress bars (default: on a terminal)")
    group.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                       help="stream per-step scalars and width histograms to TensorBoard event files in DIR "
                            "(needs the tensorboard package)")
    group.add_argument("--report-batch", type=int, default=c.report_batch,
                       help="the report times both models at batch 1 (--latency-batch) and at this batch size "
                            "(default: %(default)s)")


def _round_to(text: str) -> int | str:
    """--round-to: a positive integer or 'auto' (RLConfig validates the number)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None


def target_from_args(args: argparse.Namespace) -> Target:
    for kind in ("flops", "params", "sparsity", "latency"):
        value = getattr(args, f"target_{kind}")
        if value is not None:
            return Target(kind, value)
    return Target("flops", 0.5)


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    """Every number is validated here (by the dataclasses), before any data or model is loaded."""
    rl = RLConfig(**{name: getattr(args, name) for name in RLConfig.__dataclass_fields__})
    kd = DistillConfig(epochs=args.kd_epochs, lr=args.kd_lr, momentum=args.kd_momentum,
                       weight_decay=args.kd_weight_decay, nesterov=args.kd_nesterov,
                       warmup_epochs=args.kd_warmup_epochs, temperature=args.kd_temperature,
                       ce_weight=args.kd_ce_weight, batch_size=args.kd_batch_size, max_batches=args.kd_max_batches,
                       augment=args.kd_augment,
                       switch_teacher=args.switch_teacher, switch_margin=args.switch_margin)
    reward = Reward(args.strategy, args.flops_weight, args.params_weight, args.latency_weight)
    return CompressConfig(target=target_from_args(args), reward=reward, rl=rl, kd=kd,
                          post_train_period=args.post_train_period, final_epochs=args.final_epochs, refit=args.refit,
                          keep=tuple(args.keep), eval_batch_size=args.eval_batch_size,
                          latency_batch=args.latency_batch, latency_repeats=args.latency_repeats,
                          latency_threads=args.latency_threads, report_batch=args.report_batch,
                          latency_runtime=args.latency_runtime, latency_cache=args.latency_cache,
                          latency_points=args.latency_points, latency_checks=args.latency_checks,
                          latency_slack=args.latency_slack, latency_pair_s=args.latency_pair_seconds,
                          latency_fresh=args.latency_fresh,
                          seed=args.seed, device=args.device, amp=args.amp, channels_last=args.channels_last,
                          workers=args.workers,
                          val_cache_mb=args.val_cache_mb, progress=args.progress, method=args.method)


def run(args: argparse.Namespace) -> int:
    from ..distributed import join
    from ..search import compress
    from ..train import resolve_device

    config = config_from_args(args)
    if args.tensorboard is not None:
        from ..search.tensorboard import require_tensorboard

        require_tensorboard()  # before any data or model is loaded
    set_threads(args.threads)
    world = join(resolve_device(config.device))  # torchrun's processes, or this one alone
    say = (lambda line: print(line, flush=True)) if world.main else (lambda line: None)
    loaded = load_model_and_data(args, seed=config.seed)
    model, spec, splits = loaded.model, loaded.spec, loaded.splits
    if loaded.fresh:
        say(f"note: {loaded.source} is freshly initialised (no trained weights); compress a checkpoint from "
            "`rlpruner train`, or give --weights, for meaningful accuracy")
    check_fits(model, splits, torch.device("cpu"), loaded.source)
    out = Path(args.out) if args.out else Path("runs") / f"compress-{Path(loaded.source).stem.replace(':', '-')}"
    processes = f", {world.size} processes" if world.active else ""
    say(f"compressing {loaded.source} on {spec.name}: target {config.target.kind} -{config.target.value:.0%}, "
        f"method {config.method}, strategy {config.reward.strategy}, run directory {out}{processes}")
    result = compress(model, splits, config, out_dir=out, resume=args.resume, overwrite=args.overwrite,
                      log=say, evaluate_test=args.test,
                      meta={"data": spec.resolved(splits).to_dict(), "command": command_line(args)},
                      tensorboard=args.tensorboard)
    if world.main:
        print_compress_summary(result.results)
        print(f"wrote {result.paths['model']}; open {result.paths['html']} for the report")
    return 0
