"""`compress`: the RL-Pruner loop from start to finish.

    prepare (context.py) -> fresh or resumed state (checkpoint.py) -> steps until the target is
    reached (step.py; a latency target is then checked by timing, measured.py), each checkpointed ->
    final fine-tune, final measurements, saved model, report.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..batches import OnDevice
from ..distributed import join
from ..errors import CheckpointError, ConfigError, Interrupted
from ..graph import trace
from ..io.lock import directory_lock
from ..models.registry import SPEC_ATTR
from ..report import StepRecord, summary_markdown, write_report
from ..report_html import metric_format
from ..task import Forward, Loss, Metric, Task
from ..train import resolve_device
from .checkpoint import (
    State,
    fresh_state,
    resumed_state,
    save_checkpoint,
    write_weights,
)
from .config import CompressConfig, Target
from .context import FINAL, OVERHEAD_KEYS, Context, prepare
from .measured import check_measured, in_effect
from .refit import refit
from .signals import stop_signals
from .step import distill_for, run_step, step_line
from .tensorboard import TensorBoardLog, require_tensorboard


@dataclass
class CompressResult:
    model: nn.Module                       # the compressed, recovered model (eval mode)
    results: dict[str, Any]                # what results.json holds
    records: list[StepRecord]
    paths: dict[str, Path] = field(default_factory=dict)


def compress(model: nn.Module, data: Any, config: CompressConfig | None = None, *,
             out_dir: str | Path, target: str | Target | None = None, metric: Metric | None = None,
             loss: Loss | None = None, forward: Forward | None = None, resume: bool = False,
             overwrite: bool = False, log: Callable[[str], None] | None = None,
             on_step: Callable[[StepRecord], None] | None = None, evaluate_test: bool = True,
             meta: Mapping[str, Any] | None = None, tensorboard: str | Path | None = None) -> CompressResult:
    """Compress `model` with RL-Pruner until the target is met; returns the recovered model.

        result = compress(model, (train_loader, val_loader), target="flops:0.5", metric=miou,
                          loss=seg_loss, out_dir="runs/x")

    `data`: `(train_loader, val_loader[, test_loader])` (any iterables of batches: tuples, lists or
    dicts), or rlpruner's `Splits` / `Loaders`. Candidates are scored on validation; the test split,
    when present and `evaluate_test`, is evaluated ONCE, on the final model, for the report.
    `target` ("flops:0.5", "params:0.6", "latency:0.4", "sparsity:0.3" or a `Target`) overrides
    `config.target`. The task (docs/compress.md): `forward(model, batch)` makes outputs (default
    `model(batch[0])`); `metric(model, batches) -> float`, higher is better (default top-1) scores
    candidates, guards, picks recovery epochs and the teacher, and is reported; `loss(outputs, batch)`
    (default cross-entropy) drives Taylor importance and the task part of recovery.

    `out_dir` receives the checkpoint (after every step), logs, plots, results.json, summary.md and
    the final model (model.rlp). `resume=True` continues the run saved in `out_dir`;
    a fresh run refuses a directory holding another run unless `overwrite`. `log` receives one line
    per step; `on_step` is called with each step's record after its checkpoint is written. `meta`
    is added to the saved model's metadata (e.g. the data spec). `tensorboard` is a directory that
    receives TensorBoard events as the run goes (rlpruner.search.tensorboard). The input model is
    not modified.
    """
    config = config or CompressConfig()
    if target is not None:
        config = replace(config, target=target if isinstance(target, Target) else Target.parse(target))
    task = Task.from_user(metric=metric, loss=loss, forward=forward)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output directory {out_dir} is a file")
    if tensorboard is not None:
        require_tensorboard()
    world = join(resolve_device(config.device))  # torchrun's processes, or this one alone
    main = world.main  # rank 0 alone holds the directory's lock, writes and logs
    with contextlib.ExitStack() as cleanup:
        world.first(lambda: (cleanup.enter_context(directory_lock(out_dir, "compression run")),
                             _check_out_dir(out_dir, resume, overwrite)), "checking the run directory")
        ctx = prepare(model, data, config, out_dir, (log if main else None) or (lambda line: None), task, world)
        if not resume:  # only once the new run's options and target have been checked
            world.first(lambda: _clear_run(out_dir), "clearing the run directory")
        state = resumed_state(ctx) if resume else fresh_state(ctx)
        if resume:
            ctx.log(f"resuming {out_dir} after step {state.step}")
        board = None
        if tensorboard is not None and main:
            board = TensorBoardLog(tensorboard, ctx.original_sizes, ctx.base, ctx.task.metric_name,
                                   resumed_after=state.step)
            cleanup.callback(board.close)
        with stop_signals(ctx.log) as stop:
            while not state.done:
                state = run_step(in_effect(ctx, state), state)
                ctx.log(step_line(state.records[-1]))
                state = check_measured(ctx, state)  # a latency target reached by the table: timed
                with ctx.timer("checkpoint"):
                    world.first(lambda: save_checkpoint(ctx, state), f"step {state.step}: writing the checkpoint")
                if board is not None:
                    board.step(state.records[-1])
                if on_step is not None and main:
                    on_step(state.records[-1])
                if world.any(stop.requested is not None, "stop request"):  # every rank stops after the same step
                    raise Interrupted(f"stopped by {stop.requested or 'a signal to another process'} after step "
                                      f"{state.step}; {out_dir} holds the run: resume it with --resume (Python: "
                                      "resume=True)")
            stop.at_once = True  # the final phase is redone from the last checkpoint on resume
            try:
                result = _finish(ctx, state, evaluate_test, dict(meta or {}))
            except KeyboardInterrupt:
                raise Interrupted(f"stopped by {stop.requested or 'SIGINT'} during the final fine-tune; {out_dir} holds "
                                  "every step: resume it with --resume (Python: resume=True) to redo the final "
                                  "phase") from None
            if board is not None:
                board.finish(result.results, summary_markdown(result.results, result.records))
            return result


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    state = out_dir / "state.json"
    if resume or not state.exists():
        return
    if not overwrite:
        raise ConfigError(f"{out_dir} already holds a compression run; resume it (--resume), overwrite it "
                          "(--overwrite) or choose another output directory")


def _clear_run(out_dir: Path) -> None:
    (out_dir / "state.json").unlink(missing_ok=True)
    for old in (out_dir / "checkpoint").glob("*.rlp"):
        old.unlink()
    for leftover in [*out_dir.glob(".*.tmp"), *(out_dir / "checkpoint").glob(".*.tmp")]:
        leftover.unlink(missing_ok=True)  # a killed run's half-written temporary files


def _finish(ctx: Context, state: State, evaluate_test: bool, meta: dict[str, Any]) -> CompressResult:
    """Final fine-tune, final measurements (test split once, here), the saved model and the report."""
    model, start = state.model, time.perf_counter()
    refitted = None
    if ctx.config.refit:
        model, refitted = _refit(ctx, state)
    if ctx.config.final_epochs > 0:
        distill_for(ctx, model, state.teacher, ctx.config.final_epochs, state.step, FINAL)
    model.eval()
    graph = trace(model, ctx.data.example, keep=ctx.config.keep)
    params, flops = graph.count()
    final = {"params": params, "flops": flops, "val_acc": ctx.evaluate(model)}
    base = {k: ctx.base[k] for k in ("params", "flops", "val_acc")}
    timed, where = ctx.latency_ratio(model)
    base["latency_ms"], final["latency_ms"] = timed.first_ms, timed.second_ms
    final["latency_change"] = {"change": timed.ratio - 1.0, "low": timed.low - 1.0, "high": timed.high - 1.0,
                               "turns": timed.turns, "confidence": timed.confidence, "process": where}
    if ctx.latency_table is not None:  # beside the measurements: what the search believed
        base["predicted_latency_ms"] = ctx.base["latency_ms"]
        final["predicted_latency_ms"] = ctx.latency_table.predict(graph.shapes)
    base["latency_batch_ms"], final["latency_batch_ms"] = ctx.latency_pair_ms(ctx.original, model,
                                                                              ctx.config.report_batch)
    test = ctx.data.source.test(ctx.config.eval_batch_size) if evaluate_test else None
    if test is not None:
        test = OnDevice(test, ctx.device)
        base["test_acc"], final["test_acc"] = ctx.world.first(
            lambda: tuple(ctx.task.evaluate(m, test, ctx.device) for m in (ctx.original, model)), "the test split")
    model_path = ctx.out_dir / ("model.rlp" if getattr(model, SPEC_ATTR, None) else "model.safetensors")
    if ctx.data.input_shape is not None:
        meta.update(input_shape=ctx.data.input_shape)
    meta.update(compress={"target": ctx.config.to_dict()["target"], "steps": state.step})
    results = _results(ctx, state, base, final, model_path, time.perf_counter() - start)
    results["command"] = meta.get("command")  # the CLI's command line, shown in the report
    results["refit"] = refitted
    paths = ctx.world.first(lambda: _write_final(ctx, model, model_path, meta, results, state),
                            "writing the final model and report")
    shown = metric_format(ctx.task.is_percent)
    ctx.log(f"done: {state.step} steps; FLOPs {base['flops']:,} -> {flops:,}, params {base['params']:,} -> "
            f"{params:,}, val {ctx.task.metric_name} {shown.format(base['val_acc'])} -> "
            f"{shown.format(final['val_acc'])}; wrote {ctx.out_dir}")
    return CompressResult(model=model, results=results, records=state.records, paths=paths)


def _refit(ctx: Context, state: State) -> tuple[nn.Module, dict[str, float]]:
    """The original pruned to the searched model's widths, and both models' validation metric
    before the final fine-tune (what the log and results.json show)."""
    widths = state.records[-1].widths if state.records else dict(ctx.original_sizes)
    searched = ctx.evaluate(state.model)
    model = refit(ctx, widths)
    fresh = ctx.evaluate(model)
    shown = metric_format(ctx.task.is_percent)
    ctx.log(f"refit: the original pruned to the {state.step} steps' widths, {ctx.task.metric_name} "
            f"{shown.format(fresh)} before the final fine-tune (the searched model: {shown.format(searched)})")
    return model, {"searched_val": searched, "refit_val": fresh}


def _write_final(ctx: Context, model: nn.Module, model_path: Path, meta: dict[str, Any], results: dict[str, Any],
                 state: State) -> dict[str, Path]:
    try:
        write_weights(model, model_path, meta)
        paths = write_report(ctx.out_dir, results, state.records, ctx.original_sizes)
    except OSError as exc:
        raise CheckpointError(f"cannot write the final model and report in {ctx.out_dir}: {exc.strerror or exc}; "
                              "every step is checkpointed: free space there (or make it writable) and resume "
                              "to redo the final phase") from exc
    return {**paths, "model": model_path}


def _results(ctx: Context, state: State, base: dict, final: dict, model_path: Path,
             final_s: float) -> dict[str, Any]:
    timing: dict[str, float] = {}
    for record in state.records:  # per-step times survive a resume; this session's final phase is added
        for key, value in record.times.items():
            timing[key] = timing.get(key, 0.0) + value
    eval_s = timing.get("eval", 0.0)
    search_s = sum(timing.get(k, 0.0) for k in OVERHEAD_KEYS)
    checkpoint_s = ctx.timer.seconds.get("checkpoint", 0.0)  # this session's: not part of the step records
    spec = getattr(ctx.original, SPEC_ATTR, None) or {}
    return {
        "model": spec.get("name", type(ctx.original).__name__), "dataset": ctx.data.source.name,
        "method": ctx.config.method, "metric": {"name": ctx.task.metric_name, "percent": ctx.task.is_percent},
        "distill_outputs": ctx.distiller.name, "device": str(ctx.device), "precision": ctx.precision.name,
        "world_size": ctx.world.size,
        "target": {"kind": ctx.config.target.kind, "value": ctx.config.target.value},
        "reached": {"sparsity": state.records[-1].sparsity if state.records else 0.0,
                    "flops": 1.0 - final["flops"] / base["flops"], "params": 1.0 - final["params"] / base["params"],
                    "latency": -final["latency_change"]["change"]},  # the turns' median ratio, as the report
        "latency": {"batch": ctx.config.latency_batch, "report_batch": ctx.config.report_batch,
                    "threads": ctx.config.latency_threads, "device": str(ctx.device), "runtime": ctx.runtime.name,
                    "round_to": ctx.config.rl.round_to,
                    "table": None if ctx.latency_table is None else ctx.latency_table.key},
        "latency_checks": state.checks,
        "steps": state.step, "time_s": timing.get("wall_s", 0.0) + final_s + checkpoint_s,
        "base": base, "final": final, "model_path": model_path.name,
        "timing": {"eval_s": eval_s, "search_s": search_s, "overhead": search_s / eval_s if eval_s else None,
                   **{f"{k}_s": timing.get(k, 0.0) for k in OVERHEAD_KEYS},
                   "probe_s": timing.get("probe", 0.0), "recovery_s": timing.get("recovery", 0.0), "final_s": final_s, "checkpoint_s": checkpoint_s},
        "widths": {n: [ctx.original_sizes[n], state.records[-1].widths[n] if state.records else ctx.original_sizes[n]]
                   for n in ctx.names},
        "config": ctx.config.to_dict(),
    }
