"""Export to TorchScript and ONNX: artefacts match PyTorch, failures write nothing, the CLI works."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import rlpruner
from rlpruner import io as rio
from rlpruner.io import exporting
from rlpruner.cli import main
from rlpruner.errors import ConfigError, ExportError


class ConcatUserNet(nn.Module):
    """A user model (loaded back by import path): two branches concatenated, a depthwise conv."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, width, 1), nn.BatchNorm2d(width), nn.ReLU6())
        self.dw = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def concat_user_net(num_classes: int = 10, width: int = 16) -> nn.Module:
    return ConcatUserNet(num_classes, width)


USER_NET = f"{__name__}:concat_user_net"


def _model(name: str = "resnet20") -> torch.nn.Module:
    torch.manual_seed(0)
    return rlpruner.create_model(name, num_classes=7).eval()


def _pruned(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = rlpruner.create_model(name, num_classes=7, **kwargs)
    return rlpruner.prune(model, torch.randn(1, 3, 16, 16), ratio=0.4, round_to=4).eval()


# plain zoo model, pruned zoo models with SE gates / channel shuffle, a pruned user model
CASES = {
    "resnet20": lambda: _model("resnet20"),
    "pruned-mobilenetv3_small": lambda: _pruned("mobilenetv3_small"),
    "pruned-shufflenetv2": lambda: _pruned("shufflenetv2"),
    "pruned-user": lambda: _pruned(USER_NET, width=16),
}


def _run_torchscript(path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))(x)


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt, runner", [("torchscript", _run_torchscript), ("onnx", _run_onnx)])
def test_exported_artefact_matches_pytorch(tmp_path, case, fmt, runner):
    model = CASES[case]()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / f"{case}.{fmt}"
    report = rlpruner.export(model, path, fmt, x, repeat=3)
    assert report.path == path and report.format == fmt
    assert report.size_bytes == path.stat().st_size > 0
    assert 0.0 <= report.max_abs_diff <= 1e-4
    assert report.latency_ms > 0 and report.torch_latency_ms > 0
    with torch.no_grad():
        expected = model(x)
        # a fresh input, not the one used for export: the artefact must compute, not replay
        fresh = torch.randn(2, 3, 32, 32)
        assert (runner(path, fresh) - model(fresh)).abs().max() <= 1e-4
    assert (runner(path, x) - expected).abs().max() <= 1e-4
    assert os.listdir(tmp_path) == [path.name]


def test_pruned_model_exports_smaller_file_than_original(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    full = rlpruner.export(_model("mobilenetv3_small"), tmp_path / "full.onnx", "onnx", x, repeat=1)
    small = rlpruner.export(_pruned("mobilenetv3_small"), tmp_path / "small.onnx", "onnx", x, repeat=1)
    assert small.size_bytes < 0.7 * full.size_bytes


def test_saved_pruned_user_model_loads_and_exports(tmp_path):
    """The whole deployment path: prune, save, load in a fresh model object, export, compare."""
    pruned = _pruned(USER_NET, width=16)
    loaded = rio.load(rio.save(pruned, tmp_path / "u.safetensors"), allow_imports=[USER_NET])
    assert loaded.a[0].out_channels < 16 and loaded.dw.groups == loaded.dw.in_channels < 32
    x = torch.randn(1, 3, 20, 20)
    rlpruner.export(loaded, tmp_path / "u.pt", "torchscript", x, repeat=1)
    with torch.no_grad():
        assert (_run_torchscript(tmp_path / "u.pt", x) - pruned(x)).abs().max() <= 1e-4


def test_export_restores_training_mode(tmp_path):
    model = _model().train()
    rlpruner.export(model, tmp_path / "m.pt", "torchscript", torch.randn(1, 3, 16, 16))
    assert model.training


def test_mismatching_artefact_is_refused_and_not_written(tmp_path, monkeypatch):
    real = exporting._torchscript_runner

    def off_by_a_bit(data):
        run = real(data)
        return lambda inputs: [t + 1e-2 for t in run(inputs)]

    monkeypatch.setattr(exporting, "_torchscript_runner", off_by_a_bit)
    with pytest.raises(ExportError, match="differ from PyTorch.*nothing was written"):
        rlpruner.export(_model(), tmp_path / "m.pt", "torchscript", torch.randn(1, 3, 16, 16))
    assert os.listdir(tmp_path) == []


def test_onnx_without_onnxruntime_needs_verify_false(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="onnxruntime.*verify=False"):
        rlpruner.export(_model(), tmp_path / "m.onnx", "onnx", x)
    assert not (tmp_path / "m.onnx").exists()
    report = rlpruner.export(_model(), tmp_path / "m.onnx", "onnx", x, verify=False)
    assert report.max_abs_diff is None and report.latency_ms is None
    assert (tmp_path / "m.onnx").stat().st_size == report.size_bytes


def test_bad_export_arguments(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="format must be one of"):
        rlpruner.export(_model(), tmp_path / "m", "tflite", x)
    with pytest.raises(ConfigError, match="exporter must be one of"):
        rlpruner.export(_model(), tmp_path / "m", "onnx", x, exporter="magic")
    with pytest.raises(ConfigError, match="example_inputs"):
        rlpruner.export(_model(), tmp_path / "m", "onnx")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def _cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cli_export_prints_table_and_writes_file(tmp_path, capsys, fmt):
    torch.manual_seed(0)
    model = rlpruner.create_model("simple_cnn", num_classes=4, in_channels=1, widths=[8, 8])
    ckpt = rio.save(model, tmp_path / "m.safetensors", meta={"input_shape": [1, 20, 24]})
    out = tmp_path / "exported"
    code, stdout, stderr = _cli(["export", str(ckpt), "--format", fmt, "-o", str(out)], capsys)
    assert code == 0, stderr
    assert "input [1, 1, 20, 24]" in stdout
    for row in ("format", "size", "max |diff| vs PyTorch", "latency (exported)", "latency (PyTorch)"):
        assert row in stdout
    x = torch.randn(1, 1, 20, 24)
    runner = _run_onnx if fmt == "onnx" else _run_torchscript
    with torch.no_grad():
        assert (runner(out, x) - model.eval()(x)).abs().max() <= 1e-4


def test_cli_input_size_flags_override_meta_and_default_output(tmp_path, capsys):
    ckpt = rio.save(_model(), tmp_path / "m.safetensors")
    code, stdout, _ = _cli(["export", str(ckpt), "--format", "torchscript", "--input-size", "16", "12",
                            "--batch-size", "3"], capsys)
    assert code == 0 and "input [3, 3, 16, 12]" in stdout
    assert (tmp_path / "m.torchscript.pt").exists()


def test_cli_reads_input_shape_from_training_meta(tmp_path, capsys):
    model = rlpruner.create_model("simple_cnn", num_classes=4, in_channels=1, widths=[4])
    data = {"name": "digits", "image_size": 12, "in_channels": 1}
    ckpt = rio.save(model, tmp_path / "m.safetensors", meta={"data": data, "epoch": 2})
    code, stdout, _ = _cli(["export", str(ckpt), "--format", "torchscript"], capsys)
    assert code == 0 and "input [1, 1, 12, 12]" in stdout


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, _, stderr = _cli(["export", str(tmp_path / "missing.safetensors")], capsys)
    assert code == 2 and "missing.safetensors: no such file" in stderr
    assert len(stderr.strip().splitlines()) == 1

    ckpt = rio.save(_model(), tmp_path / "m.safetensors")
    code, _, stderr = _cli(["export", str(ckpt), "--input-size", "1", "2", "3"], capsys)
    assert code == 2 and "--input-size" in stderr
    code, _, stderr = _cli(["export", str(ckpt), "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size must be a positive integer" in stderr


def test_cli_refuses_user_model_without_allow_import(tmp_path, capsys):
    spec = {"source": "import", "name": "tests_user_nets:build",
            "kwargs": {"num_classes": 10, "in_channels": 3}}
    ckpt = rio.save(_model(), tmp_path / "u.safetensors", spec=spec)
    code, _, stderr = _cli(["export", str(ckpt)], capsys)
    assert code == 2 and "--allow-import tests_user_nets" in stderr
    assert "tests_user_nets" not in sys.modules


def test_format_report_without_verification():
    report = rio.ExportReport(path=Path("m.onnx"), format="onnx", size_bytes=2048, max_abs_diff=None,
                              latency_ms=None, torch_latency_ms=None, exporter="onnx-legacy")
    from rlpruner.commands.export import format_report
    text = format_report(report)
    assert "2.0 KiB" in text and "not verified" in text and "onnx (onnx-legacy)" in text
