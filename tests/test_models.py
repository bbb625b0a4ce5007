"""The model zoo: every model builds and runs, specs round-trip, names and import paths fail clearly."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlpruner.errors import CheckpointError, ConfigError, UnknownNameError
from rlpruner.models import SPEC_ATTR, ModelRegistry, create_model, list_models, model_from_spec, model_spec
from rlpruner.models.shufflenet import channel_shuffle

# The architectures issue 2 asks for, plus the two small demo models.
EXPECTED_MODELS = {
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "resnet20", "resnet32", "resnet56", "resnet110",
    "resnet18", "resnet50", "googlenet", "densenet121", "mobilenetv2", "mobilenetv3_large",
    "mobilenetv3_small", "shufflenetv2", "resnext29_32x4d", "efficientnet_b0", "convnext_atto",
    "squeezenet1_1", "simple_cnn", "resnet8",
}



def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def outputs_of_linears(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out))
             for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        return model(x), seen
    finally:
        for hook in hooks:
            hook.remove()


def test_registry_holds_the_zoo():
    assert set(list_models()) == EXPECTED_MODELS
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_forward_backward_at_32(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7).train()
    x = torch.randn(2, 3, 32, 32)
    logits, linear_outputs = outputs_of_linears(model, x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    assert any(out is logits for out in linear_outputs), "the logits must come from an nn.Linear"
    F.cross_entropy(logits, torch.tensor([0, 6])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_one_channel_input_and_other_size(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 16, 16))
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20", "mobilenetv3_small", "shufflenetv2",
                                  "convnext_atto", "vgg11_bn", "densenet121", "squeezenet1_1"])
@pytest.mark.parametrize("size", [24, 64])
def test_other_input_sizes(name, size):
    model = create_model(name, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 4)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_spec_round_trips(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    spec = json.loads(json.dumps(getattr(model, SPEC_ATTR)))
    assert spec == {"source": "zoo", "name": name, "kwargs": {"num_classes": 5, "in_channels": 3}}
    rebuilt = model_from_spec(spec).eval()
    assert type(rebuilt) is type(model)
    assert getattr(rebuilt, SPEC_ATTR) == spec
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_options_are_recorded_and_rebuilt():
    small = create_model("mobilenetv2", num_classes=4, width_mult=0.5)
    assert getattr(small, SPEC_ATTR)["kwargs"] == {"num_classes": 4, "in_channels": 3, "width_mult": 0.5}
    assert n_params(small) < n_params(create_model("mobilenetv2", num_classes=4))
    assert n_params(model_from_spec(getattr(small, SPEC_ATTR))) == n_params(small)
    cnn = create_model("simple_cnn", widths=(4, 8))
    assert model_spec(cnn)["kwargs"]["widths"] == [4, 8]  # as it reads back from JSON
    assert model_spec(nn.Linear(2, 2)) is None


def test_width_mult_keeps_channels_divisible_by_8():
    model = create_model("mobilenetv3_large", width_mult=0.35)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    # the SE expand convs restore the block width; every conv width is a multiple of 8
    assert all(w % 8 == 0 for w in widths)


def test_simple_cnn_params_by_hand():
    model = create_model("simple_cnn", num_classes=3, in_channels=1, widths=[4, 8])
    conv1, bn1 = 1 * 4 * 3 * 3, 2 * 4
    conv2, bn2 = 4 * 8 * 3 * 3, 2 * 8
    linear = 8 * 2 * 2 * 3 + 3  # 8 channels x 2x2 pooled positions -> 3 classes, with bias
    assert n_params(model) == conv1 + bn1 + conv2 + bn2 + linear == 447


def test_resnet20_params_by_hand():
    def conv_bn(cin, cout, k):
        return cin * cout * k * k + 2 * cout

    stem = conv_bn(3, 16, 3)
    stage1 = 3 * 2 * conv_bn(16, 16, 3)
    stage2 = conv_bn(16, 32, 3) + conv_bn(32, 32, 3) + conv_bn(16, 32, 1) + 2 * 2 * conv_bn(32, 32, 3)
    stage3 = conv_bn(32, 64, 3) + conv_bn(64, 64, 3) + conv_bn(32, 64, 1) + 2 * 2 * conv_bn(64, 64, 3)
    fc = 64 * 10 + 10
    assert n_params(create_model("resnet20")) == stem + stage1 + stage2 + stage3 + fc == 272_474


def test_vgg11_params_by_hand():
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
             (512, 512)]
    features = sum(cin * cout * 9 + 2 * cout for cin, cout in convs)
    head = (512 * 512 + 512) + (512 * 100 + 100)
    assert n_params(create_model("vgg11_bn", num_classes=100)) == features + head


def test_channel_shuffle_interleaves_the_halves():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_init_is_kaiming_and_bn_identity():
    torch.manual_seed(0)
    model = create_model("resnet20")
    conv = model.layer3[1].conv1  # 64 -> 64, 3x3: fan-out 576
    assert abs(conv.weight.std().item() / (2 / 576) ** 0.5 - 1) < 0.05
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


def test_same_seed_same_weights():
    torch.manual_seed(3)
    first = create_model("resnet8").state_dict()
    torch.manual_seed(3)
    second = create_model("resnet8").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet8"])
def test_demo_models_learn_quickly(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=1)
    x = torch.randn(32, 1, 16, 16)
    y = torch.randint(0, 4, (32,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]  # memorises a random batch


def test_unknown_name_lists_close_matches_first():
    with pytest.raises(UnknownNameError) as info:
        create_model("resnet21")
    message = str(info.value)
    assert "'resnet21'" in message and "package.module:factory" in message
    assert message.index("resnet20") < message.index("vgg11_bn")
    assert all(name in message for name in EXPECTED_MODELS)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"width_mult": 0.5}, "width_mult"),           # vgg has no width_mult
    ({"num_classes": 0}, "num_classes"),
    ({"in_channels": "3"}, "in_channels"),
    ({"num_classes": True}, "num_classes"),
    ({"dropout": 1.5}, "dropout"),
    ({"hidden": object()}, "not a JSON value"),
])
def test_bad_options(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_model("vgg11_bn", **kwargs)


def test_unknown_option_lists_the_options():
    with pytest.raises(ConfigError) as info:
        create_model("resnet20", width_mult=2.0)
    assert "width_mult" in str(info.value) and "num_classes, in_channels" in str(info.value)


@pytest.mark.parametrize("name, kwargs, fragment", [
    ("mobilenetv2", {"width_mult": 0}, "width_mult"),
    ("simple_cnn", {"widths": []}, "widths"),
    ("simple_cnn", {"widths": [4, -1]}, "widths"),
    ("convnext_atto", {"dims": [8, 16], "depths": [1]}, "depths must be 2"),
    ("resnext29_32x4d", {"cardinality": 0}, "cardinality"),
])
def test_bad_model_options(name, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        create_model(name, **kwargs)


USER_MODULE = textwrap.dedent("""
    from torch import nn

    def full(num_classes, in_channels, hidden=4):
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(hidden, num_classes))

    def bare():
        return nn.Linear(4, 2)

    def any_options(**options):
        return nn.Linear(options["in_channels"], options["num_classes"])

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.fc = nn.Linear(8, num_classes)

    NOT_CALLABLE = 3

    def not_a_module(num_classes=10):
        return "model"

    def needs_depth(depth, num_classes=10):
        return nn.Linear(depth, num_classes)
""")


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    name = "rlpruner_test_user_models"
    folder = tmp_path_factory.mktemp("user")
    (folder / f"{name}.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    yield name
    sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def test_import_path_passes_accepted_arguments(user_module):
    path = f"{user_module}:full"
    model = create_model(path, num_classes=3, in_channels=1, hidden=6)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    spec = getattr(model, SPEC_ATTR)
    assert spec == {"source": "import", "name": path,
                    "kwargs": {"num_classes": 3, "in_channels": 1, "hidden": 6}}
    assert n_params(model_from_spec(json.loads(json.dumps(spec)))) == n_params(model)
    assert create_model(f"{user_module}:bare", num_classes=5).out_features == 2  # not passed
    assert create_model(f"{user_module}:Net", num_classes=5).fc.out_features == 5
    assert create_model(f"{user_module}:any_options", num_classes=6, in_channels=2).in_features == 2


@pytest.mark.parametrize("attribute, fragment", [
    ("missing", "has no attribute 'missing'"),
    ("NOT_CALLABLE", "not a callable"),
    ("not_a_module", "not a torch.nn.Module"),
    ("needs_depth", "depth"),
])
def test_bad_import_paths(user_module, attribute, fragment):
    path = f"{user_module}:{attribute}"
    with pytest.raises(ConfigError) as info:
        create_model(path)
    assert path in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("path, fragment", [
    ("rlpruner_no_such_module:build", "cannot import module 'rlpruner_no_such_module'"),
    (":build", "expected 'package.module:factory'"),
    ("rlpruner.models:", "expected 'package.module:factory'"),
    ("a:b:c", "expected 'package.module:factory'"),
])
def test_malformed_or_missing_import_paths(path, fragment):
    with pytest.raises(ConfigError) as info:
        create_model(path)
    assert repr(path) in str(info.value) and fragment in str(info.value)


def test_import_path_refuses_options_the_factory_lacks(user_module):
    with pytest.raises(ConfigError, match="hidden"):
        create_model(f"{user_module}:bare", hidden=3)


GOOD_SPEC = {"source": "zoo", "name": "resnet8", "kwargs": {"num_classes": 4, "in_channels": 1}}


@pytest.mark.parametrize("spec, fragment", [
    ([1, 2], "mapping"),
    ({"source": "zoo", "name": "resnet8"}, "keys"),
    ({**GOOD_SPEC, "extra": 1}, "keys"),
    ({**GOOD_SPEC, "source": "pickle"}, "source"),
    ({**GOOD_SPEC, "source": "import"}, "does not match"),
    ({**GOOD_SPEC, "name": ""}, "name"),
    ({**GOOD_SPEC, "kwargs": [1]}, "kwargs"),
    ({**GOOD_SPEC, "kwargs": {"num_classes": 4}}, "in_channels"),
    ({**GOOD_SPEC, "kwargs": {"num_classes": True, "in_channels": 1}}, "num_classes"),
    ({**GOOD_SPEC, "name": "resnet9"}, "unknown model 'resnet9'"),
    ({**GOOD_SPEC, "source": "import", "name": "rlpruner_no_such_module:f"}, "cannot import"),
    ({**GOOD_SPEC, "kwargs": {"num_classes": 4, "in_channels": 1, "depth": 3}}, "depth"),
])
def test_malformed_specs(spec, fragment):
    with pytest.raises(CheckpointError, match=fragment):
        model_from_spec(spec)


def test_registry_rules():
    registry = ModelRegistry()

    @registry.register("tiny")
    def tiny(num_classes=10, in_channels=3):
        return nn.Linear(in_channels, num_classes)

    assert registry.names() == ["tiny"] and registry.factory("tiny") is tiny
    with pytest.raises(ConfigError, match="already registered"):
        registry.add("tiny", tiny)
    with pytest.raises(ConfigError, match="without ':'"):
        registry.add("a:b", tiny)
    with pytest.raises(ConfigError, match="num_classes"):
        registry.add("no_classes", lambda in_channels=3: nn.Identity())
    with pytest.raises(UnknownNameError, match="closest first\\): tiny"):
        registry.factory("tiney")
