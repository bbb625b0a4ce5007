"""Models and weights users already have: `timm:NAME` / `torchvision:NAME` and `--weights FILE`.

timm is tested with timm itself; torchvision (no CPU build on our machines) and timm's import of it
use tests/stand_ins when the real torchvision does not import (see its README).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import rlpruner
from rlpruner.cli import main
from rlpruner.errors import CheckpointError, ConfigError
from rlpruner.io import load_weights, read_state_dict
from rlpruner.models import hubs, model_from_spec, spec_problem

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def timm(library_path):
    return pytest.importorskip("timm", reason="timm is not installed (make install adds it for the tests)")


@pytest.fixture(scope="module")
def torchvision(library_path):
    import torchvision

    return torchvision


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a.eval()(x) - b.eval()(x)).abs().max().item()


# --------------------------------------------------------------------------------------------------
# Models by name
# --------------------------------------------------------------------------------------------------

def test_a_timm_model_by_name_prunes_saves_and_rebuilds_without_allow_imports(timm, tmp_path):
    torch.manual_seed(0)
    model = rlpruner.create_model("timm:resnet18", num_classes=7, in_channels=1)
    assert model.rlpruner_spec == {"source": "timm", "name": "timm:resnet18",
                                   "kwargs": {"num_classes": 7, "in_channels": 1}}
    x = torch.randn(2, 1, 48, 48)
    assert model(x).shape == (2, 7)
    before = rlpruner.count(model, x[:1]).flops
    small = rlpruner.prune(model, x[:1], ratio=0.5)
    assert rlpruner.count(small, x[:1]).flops < 0.5 * before
    rlpruner.save(small, tmp_path / "small.rlp")
    back = rlpruner.load(tmp_path / "small.rlp")  # a library name is trusted like a zoo name
    assert type(back) is type(small) and _same(back, small, x) == 0.0


def test_a_torchvision_model_by_name(torchvision, tmp_path):
    model = rlpruner.create_model("torchvision:resnet18", num_classes=4)
    assert model.rlpruner_spec["source"] == "torchvision"
    x = torch.randn(2, 3, 16, 16)
    small = rlpruner.prune(model, x[:1], ratio=0.5)
    rlpruner.save(small, tmp_path / "s.rlp")
    assert _same(rlpruner.load(tmp_path / "s.rlp"), small, x) == 0.0


def test_weight_choosing_options_are_passed_on_but_not_recorded(timm):
    model = rlpruner.create_model("timm:resnet18", num_classes=3, pretrained=False, drop_rate=0.1)
    assert model.rlpruner_spec["kwargs"] == {"num_classes": 3, "in_channels": 3, "drop_rate": 0.1}


@pytest.mark.parametrize("name, message", [
    ("timm:resnt18", "unknown timm model 'resnt18'"),
    ("timm:", "give a timm model name after 'timm:'"),
    ("torchvision:resnt18", "closest: resnet18"),
])
def test_unknown_library_models_name_the_closest(timm, torchvision, name, message):
    with pytest.raises(ConfigError, match=message):
        rlpruner.create_model(name)


def test_library_errors_are_config_errors(timm, torchvision):
    with pytest.raises(ConfigError, match="torchvision models take 3-channel images"):
        rlpruner.create_model("torchvision:resnet18", in_channels=1)
    with pytest.raises(ConfigError, match="timm could not build it .*bogus"):
        rlpruner.create_model("timm:resnet18", bogus=3)


def test_a_library_that_is_not_installed_is_named_with_its_install_command(monkeypatch):
    missing = hubs.ModelHub("nolib", "rlpruner_no_such_library", "pip install nolib",
                            lambda *a: None, lambda m: [])
    monkeypatch.setattr(hubs, "HUBS", hubs.default_hubs())
    hubs.HUBS.add("nolib", missing)
    with pytest.raises(ConfigError, match="needs the rlpruner_no_such_library package, which is not "
                                          "installed: pip install nolib"):
        rlpruner.create_model("nolib:thing")


def test_specs_of_library_models_must_match_their_prefix():
    assert spec_problem({"source": "timm", "name": "timm:resnet18",
                         "kwargs": {"num_classes": 2, "in_channels": 3}}) is None
    assert "does not match" in spec_problem({"source": "zoo", "name": "timm:resnet18",
                                             "kwargs": {"num_classes": 2, "in_channels": 3}})
    assert "does not match" in spec_problem({"source": "timm", "name": "resnet18",
                                             "kwargs": {"num_classes": 2, "in_channels": 3}})
    with pytest.raises(CheckpointError, match="malformed model spec"):
        model_from_spec({"source": "import", "name": "timm:resnet18", "kwargs": {"num_classes": 2, "in_channels": 3}})


# --------------------------------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------------------------------

@pytest.fixture()
def source_and_target():
    torch.manual_seed(1)
    trained = rlpruner.create_model("resnet8", num_classes=5)
    torch.manual_seed(2)
    fresh = rlpruner.create_model("resnet8", num_classes=5)
    return trained, fresh


@pytest.mark.parametrize("form", ["safetensors", "pth", "wrapped", "ddp"])
def test_weights_load_from_safetensors_and_pth_in_their_common_forms(source_and_target, tmp_path, form):
    trained, fresh = source_and_target
    state = trained.state_dict()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pth")
    if form == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif form == "pth":
        torch.save(state, path)
    elif form == "wrapped":  # a training checkpoint
        torch.save({"epoch": 3, "state_dict": state, "best_acc": 0.9}, path)
    else:  # saved from DataParallel
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    report = load_weights(fresh, path)
    assert report.complete and len(report.loaded) == len(state)
    assert _same(fresh, trained, torch.randn(2, 3, 16, 16)) == 0.0


def test_a_pth_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="holds pickled Python objects.*never unpickles"):
        read_state_dict(path)
    assert not marker.exists()


class _Payload:
    """Unpickling it would create a file: the loader must never get that far."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_weights_that_do_not_fit_are_listed_and_nothing_changes(source_and_target, tmp_path):
    trained, _ = source_and_target
    other = rlpruner.create_model("resnet8", num_classes=9)
    path = tmp_path / "w.safetensors"
    save_file({**{k: v.contiguous() for k, v in trained.state_dict().items()}, "extra.bias": torch.zeros(3)}, path)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(other, path)
    text = str(info.value)
    assert "does not fit resnet8" in text and "not in the model 1 (extra.bias)" in text
    assert "different shape" in text and "file [5, 64], model [9, 64]" in text and "--partial-weights" in text
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    report = load_weights(other, path, strict=False)  # everything but the classifier
    assert not report.complete and "fc.weight" in {m[0] for m in report.mismatched}
    assert torch.equal(other.state_dict()["stem.conv.weight"], trained.state_dict()["stem.conv.weight"])


@pytest.mark.parametrize("content, message", [
    (b"not a safetensors file", "not a readable safetensors file"),
])
def test_unreadable_weight_files_are_named(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="bad.pth"):
        read_state_dict(tmp_path / "bad.pth")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="no state dict found in a dict with keys 2 \\(lr, epoch\\)"):
        read_state_dict(tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="no such weights file"):
        read_state_dict(tmp_path / "missing.pth")


# --------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------

def _image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 60 + 90 * c).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _cli(args: list[str], cwd: Path, library_path: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*library_path, str(ROOT)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rlpruner", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


FAST_SEARCH = ["--prune-filter-ratio", "0.15", "--lr-epoch", "1", "--sample-num", "2", "--kd-epochs", "1",
               "--final-epochs", "1", "--latency-repeats", "2", "--report-batch", "2", "--no-test"]


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_compress_a_timm_model_with_the_users_weights_from_the_shell(timm, library_path, tmp_path, suffix):
    """The issue's command: timm model, user weights, image folder, FLOPs target -> report.html and a
    saved model that rlpruner.load rebuilds."""
    data = _image_folder(tmp_path / "images")
    torch.manual_seed(0)
    trained = timm.create_model("resnet18", num_classes=3)
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, weights)
    else:
        torch.save(trained.state_dict(), weights)
    out = tmp_path / "run"
    done = _cli(["compress", "--model", "timm:resnet18", "--weights", str(weights), "--dataset", "imagefolder",
                 "--data-root", str(data), "--target-flops", "0.5", "-o", str(out), *FAST_SEARCH],
                tmp_path, library_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"loaded 122 tensors from {weights}" in done.stdout
    assert (out / "report.html").exists() and "timm:resnet18" in (out / "report.html").read_text()
    model = rlpruner.load(out / "model.rlp")
    x = torch.randn(1, 3, 32, 32)
    counts, original = rlpruner.count(model, x), rlpruner.count(trained, x)
    assert counts.flops <= 0.5 * original.flops * 1.01 and model(x).shape == (1, 3)


def test_the_shell_refuses_bad_weights_with_one_line(tmp_path, capsys):
    torch.save({"w": _Payload(str(tmp_path / "ran"))}, tmp_path / "evil.pth")
    cases = [
        (["--weights", str(tmp_path / "missing.pth")], "--weights"),
        (["--weights", str(tmp_path / "evil.pth")], "holds pickled Python objects"),
    ]
    for extra, message in cases:
        code = main(["prune", "resnet8", "--ratio", "0.5", "--image-size", "16", "-o", str(tmp_path / "x.rlp"),
                     *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "x.rlp").exists()
    code = main(["prune", "resnet8", "--model", "resnet20", "--ratio", "0.5"])
    assert code == 2 and "two models given" in capsys.readouterr().err


def test_prune_takes_model_and_weights_options(tmp_path, capsys):
    torch.manual_seed(3)
    trained = rlpruner.create_model("resnet8", num_classes=10, in_channels=1)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors")
    out = tmp_path / "p.rlp"
    assert main(["prune", "--model", "resnet8", "--weights", str(tmp_path / "w.safetensors"), "--ratio", "0.5",
                 "--image-size", "16", "-o", str(out)]) == 0
    assert "loaded" in capsys.readouterr().out
    pruned = rlpruner.load(out)
    reference = rlpruner.prune(trained, torch.randn(1, 1, 16, 16), ratio=0.5)
    assert _same(pruned, reference, torch.randn(2, 1, 16, 16)) < 1e-5
