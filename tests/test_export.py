"""Export to TorchScript and ONNX: artefacts match PyTorch, failures write nothing, the CLI works."""
from __future__ import annotations

import importlib.util
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


class SizeAsIntNet(nn.Module):
    """Runs at any batch in PyTorch, but `int(...)` freezes the example's batch into a trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).reshape(int(x.shape[0]), -1))


class BatchAttributeNet(SizeAsIntNet):
    """Fixes the batch in the code itself: even PyTorch fails at another batch size."""

    batch = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).view(self.batch, -1))


class ImageAndLabelNet(nn.Module):
    """Two batched inputs, one of them integer: the second batch must keep the labels valid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.embed = nn.Embedding(4, 6)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x).mean((2, 3))
        return features + self.embed(labels), features


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


def _batch_dims(path) -> list[tuple[int, str]]:
    """(dim_value, dim_param) of dim 0 of every ONNX graph input, then of every output."""
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [v.type.tensor_type.shape.dim[0] for v in list(graph.input) + list(graph.output)]
    return [(d.dim_value, d.dim_param) for d in dims]


HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None
needs_onnxscript = pytest.mark.skipif(not HAS_ONNXSCRIPT, reason="the dynamo exporter needs onnxscript")
# (format, exporter): every way of exporting; the dynamo exporter only where onnxscript is installed
EXPORTERS = [("torchscript", "auto"), ("onnx", "legacy"),
             pytest.param("onnx", "dynamo", marks=needs_onnxscript)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt, runner", [("torchscript", _run_torchscript), ("onnx", _run_onnx)])
def test_exported_artefact_matches_pytorch(tmp_path, case, fmt, runner):
    model = CASES[case]()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / f"{case}.{fmt}"
    report = rlpruner.export(model, path, fmt, x, repeat=3)
    assert report.path == path and report.format == fmt
    assert report.dynamic_batch and report.batch_sizes == (2, 8)
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


# ----------------------------------------------------------------------------------------------
# batch size: dynamic by default, static on request
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pruned", [False, True], ids=["resnet8", "pruned-resnet8"])
@pytest.mark.parametrize("fmt, exporter", EXPORTERS)
def test_default_export_serves_any_batch_size(tmp_path, fmt, exporter, pruned):
    model = _pruned("resnet8") if pruned else _model("resnet8")
    path = tmp_path / f"m.{fmt}"
    report = rlpruner.export(model, path, fmt, torch.randn(1, 3, 16, 16), exporter=exporter, repeat=1)
    assert report.dynamic_batch and report.batch_sizes == (1, 7)
    if fmt == "onnx":
        assert report.exporter == f"onnx-{exporter}"
        assert _batch_dims(path) == [(0, "batch"), (0, "batch")]
    runner = _run_onnx if fmt == "onnx" else _run_torchscript
    for batch in (1, 7, 3):  # fresh inputs: 3 was never seen during export or verification
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(x)
        got = runner(path, x)
        assert got.shape == (batch, 7)
        assert (got - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("net", [SizeAsIntNet, BatchAttributeNet])
@pytest.mark.parametrize("fmt, exporter", EXPORTERS)
def test_forward_with_hard_coded_batch_is_refused_unless_static(tmp_path, fmt, exporter, net):
    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.out"
    who = "exported artefact" if net is SizeAsIntNet else "PyTorch model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer rightly warns about int(x.shape[0])
        with pytest.raises(ExportError, match=f"m.out: the {who} fails at batch 7 although it ran at "
                           "batch 1.*hard-codes the batch size.*dynamic_batch=False.*--static-batch"
                           ".*nothing was written"):
            rlpruner.export(model, path, fmt, x, exporter=exporter)
        assert os.listdir(tmp_path) == []
        report = rlpruner.export(model, path, fmt, x, exporter=exporter, dynamic_batch=False, repeat=1)
    assert not report.dynamic_batch and report.batch_sizes == (1,)
    runner = _run_onnx if fmt == "onnx" else _run_torchscript
    with torch.no_grad():
        assert (runner(path, x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("exporter", ["legacy", pytest.param("dynamo", marks=needs_onnxscript)])
def test_static_batch_onnx_has_the_example_batch_in_its_graph(tmp_path, exporter):
    import onnxruntime

    model, path = _model("resnet8"), tmp_path / "m.onnx"
    report = rlpruner.export(model, path, "onnx", torch.randn(2, 3, 16, 16), exporter=exporter,
                             dynamic_batch=False, repeat=1)
    assert not report.dynamic_batch and report.batch_sizes == (2,)
    assert _batch_dims(path) == [(2, ""), (2, "")]
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        _run_onnx(path, torch.randn(7, 3, 16, 16))


def test_large_example_batch_is_also_verified_at_half_of_it(tmp_path):
    report = rlpruner.export(_model("resnet8"), tmp_path / "m.pt", "torchscript",
                             torch.randn(10, 3, 8, 8), repeat=1)
    assert report.batch_sizes == (10, 5)


@pytest.mark.parametrize("fmt, exporter", EXPORTERS)
def test_every_input_and_output_gets_the_dynamic_batch(tmp_path, fmt, exporter):
    torch.manual_seed(0)
    model = ImageAndLabelNet().eval()
    path = tmp_path / f"m.{fmt}"
    example = (torch.randn(1, 3, 8, 8), torch.tensor([3]))
    report = rlpruner.export(model, path, fmt, example, exporter=exporter, repeat=1)
    assert report.batch_sizes == (1, 7)
    x, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        expected = model(x, labels)
    if fmt == "onnx":
        import onnxruntime

        assert _batch_dims(path) == [(0, "batch")] * 4
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
        got = session.run(None, {"input_0": x.numpy(), "input_1": labels.numpy()})
    else:
        got = _run_torchscript_on(path, x, labels)
    for want, have in zip(expected, got):
        assert (torch.as_tensor(have) - want).abs().max() <= 1e-4


def _run_torchscript_on(path, *inputs: torch.Tensor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))(*inputs)


def test_inputs_without_a_shared_batch_need_static_batch(tmp_path):
    model = ImageAndLabelNet().eval()
    with pytest.raises(ConfigError, match=r"disagree on the batch size.*\[\[2, 3, 8, 8\], \[3\]\].*"
                       "dynamic_batch=False"):
        rlpruner.export(model, tmp_path / "m.pt", "torchscript", (torch.randn(2, 3, 8, 8),
                                                                  torch.tensor([0, 1, 2])))
    with pytest.raises(ConfigError, match=r"input 0 has shape \[\], which has no batch dim 0"):
        rlpruner.export(nn.Identity(), tmp_path / "m.pt", "torchscript", torch.tensor(1.0))
    assert os.listdir(tmp_path) == []
    report = rlpruner.export(nn.Identity(), tmp_path / "m.pt", "torchscript", torch.tensor(1.0),
                             dynamic_batch=False, repeat=1)
    assert report.max_abs_diff == 0.0


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
    assert "batch                  dynamic (verified at 1, 7)" in stdout
    runner = _run_onnx if fmt == "onnx" else _run_torchscript
    for batch in (1, 4):
        x = torch.randn(batch, 1, 20, 24)
        with torch.no_grad():
            assert (runner(out, x) - model.eval()(x)).abs().max() <= 1e-4


def test_cli_static_batch_fixes_the_batch_size(tmp_path, capsys):
    ckpt = rio.save(_model("resnet8"), tmp_path / "m.safetensors")
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _cli(["export", str(ckpt), "--format", "onnx", "-o", str(out),
                                 "--exporter", "legacy", "--batch-size", "3", "--static-batch",
                                 "--input-size", "16"], capsys)
    assert code == 0, stderr
    assert "input [3, 3, 16, 16]" in stdout and "static (verified at 3)" in stdout
    assert _batch_dims(out) == [(3, ""), (3, "")]


def test_cli_hard_coded_batch_error_names_the_flag(tmp_path, capsys):
    spec = {"source": "import", "name": f"{__name__}:size_as_int_net",
            "kwargs": {"num_classes": 5, "in_channels": 3}}
    ckpt = rio.save(SizeAsIntNet(), tmp_path / "m.safetensors", spec=spec)
    argv = ["export", str(ckpt), "--format", "onnx", "--exporter", "legacy", "--input-size", "8",
            "--allow-import", __name__]
    code, _, stderr = _cli(argv, capsys)
    assert code == 2 and "hard-codes the batch size" in stderr and "--static-batch" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
    code, _, stderr = _cli(argv + ["--static-batch"], capsys)
    assert code == 0, stderr
    assert _batch_dims(tmp_path / "m.onnx") == [(1, ""), (1, "")]


def size_as_int_net(num_classes: int, in_channels: int) -> nn.Module:
    assert (num_classes, in_channels) == (5, 3)  # what SizeAsIntNet has
    return SizeAsIntNet()


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
                              latency_ms=None, torch_latency_ms=None, exporter="onnx-legacy",
                              dynamic_batch=True, batch_sizes=())
    from rlpruner.commands.export import format_report
    text = format_report(report)
    assert "2.0 KiB" in text and "not verified" in text and "onnx (onnx-legacy)" in text
    assert "dynamic (not verified)" in text
