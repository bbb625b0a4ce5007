"""Saved models: atomic writes, bit-exact round trips (plain and pruned), hostile files refused."""
from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

import rlpruner
from rlpruner import io as rio
from rlpruner.errors import CheckpointError
from rlpruner.models import SPEC_ATTR

# plain round trips on a varied handful; every zoo model round-trips after pruning further down
PLAIN_MODELS = ["simple_cnn", "resnet20", "vgg11_bn", "mobilenetv3_small", "shufflenetv2",
                "convnext_atto"]


# A user model defined here and loaded back by import path (`{__name__}:tiny_user_net`).
class TinyUserNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width // 4),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.body(x) + x
        return self.head(x.mean((2, 3)))


def tiny_user_net(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    return TinyUserNet(num_classes, in_channels, width)


USER_NET = f"{__name__}:tiny_user_net"


class TiedConvNet(nn.Module):
    """Ties in its own __init__: one kernel applied twice (`b.weight is a.weight`)."""

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.a = nn.Conv2d(width, width, 3, padding=1)
        self.b = nn.Conv2d(width, width, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(self.stem(x)))))
        return self.head(x.mean((2, 3)))


class TwoHeadNet(nn.Module):
    """Builds no ties; the tests tie its heads (and two BatchNorm buffers) after construction."""

    def __init__(self, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.post = nn.BatchNorm1d(width)
        self.head1 = nn.Linear(width, num_classes)
        self.head2 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.post(self.stem(x).mean((2, 3)))
        return self.head1(features) + torch.relu(self.head2(features))


def tied_conv_net(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    return TiedConvNet(num_classes, in_channels, width)


def two_head_net(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    return TwoHeadNet(num_classes, in_channels, width)


def _randomise_buffers(model: nn.Module) -> nn.Module:
    """Non-default BN statistics, so that a round trip that drops buffers cannot pass."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def _assert_identical(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def _make(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_buffers(rlpruner.create_model(name, num_classes=5, **kwargs))


def _write_raw(path: Path, tensors: dict, header: object) -> Path:
    """A file in our format with a hand-made header, as an attacker or a bug would write it."""
    text = header if isinstance(header, str) else json.dumps(header)
    path.write_bytes(safetensors_bytes(tensors, metadata={rio.METADATA_KEY: text}))
    return path


def _saved(tmp_path: Path, name: str = "simple_cnn") -> tuple[Path, dict, dict]:
    path = rio.save(_make(name), tmp_path / "model.safetensors")
    # decoded from bytes, not memory-mapped: the tests overwrite the file while using the tensors
    return path, rio.read_header(path), safetensors_load(path.read_bytes())


# ----------------------------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------------------------

def test_atomic_write_replaces_file_and_creates_parents(tmp_path):
    target = tmp_path / "deep" / "dir" / "f.json"
    rio.atomic_write_json(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    rio.atomic_write_text(target, "new")
    assert target.read_text() == "new"
    rio.atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["f.json"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with rio.atomic_write(target, "w") as handle:
            handle.write("half of the new cont")
            raise RuntimeError("disk on fire")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        rio.atomic_write_text(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------
# plain round trips
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PLAIN_MODELS)
def test_plain_round_trip_is_bit_exact(tmp_path, name):
    model = _make(name)
    path = rio.save(model, tmp_path / f"{name}.safetensors", meta={"epoch": 3, "acc": 0.5})
    loaded, meta = rio.load_checkpoint(path)
    assert meta == {"epoch": 3, "acc": 0.5}
    assert type(loaded) is type(model) and not loaded.training
    assert getattr(loaded, SPEC_ATTR) == getattr(model, SPEC_ATTR)
    _assert_identical(model, loaded, torch.randn(2, 3, 32, 32))


def test_user_model_round_trip_needs_allow_imports(tmp_path):
    torch.manual_seed(0)
    model = _randomise_buffers(rlpruner.create_model(USER_NET, num_classes=3, width=8))
    path = rio.save(model, tmp_path / "user.safetensors")
    with pytest.raises(CheckpointError, match="allow_imports"):
        rio.load(path)
    loaded = rio.load(path, allow_imports=[__name__])
    _assert_identical(model, loaded, torch.randn(2, 3, 12, 12))
    assert isinstance(rio.load(path, allow_imports=__name__), TinyUserNet)  # a str is one module
    assert rio.load(path, allow_imports=[USER_NET]).head.out_features == 3


def test_half_precision_model_loads_as_half(tmp_path):
    model = _make("simple_cnn").half()
    loaded = rio.load(rio.save(model, tmp_path / "half.safetensors"))
    assert all(t.dtype == torch.float16 for t in loaded.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


# ----------------------------------------------------------------------------------------------
# tied tensors: stored once, tied again on load
# ----------------------------------------------------------------------------------------------

def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(path), attr)


def _tied_in_init() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_buffers(rlpruner.create_model(f"{__name__}:tied_conv_net", num_classes=3))


def _tied_after_construction() -> nn.Module:
    torch.manual_seed(0)
    model = _randomise_buffers(rlpruner.create_model(f"{__name__}:two_head_net", num_classes=3))
    model.head2.weight = model.head1.weight
    model.post.running_var = model.stem[1].running_var
    return model


# how to build each model, and its ties as (name, first name)
TIED = {
    "tied-in-init": (_tied_in_init, [("b.weight", "a.weight")]),
    "tied-after-construction": (_tied_after_construction, [("head2.weight", "head1.weight"),
                                                           ("post.running_var", "stem.1.running_var")]),
}


@pytest.mark.parametrize("pruned", [False, True], ids=["plain", "pruned"])
@pytest.mark.parametrize("case", TIED)
def test_tied_tensors_are_stored_once_and_load_tied(tmp_path, case, pruned):
    build, ties = TIED[case]
    model, x = build(), torch.randn(2, 3, 12, 12)
    if pruned:
        model = rlpruner.prune(model, x, ratio=0.5).eval()
        assert model.stem[0].out_channels < 16
    assert all(_tensor(model, name) is _tensor(model, first) for name, first in ties)
    path = rio.save(model, tmp_path / "tied.safetensors")
    records, stored = rio.read_header(path)["tensors"], safetensors_load(path.read_bytes())
    assert {n: r["same_as"] for n, r in records.items() if "same_as" in r} == dict(ties)
    for name, first in ties:
        assert records[name] == {**records[first], "same_as": first}
        assert name not in stored and first in stored
    loaded = rio.load(path, allow_imports=[__name__])
    for name, first in ties:
        assert _tensor(loaded, name) is _tensor(loaded, first), name
    _assert_identical(model, loaded, x)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    if pruned:
        assert loaded.stem[0].out_channels == model.stem[0].out_channels


def test_tie_made_after_construction_comes_from_the_file(tmp_path):
    path = rio.save(_tied_after_construction(), tmp_path / "tied.safetensors")
    fresh = rlpruner.create_model(f"{__name__}:two_head_net", num_classes=3)
    assert fresh.head1.weight is not fresh.head2.weight  # the architecture alone does not tie
    loaded = rio.load(path, allow_imports=[__name__])
    with torch.no_grad():  # one tensor: a change through one name is seen through the other
        loaded.head1.weight.add_(1.0)
    assert torch.equal(loaded.head1.weight, loaded.head2.weight)
    assert [n for n, _ in loaded.named_parameters()].count("head2.weight") == 0


def test_tied_zoo_model_round_trips_tied(tmp_path):
    model = _make("simple_cnn", widths=[4, 4, 4])
    model.features[2].conv.weight = model.features[1].conv.weight  # safetensors refuses shared storage
    path = rio.save(model, tmp_path / "tied.safetensors")
    assert "features.2.conv.weight" not in safetensors_load(path.read_bytes())
    loaded = rio.load(path)
    assert loaded.features[2].conv.weight is loaded.features[1].conv.weight
    _assert_identical(model, loaded, torch.randn(2, 3, 16, 16))


def test_views_of_one_storage_are_not_ties(tmp_path):
    model = _make("simple_cnn", widths=[4, 4])
    out, inp = model.classifier.weight.shape
    flat = torch.randn(out * inp + out)  # weight and bias: two tensors in one storage
    model.classifier.weight = nn.Parameter(flat[:out * inp].view(out, inp))
    model.classifier.bias = nn.Parameter(flat[out * inp:])
    path = rio.save(model, tmp_path / "views.safetensors")
    assert not any("same_as" in r for r in rio.read_header(path)["tensors"].values())
    loaded = rio.load(path)
    _assert_identical(model, loaded, torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        loaded.classifier.bias.zero_()
    assert loaded.classifier.weight.abs().sum() > 0


def _tied_file(tmp_path: Path) -> tuple[Path, dict, dict]:
    path = rio.save(_tied_in_init(), tmp_path / "tied.safetensors")
    return path, rio.read_header(path), safetensors_load(path.read_bytes())


def _retie(records: dict, name: str, **changes) -> dict:
    return {**records, name: {**records[name], **changes}}


@pytest.mark.parametrize("edit, message", [
    (lambda r: _retie(r, "b.weight", same_as="gone.weight"),
     "tensor 'b.weight': same_as 'gone.weight' does not name another tensor"),
    (lambda r: _retie(r, "b.weight", same_as="b.weight"),
     "tensor 'b.weight': same_as 'b.weight' does not name another tensor"),
    (lambda r: _retie(r, "b.weight", same_as=["a.weight"]),
     r"tensor 'b.weight': same_as \['a.weight'\] does not name another tensor"),
    (lambda r: _retie(r, "b.weight", shape=[8, 16, 3, 3]),
     r"tensor 'b.weight' is float32\[8, 16, 3, 3\] but its same_as 'a.weight' is float32\[16, 16, 3, 3\]"),
    (lambda r: _retie(r, "b.weight", dtype="float16"),
     r"tensor 'b.weight' is float16\[16, 16, 3, 3\] but its same_as 'a.weight' is float32"),
    (lambda r: _retie(_retie(r, "a.bias", same_as="b.bias"), "head.bias", same_as="a.bias"),
     "tensor 'head.bias': same_as 'a.bias', which is itself same_as 'b.bias'"),
], ids=["missing", "itself", "not-a-name", "shape", "dtype", "chain"])
def test_bad_ties_in_a_hand_edited_header_are_refused(tmp_path, edit, message):
    path, header, tensors = _tied_file(tmp_path)
    _write_raw(path, tensors, {**header, "tensors": edit(header["tensors"])})
    with pytest.raises(CheckpointError, match=f"tied.safetensors: bad rlpruner header: {message}"):
        rio.load(path, allow_imports=[__name__])


def test_tied_tensor_stored_twice_or_tied_to_a_buffer_is_refused(tmp_path):
    path, header, tensors = _tied_file(tmp_path)
    _write_raw(path, {**tensors, "b.weight": tensors["a.weight"].clone()}, header)
    with pytest.raises(CheckpointError, match="tied.safetensors: tensor 'b.weight' is stored, but the "
                       "header records it as the same tensor as 'a.weight'"):
        rio.load(path, allow_imports=[__name__])
    records = _retie(header["tensors"], "stem.0.bias", same_as="stem.1.running_mean")
    stored = {k: t for k, t in tensors.items() if k != "stem.0.bias"}
    _write_raw(path, stored, {**header, "tensors": records})
    with pytest.raises(CheckpointError, match="tied.safetensors: tensor 'stem.0.bias' is a parameter "
                       "but its same_as 'stem.1.running_mean' is a buffer"):
        rio.load(path, allow_imports=[__name__])
    # without its same_as, a tied name needs its own data
    _write_raw(path, tensors, {**header, "tensors": {**header["tensors"], "b.weight": {
        k: v for k, v in header["tensors"]["b.weight"].items() if k != "same_as"}}})
    with pytest.raises(CheckpointError, match="tied.safetensors: weights do not match.*missing b.weight"):
        rio.load(path, allow_imports=[__name__])


# ----------------------------------------------------------------------------------------------
# pruned round trips: the saved shapes differ from what the class builds
# ----------------------------------------------------------------------------------------------

def _pruned(name: str, size: int = 16, **kwargs) -> tuple[nn.Module, torch.Tensor]:
    model = _make(name, **kwargs)
    x = torch.randn(1, 3, size, size)
    return rlpruner.prune(model, x, ratio=0.3, verify=False).eval(), x


def _smaller_tensors(path: Path, name: str, **kwargs) -> list[str]:
    """Names whose saved shape differs from the freshly built model: the pruning plan on disk."""
    built = rlpruner.create_model(name, num_classes=5, **kwargs).state_dict()
    saved = rio.read_header(path)["tensors"]
    return [k for k, t in built.items() if list(t.shape) != saved[k]["shape"]]


@pytest.mark.parametrize("name", rlpruner.list_models())
def test_pruned_zoo_model_round_trip_is_bit_exact(tmp_path, name):
    pruned, x = _pruned(name)
    path = rio.save(pruned, tmp_path / "pruned.safetensors")
    assert _smaller_tensors(path, name), "pruning changed no shape: the test would prove nothing"
    loaded = rio.load(path)
    _assert_identical(pruned, loaded, x)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in pruned.parameters())


def test_pruned_user_model_with_rounded_widths_round_trips(tmp_path):
    torch.manual_seed(0)
    model = _randomise_buffers(rlpruner.create_model(USER_NET, num_classes=3, width=32))
    x = torch.randn(2, 3, 12, 12)
    pruned = rlpruner.prune(model, x, ratio=0.5, round_to=8).eval()
    path = rio.save(pruned, tmp_path / "user.safetensors", meta={"ratio": 0.5})
    with pytest.raises(CheckpointError, match="allow_imports"):
        rio.load(path)
    loaded, meta = rio.load_checkpoint(path, allow_imports=[__name__])
    assert meta == {"ratio": 0.5}
    assert loaded.stem[0].out_channels < 32 and loaded.stem[0].out_channels % 8 == 0
    _assert_identical(pruned, loaded, x)
    # the loaded model is a working model, not a frozen artefact: it trains and re-saves
    loaded.train()(x).sum().backward()
    again = rio.load(rio.save(loaded, tmp_path / "again.safetensors"), allow_imports=[USER_NET])
    _assert_identical(loaded, again, x)


def test_pruned_shapes_tampered_with_are_refused(tmp_path):
    pruned, x = _pruned("resnet8")
    path = rio.save(pruned, tmp_path / "m.safetensors")
    header = rio.read_header(path)
    tensors = safetensors_load(path.read_bytes())
    name = _smaller_tensors(path, "resnet8")[0]
    # one tensor widened back to its unpruned size while its neighbours stay pruned
    full = rlpruner.create_model("resnet8", num_classes=5).state_dict()[name]
    records = {**header["tensors"], name: {"shape": list(full.shape), "dtype": "float32"}}
    _write_raw(path, {**tensors, name: torch.zeros_like(full)}, {**header, "tensors": records})
    # each tensor alone fits the architecture, so only running the model can tell
    with pytest.raises(CheckpointError, match="m.safetensors.*does not run on the example inputs"):
        rio.load(path, example_inputs=x)
    with pytest.raises(RuntimeError):
        rio.load(path)(x)


def test_import_allowed_matches_whole_dotted_prefixes():
    assert rio.import_allowed("pkg.nets:net", ["pkg"])
    assert rio.import_allowed("pkg.nets:net", ["pkg.nets"])
    assert rio.import_allowed("pkg.nets:net", ["pkg.nets:net"])
    assert not rio.import_allowed("pkg.nets:net", ["pk"])
    assert not rio.import_allowed("pkgevil.nets:net", ["pkg"])
    assert not rio.import_allowed("pkg.nets:net", ["pkg.nets:other"])
    assert not rio.import_allowed("pkg.nets:net", [])


def test_save_without_spec_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(CheckpointError, match=SPEC_ATTR):
        rio.save(nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="meta is not JSON"):
        rio.save(_make("simple_cnn"), tmp_path / "x.safetensors", meta={"bad": object()})
    assert os.listdir(tmp_path) == []


def test_failing_save_leaves_old_file_and_no_partial_file(tmp_path, monkeypatch):
    path = rio.save(_make("simple_cnn"), tmp_path / "m.safetensors")
    good = path.read_bytes()

    broken = _make("simple_cnn", widths=[4, 4])
    broken.features[0].conv.register_buffer("unmaterialised", torch.empty(3, device="meta"))
    with pytest.raises(CheckpointError, match="unmaterialised"):
        rio.save(broken, path)

    def failing_fsync(fd):  # the data is written, the file is not yet renamed into place
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        rio.save(_make("simple_cnn", widths=[4, 4]), path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.safetensors"]


# ----------------------------------------------------------------------------------------------
# hostile and broken files
# ----------------------------------------------------------------------------------------------

class _RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _RunsCommand(marker)})
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(payload)
    with pytest.raises(CheckpointError, match="evil.safetensors.*pickle"):
        rio.load(bad)
    torch.save({"w": torch.ones(2), "x": _RunsCommand(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not an rlpruner safetensors file"):
        rio.load(tmp_path / "evil.pt")
    assert not marker.exists()
    # the payload does work when unpickled, so the test above can fail
    pickle.loads(payload)
    assert marker.exists()


def test_disallowed_import_path_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    module = "rlp_hostile_module_xyz"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        from {__name__} import tiny_user_net as factory
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"source": "import", "name": f"{module}:factory",
            "kwargs": {"num_classes": 10, "in_channels": 3}}
    path = rio.save(tiny_user_net(), tmp_path / "m.safetensors", spec=spec)
    for allow in ([], ["rlp_hostile"], [f"{module}:other"], ["os"]):
        with pytest.raises(CheckpointError, match=f"m.safetensors.*{module}.*--allow-import"):
            rio.load(path, allow_imports=allow)
    assert not marker.exists() and module not in sys.modules
    rio.load(path, allow_imports=[module])
    assert marker.read_text() == "ran"
    monkeypatch.delitem(sys.modules, module)


@pytest.mark.parametrize("cut", [0, 5, 8, 100, -1, -200])
def test_truncated_file_is_refused(tmp_path, cut):
    path, _, _ = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        rio.load(path)


def test_random_bytes_missing_file_and_directory_are_refused(tmp_path):
    torch.manual_seed(0)
    junk = tmp_path / "junk.safetensors"
    for data in (torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes(),
                 struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 10**15) + b"{" * 64):
        junk.write_bytes(data)
        with pytest.raises(CheckpointError, match="junk.safetensors"):
            rio.load(junk)
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        rio.load(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="not a file"):
        rio.load(tmp_path)


def test_safetensors_without_our_header_is_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(safetensors_bytes({"w": torch.ones(2)}))
    with pytest.raises(CheckpointError, match="not written by rlpruner.save"):
        rio.load(path)


@pytest.mark.parametrize("mutate, message", [
    (lambda h: "{not json", "not valid JSON"),
    (lambda h: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
    (lambda h: [1, 2], "not a JSON object"),
    (lambda h: {**h, "version": 99}, "version 99"),
    (lambda h: {**h, "format": "pickle"}, "format"),
    (lambda h: {**h, "extra": 1}, "unexpected keys"),
    (lambda h: {**h, "spec": {**h["spec"], "source": "url"}}, "source"),
    (lambda h: {**h, "spec": {"name": "simple_cnn"}}, "spec"),
    (lambda h: {**h, "meta": []}, "meta"),
    (lambda h: {**h, "tensors": {k: {"shape": "big", "dtype": "float32"} for k in h["tensors"]}},
     "shape must be"),
    (lambda h: {**h, "tensors": {k: {**r, "dtype": "object"} for k, r in h["tensors"].items()}},
     "unsupported dtype"),
])
def test_header_that_is_not_the_schema_is_refused(tmp_path, mutate, message):
    path, header, tensors = _saved(tmp_path)
    _write_raw(path, tensors, mutate(header))
    with pytest.raises(CheckpointError, match=message):
        rio.load(path)


def test_tensor_disagreeing_with_its_header_is_refused(tmp_path):
    path, header, tensors = _saved(tmp_path)
    _write_raw(path, {**tensors, "classifier.bias": tensors["classifier.bias"].double()}, header)
    with pytest.raises(CheckpointError, match="classifier.bias.*float64.*header records float32"):
        rio.load(path)
    _write_raw(path, {**tensors, "classifier.bias": torch.zeros(4)}, header)
    with pytest.raises(CheckpointError, match=r"classifier.bias.*\[4\].*header records float32\[5\]"):
        rio.load(path)
    _write_raw(path, {**tensors, "planted": torch.zeros(1)}, header)
    with pytest.raises(CheckpointError, match="'planted' is not listed"):
        rio.load(path)


def test_shapes_and_dtypes_the_architecture_cannot_have_are_refused(tmp_path):
    path, header, tensors = _saved(tmp_path)

    def rewrite(name: str, tensor: torch.Tensor) -> None:
        records = {**header["tensors"], name: {"shape": list(tensor.shape),
                                               "dtype": str(tensor.dtype).removeprefix("torch.")}}
        _write_raw(path, {**tensors, name: tensor}, {**header, "tensors": records})

    rewrite("classifier.bias", torch.zeros(6))  # larger than the class builds
    with pytest.raises(CheckpointError, match="classifier.bias.*only be smaller"):
        rio.load(path)
    rewrite("classifier.bias", torch.zeros(5, 1))  # extra dimension
    with pytest.raises(CheckpointError, match="classifier.bias"):
        rio.load(path)
    rewrite("classifier.weight", torch.zeros(5, 256, dtype=torch.int64))
    with pytest.raises(CheckpointError, match="classifier.weight.*int64.*builds float32"):
        rio.load(path)
    bn = next(k for k in tensors if k.endswith("num_batches_tracked"))
    rewrite(bn, torch.tensor(7.0))
    with pytest.raises(CheckpointError, match=f"{bn}.*float32.*builds int64"):
        rio.load(path)


def test_missing_and_extra_tensors_are_refused(tmp_path):
    path, header, tensors = _saved(tmp_path)
    gone = "classifier.weight"
    records = {k: r for k, r in header["tensors"].items() if k != gone}
    _write_raw(path, {k: t for k, t in tensors.items() if k != gone}, {**header, "tensors": records})
    with pytest.raises(CheckpointError, match=f"missing {gone}"):
        rio.load(path)
    extra = {**header["tensors"], "classifier.extra": {"shape": [1], "dtype": "float32"}}
    _write_raw(path, {**tensors, "classifier.extra": torch.zeros(1)}, {**header, "tensors": extra})
    with pytest.raises(CheckpointError, match="unexpected classifier.extra"):
        rio.load(path)
    _write_raw(path, {k: t for k, t in tensors.items() if k != gone}, header)
    with pytest.raises(CheckpointError, match=f"missing {gone}"):
        rio.load(path)


def test_unknown_zoo_name_is_a_checkpoint_error(tmp_path):
    path, header, tensors = _saved(tmp_path)
    _write_raw(path, tensors, {**header, "spec": {**header["spec"], "name": "no_such_net"}})
    with pytest.raises(CheckpointError, match="model.safetensors.*no_such_net"):
        rio.load(path)
