"""Faults a compression run meets: a kill anywhere, corrupt or foreign state, a full disk, a second
run on the same directory. Each asserts the outcome: the final model and results equal to an
uninterrupted run's, files intact, one clear message."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlpruner import io
from rlpruner.models import create_model
from rlpruner.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("fault_runner.py")
sys.path.insert(0, str(RUNNER.parent))
import fault_runner  # noqa: E402


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    train(model, fault_runner.data(), TrainConfig(epochs=3, lr=0.05, batch_size=16, progress=False))
    return io.save(model.eval(), tmp_path_factory.mktemp("base") / "base.rlp")


def _run(model, out, event="none", nth=0, *extra):
    return subprocess.run([sys.executable, str(RUNNER), str(model), str(out), event, str(nth), *map(str, extra)],
                          capture_output=True, text=True, cwd=ROOT)


def _same_run(a: Path, b: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "same_run.py"), str(a), str(b)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_kill_anywhere_then_resume_gives_the_uninterrupted_result(base_model, tmp_path):
    """20 seeded SIGKILL points (mid-write, after a rename, mid-recovery, mid-final-fine-tune, while
    scoring); each run is resumed (or restarted, when it died before its first checkpoint) and must
    end bit-identical to the uninterrupted run."""
    reference = tmp_path / "reference"
    done = _run(base_model, reference, "none", 0, "--count", tmp_path / "counts.json")
    assert done.returncode == 0, done.stderr
    counts = json.loads((tmp_path / "counts.json").read_text())
    events = sorted(e for e in ("write", "renamed", "batch", "candidate") if counts.get(e))
    rng = np.random.default_rng(0)
    points = {(str(e), int(rng.integers(1, counts[e] + 1))) for e in rng.choice(events, 40)}
    points = sorted(points)[:20]
    # the last batches belong to the final fine-tune, the last writes to the final model and report
    points += [("batch", counts["batch"]), ("write", counts["write"])]
    for event, nth in points:
        out = tmp_path / f"{event}-{nth}"
        killed = _run(base_model, out, event, nth)
        assert killed.returncode == -9, f"{event} #{nth} did not kill the run: {killed.stderr[-500:]}"
        state = out / "state.json"
        if state.exists():
            json.loads(state.read_text())  # never a half-written state file
        finished = _run(base_model, out, "none", 0, *(["--resume"] if state.exists() else []))
        assert finished.returncode == 0, f"{event} #{nth}: {finished.stderr[-800:]}"
        _same_run(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("signals, name", [(1, "SIGINT"), (2, "SIGINT"), (1, "SIGTERM")])
def test_ctrl_c_stops_at_a_safe_point_and_resumes_to_the_same_result(base_model, tmp_path, signals, name):
    """One Ctrl-C: the step in progress finishes and is checkpointed, the run says how to resume and
    exits 130. Two: it stops at once, and the last checkpoint is still whole. Either way the resumed
    run ends where the uninterrupted one does."""
    reference = tmp_path / "reference"
    assert _run(base_model, reference, "none", 0, "--count", tmp_path / "counts.json").returncode == 0
    counts = json.loads((tmp_path / "counts.json").read_text())
    out = tmp_path / "cut"
    extra = ["--signal"] * signals + (["--sigterm"] if name == "SIGTERM" else [])
    stopped = _run(base_model, out, "candidate", counts["candidate"] // 2, *extra)
    assert stopped.returncode == 130, stopped.stderr[-800:]
    if signals == 1:
        assert f"stopped by {name} after step" in stopped.stderr and "--resume" in stopped.stderr
    else:
        assert "interrupted" in stopped.stderr
    state = json.loads((out / "state.json").read_text())
    assert 1 <= state["step"] and not (out / "model.rlp").exists()
    assert _run(base_model, out, "none", 0, "--resume").returncode == 0
    _same_run(reference, out)


# --------------------------------------------------------------------------------------------------
# In-process faults (fast)
# --------------------------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _compress(base_model, out, **kwargs):
    from rlpruner.search import compress

    return compress(io.load(base_model), fault_runner.data(), kwargs.pop("config", fault_runner.CONFIG),
                    out_dir=out, **kwargs)


class _Stop(Exception):
    pass


def _stopped_after_two_steps(base_model, out):
    def stop(record):
        if record.step == 2:
            raise _Stop

    with pytest.raises(_Stop):
        _compress(base_model, out, on_step=stop)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit_pd(path):
    state = json.loads(path.read_text())
    state["pd"][0] += 0.01
    path.write_text(json.dumps(state))


def _old_version(path):
    state = json.loads(path.read_text())
    state["version"] = 0
    path.write_text(json.dumps(state))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, target, message", [
    (_truncate, "state.json", "not valid JSON, truncated or damaged"),
    (_edit_pd, "state.json", "edited or damaged"),
    (_old_version, "state.json", "state format v0; this version reads v1"),
    (lambda p: p.unlink(), "checkpoint/step_0002.rlp", "step_0002.rlp: missing"),
    (_flip_a_byte, "checkpoint/step_0002.rlp", "step_0002.rlp: altered or damaged"),
])
def test_corrupt_state_is_refused_by_name_and_nothing_is_overwritten(base_model, tmp_path, damage, target, message):
    from rlpruner.errors import CheckpointError

    out = tmp_path / "run"
    _stopped_after_two_steps(base_model, out)
    damage(out / target)
    before = _files(out)
    with pytest.raises(CheckpointError, match=message) as caught:
        _compress(base_model, out, resume=True)
    assert Path(target).name in str(caught.value)
    assert _files(out) == before


def test_a_full_disk_keeps_the_last_checkpoint_and_resumes_to_the_same_result(base_model, tmp_path, monkeypatch):
    import errno

    from rlpruner.errors import CheckpointError
    from rlpruner.search import checkpoint

    reference = _compress(base_model, tmp_path / "reference")
    real = checkpoint.io.atomic_write_json

    def full_at_step_two(path, obj, **kw):
        if Path(path).name == "state.json" and obj["step"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj, **kw)

    monkeypatch.setattr(checkpoint.io, "atomic_write_json", full_at_step_two)
    out = tmp_path / "full"
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left on device; the checkpoint of step 1 is "
                                              r"intact: free space"):
        _compress(base_model, out)
    assert json.loads((out / "state.json").read_text())["step"] == 1
    monkeypatch.setattr(checkpoint.io, "atomic_write_json", real)
    from rlpruner.search import run  # the final model cannot be written either: every step stays

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "write_weights", no_space)
    with pytest.raises(CheckpointError, match="final model and report .*No space left on device; every step is "
                                              "checkpointed"):
        _compress(base_model, out, resume=True)
    assert json.loads((out / "state.json").read_text())["done"] and not (out / "model.rlp").exists()
    monkeypatch.undo()
    resumed = _compress(base_model, out, resume=True)
    untimed = [{k: v for k, v in r.results["final"].items() if not k.startswith("latency")} for r in (resumed, reference)]
    assert untimed[0] == untimed[1]
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_run_on_a_live_runs_directory_is_refused_and_a_dead_ones_lock_is_free(base_model, tmp_path):
    from rlpruner.errors import ConfigError
    from rlpruner.io.lock import directory_lock

    out = tmp_path / "run"
    with directory_lock(out, "compression run"):
        with pytest.raises(ConfigError, match=r"in use by another compression run \(pid \d+ on "):
            _compress(base_model, out)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from rlpruner.io.lock import directory_lock\n"
                               f"with directory_lock(Path({str(out)!r}), 'x'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match="in use"):
        _compress(base_model, out)
    holder.kill()  # SIGKILL: the holder never releases the lock itself
    holder.wait()
    assert _compress(base_model, out, config=dataclasses.replace(fault_runner.CONFIG, final_epochs=0)).records


def test_a_diverging_recovery_restarts_gentler_or_stops_without_saving_a_nan_model(base_model, tmp_path, monkeypatch):
    from rlpruner import distill
    from rlpruner.errors import DivergenceError

    real, calls = distill.LogitsKD.loss, {"n": 0}

    def nan_on(window):
        def loss(self, student, teacher, weight):
            calls["n"] += 1
            value = real(self, student, teacher, weight)
            return value * float("nan") if calls["n"] in window else value
        return loss

    lines = []
    monkeypatch.setattr(distill.LogitsKD, "loss", nan_on({5, 6}))  # the first attempt and the first retry
    result = _compress(base_model, tmp_path / "retried", log=lines.append)
    assert any("diverged; restarted 2 time(s)" in line for line in lines)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())

    calls["n"] = 0
    monkeypatch.setattr(distill.LogitsKD, "loss", nan_on(range(5, 10**6)))
    out = tmp_path / "diverged"
    with pytest.raises(DivergenceError, match="after 2 restart"):
        _compress(base_model, out)
    assert not (out / "model.rlp").exists()
    if (out / "state.json").exists():  # the steps before the divergence: whole, resumable
        assert not json.loads((out / "state.json").read_text())["done"]


def test_a_nan_metric_while_scoring_stops_the_run_and_keeps_the_last_checkpoint(base_model, tmp_path):
    from rlpruner.task import TaskError

    calls = {"n": 0}

    def metric(model, batches):
        calls["n"] += 1
        if calls["n"] > 12:
            return float("nan")
        return sum(float((model(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)

    out = tmp_path / "run"
    with pytest.raises(TaskError, match="returned nan"):
        _compress(base_model, out, metric=metric)
    assert not (out / "model.rlp").exists()
    if (out / "state.json").exists():
        assert json.loads((out / "state.json").read_text())["step"] >= 1


def test_a_model_with_non_finite_weights_is_never_written(tmp_path):
    from rlpruner.errors import CheckpointError
    from rlpruner.search.checkpoint import write_weights

    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[8, 16])
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        write_weights(model, tmp_path / "m.rlp", {})
    assert not (tmp_path / "m.rlp").exists()
