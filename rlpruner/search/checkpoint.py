"""Checkpoints: what a run's state is, how it is saved after every step, and how a run resumes.

`state.json` holds the options, the original model's fingerprint, the learned distribution, and
every step's removals; weights are saved per step (named by step, so state.json always points at
complete files). A resume rebuilds each step's architecture by replaying its removals on the
original model, then loads the weights; the random generators need no saving (every draw of step
k is seeded by (seed, k, ...)).
"""
from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .. import io
from ..allocation import policy
from ..errors import CheckpointError, RLPrunerError
from ..graph import trace
from ..models.registry import SPEC_ATTR
from ..report import StepRecord, write_logs
from ..surgery import prune_channels
from .config import PRESENTATION_OPTIONS, CompressConfig
from .context import Context


@dataclass(frozen=True)
class Teacher:
    model: nn.Module
    step: int | None                       # the step whose student it is; None: the original model
    val: float                             # its validation accuracy

    @property
    def label(self) -> str:
        return "original" if self.step is None else f"step {self.step}"


@dataclass
class State:
    step: int
    pd: np.ndarray
    model: nn.Module
    teacher: Teacher
    acc_ref: float                         # validation accuracy of the last step's model as pruned (guard)
    removals: list[dict[str, list[int]]]   # per step, in that step's unit numbering (for replay)
    records: list[StepRecord]
    done: bool = False
    goal: float | None = None              # the goal in effect when a timing corrected the context's (measured.py)
    checks: list[dict[str, Any]] = field(default_factory=list)  # the timings of a latency target, in order


STATE_FORMAT, STATE_VERSION = "rlpruner.compress-state", 1


def write_weights(model: nn.Module, path: Path, meta: Mapping[str, Any]) -> None:
    """`rlpruner.io.save` when the model knows how to rebuild itself, else plain safetensors. A model
    with non-finite weights (a diverged run) is never saved."""
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"refusing to write {path}: non-finite values in {', '.join(bad[:3])} (the run "
                              "diverged); the previous checkpoint is intact")
    if getattr(model, SPEC_ATTR, None) is not None:
        io.save(model, path, meta=meta)
        return
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    io.atomic_write_bytes(path, safetensors_bytes(tensors))


def _read_tensors(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the run directory is incomplete")
    return path.read_bytes()


def _load_into(model: nn.Module, data: bytes, path: Path) -> None:
    try:
        model.load_state_dict(safetensors_load(data), strict=True)
    except Exception as exc:  # safetensors' own errors and load_state_dict's RuntimeError alike
        raise CheckpointError(f"{path}: does not fit the model rebuilt from the run's removals: "
                              f"{str(exc).splitlines()[0]}") from exc


def save_checkpoint(ctx: Context, state: State) -> None:
    """Weights first (new names), then state.json pointing at them (atomic), then stale files go: a
    failure or a kill at any point leaves the previous checkpoint whole. A failed write (a full disk,
    a read-only directory) is a CheckpointError that says so."""
    folder = ctx.out_dir / "checkpoint"
    weights = folder / f"step_{state.step:04d}.rlp"
    teacher = None if state.teacher.step is None else folder / f"teacher_step_{state.teacher.step:04d}.rlp"
    try:
        write_weights(state.model, weights, {"step": state.step})
        if teacher is not None and not teacher.exists():
            write_weights(state.teacher.model, teacher, {"step": state.teacher.step})
        body = {
            "format": STATE_FORMAT, "version": STATE_VERSION, "config": ctx.config.to_dict(),
            "fingerprint": ctx.fingerprint, "step": state.step, "pd": state.pd.tolist(), "done": state.done,
            "teacher_step": state.teacher.step, "teacher_val": state.teacher.val, "acc_ref": state.acc_ref,
            "weights": weights.relative_to(ctx.out_dir).as_posix(), "weights_sha256": file_digest(weights),
            "teacher_weights": None if teacher is None else teacher.relative_to(ctx.out_dir).as_posix(),
            "teacher_sha256": None if teacher is None else file_digest(teacher),
            "removals": state.removals, "records": [r.to_dict() for r in state.records],
            "goal": state.goal, "latency_checks": state.checks}
        io.atomic_write_json(ctx.out_dir / "state.json", {**body, "digest": _digest(body)})
        write_logs(ctx.out_dir, state.records)
    except OSError as exc:
        kept = f"the checkpoint of step {state.step - 1} is intact" if state.step > 1 else "nothing was lost"
        raise CheckpointError(f"cannot write the checkpoint of step {state.step} in {ctx.out_dir}: "
                              f"{exc.strerror or exc}; {kept}: free space there (or make it writable) and "
                              "resume") from exc
    for stale in folder.glob("*.rlp"):  # only after state.json points at the new files
        if stale not in (weights, teacher):
            stale.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(body: Mapping[str, Any]) -> str:
    """A digest of state.json's content: an edited or damaged file is refused, not half-trusted."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=io.atomic.json_default).encode()).hexdigest()


def _read_state(ctx: Context) -> dict[str, Any]:
    path = ctx.out_dir / "state.json"
    if not path.is_file():
        raise CheckpointError(f"{ctx.out_dir}: nothing to resume (no state.json); run without --resume")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON, truncated or damaged ({exc}); nothing was changed: start "
                              "a new run (--overwrite) or restore the file") from exc
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a compression run's state file")
    if saved.get("version") != STATE_VERSION:
        raise CheckpointError(f"{path}: written by an rlpruner with state format v{saved.get('version')}; this "
                              f"version reads v{STATE_VERSION}: finish it with that version or start a new run")
    body = {k: v for k, v in saved.items() if k != "digest"}
    if "digest" in saved and saved["digest"] != _digest(body):
        raise CheckpointError(f"{path}: edited or damaged (its content does not match its digest); nothing was "
                              "changed: restore the file or start a new run (--overwrite)")
    if saved["fingerprint"] != ctx.fingerprint:
        raise CheckpointError(f"{path}: the run was started from a different model (weights or architecture "
                              "differ); resume with the same model or use a new output directory")
    _check_same_config(ctx.config, saved["config"], path)
    return saved


def _check_same_config(config: CompressConfig, saved: Mapping[str, Any], path: Path) -> None:
    """A resumed run must use the options it started with (progress bars excepted). An option that the
    version which started the run did not have yet ran at its default."""

    def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(flat(value, f"{prefix}{key}."))
            elif key not in PRESENTATION_OPTIONS:
                out[prefix + key] = value
        return out

    now, then = flat(config.to_dict()), {**flat(CompressConfig().to_dict()), **flat(saved)}
    changed = [f"{k} (run: {then.get(k)!r}, now: {now.get(k)!r})" for k in sorted(set(now) | set(then))
               if now.get(k) != then.get(k)]
    if changed:
        raise CheckpointError(f"{path}: cannot resume with different options: {'; '.join(changed[:5])}")


def _replay(ctx: Context, removals: list[dict[str, list[int]]], teacher_step: int | None
            ) -> tuple[nn.Module, nn.Module]:
    """Rebuild the architecture of every step by re-applying its removals to the original model."""

    model, teacher = copy.deepcopy(ctx.original), ctx.original
    for step, step_removals in enumerate(removals, start=1):
        try:
            graph = trace(model, ctx.data.example, keep=ctx.config.keep)
            model = prune_channels(model, graph, {n: np.asarray(u, dtype=np.int64) for n, u in step_removals.items()})
        except RLPrunerError as exc:
            raise CheckpointError(f"{ctx.out_dir}: step {step} of the saved run does not apply to this model: "
                                  f"{exc}") from exc
        if step == teacher_step:
            teacher = copy.deepcopy(model)
    return model, teacher


def resumed_state(ctx: Context) -> State:
    """The saved run, as it was after its last checkpoint. Rank 0 reads and checks the files and
    sends them to the other ranks of a multi-process run (their nodes need not see the directory)."""
    saved, weights, teacher_weights = ctx.world.first(lambda: _read_checkpoint(ctx), "reading the checkpoint")
    model, teacher = _replay(ctx, saved["removals"], saved["teacher_step"])
    _load_into(model, weights, ctx.out_dir / saved["weights"])
    if saved["teacher_step"] is not None:
        _load_into(teacher, teacher_weights, ctx.out_dir / saved["teacher_weights"])
    return State(step=saved["step"], pd=np.asarray(saved["pd"], dtype=np.float64), model=model,
                  teacher=Teacher(teacher.eval(), saved["teacher_step"], saved["teacher_val"]),
                  acc_ref=saved["acc_ref"], removals=saved["removals"],
                  records=[StepRecord.from_dict(r) for r in saved["records"]], done=saved["done"],
                  goal=saved.get("goal"), checks=saved.get("latency_checks", []))


def _read_checkpoint(ctx: Context) -> tuple[dict[str, Any], bytes, bytes | None]:
    """state.json and the weights files it points at (the model's, the teacher's), checked."""
    saved = _read_state(ctx)
    weights = _read_checked(ctx.out_dir / saved["weights"], saved.get("weights_sha256"))
    teacher = (None if saved["teacher_step"] is None else
               _read_checked(ctx.out_dir / saved["teacher_weights"], saved.get("teacher_sha256")))
    return saved, weights, teacher


def _read_checked(path: Path, sha256: str | None) -> bytes:
    data = _read_tensors(path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"{path}: altered or damaged (its checksum differs from the one state.json "
                              "recorded); nothing was changed: restore it or start a new run (--overwrite)")
    return data


def fresh_state(ctx: Context) -> State:
    sizes = np.array(list(ctx.original_sizes.values()))
    capacity = ctx.config.rl.capacity(sizes)
    return State(step=0, pd=policy.density_init(sizes, capacity), model=copy.deepcopy(ctx.original),
                  teacher=Teacher(ctx.original, None, ctx.base["val_acc"]),
                  acc_ref=ctx.base["val_acc"], removals=[], records=[])
