"""The engine on the structures users bring: unsupported ops, odd outputs, control flow, criteria."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rlpruner
from masking import assert_close, masked_reference, outputs, randomize, random_removals
from rlpruner.errors import ConfigError, PruningError, UnsupportedOperation
from rlpruner.importance import get as get_importance
from rlpruner.surgery import prune_channels


def _check_equivalent(model, x, seed=0, exact_only=True):
    graph = rlpruner.trace(model, x)
    removals = random_removals(graph, seed, fraction=1.0, exact_only=exact_only)
    pruned = prune_channels(model, graph, removals, inplace=False)
    assert_equivalent(model, pruned, graph, removals, x)
    return graph, removals


def assert_equivalent(model, pruned, graph, removals, x):
    """Something was removed, and the pruned model equals the original with those channels masked."""
    assert removals and any(len(units) for units in removals.values()), "nothing was pruned"
    before, after = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in pruned.parameters())
    assert after < before, f"the pruned model is not smaller ({after} >= {before} parameters)"
    for got, want in zip(outputs(pruned, x), outputs(masked_reference(model, graph, removals), x), strict=True):
        assert_close(got, want)


class Einsum(nn.Module):
    """A channel mix written with einsum: not in the rule table."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Parameter(torch.randn(8, 8))
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.einsum("nchw,dc->ndhw", F.relu(self.c1(x)), self.mix)
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


def test_unknown_op_freezes_its_channels_and_warns_with_op_and_module():
    model, x = Einsum().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"einsum in <model>"):
        graph = rlpruner.trace(model, x)
    by_layer = {g.name: g for g in graph.groups}
    assert not by_layer["c1"].prunable
    assert by_layer["c2"].prunable  # downstream of the unknown op: untouched, still prunable
    _check_equivalent(model, x)


def test_strict_mode_raises_naming_the_op():
    with pytest.raises(UnsupportedOperation, match="einsum"):
        rlpruner.trace(Einsum().eval(), torch.randn(1, 3, 8, 8), strict=True)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 5, 1)

    def forward(self, x, scale: float = 1.0):
        feats = F.relu(self.c2(F.relu(self.c1(x))))
        for _ in range(2):  # Python control flow on shapes
            if feats.shape[-1] > 2:
                feats = F.max_pool2d(feats, 2)
        return {"logits": self.c3(feats).flatten(1) * scale, "aux": (feats.sum(), self.c1(x))}


def test_dict_and_tuple_outputs_are_found_and_frozen():
    model, x = DictOut().double().eval(), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    # c2 is inexact (its channels are summed into an output), yet a sum of zeros is still exact
    graph, removals = _check_equivalent(model, x, exact_only=False)
    prunable = {g.name for g in graph.prunable_groups()}
    assert "c2" in prunable and "c1" not in prunable and "c3" not in prunable  # c1 is an output ("aux")


class ValueDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.c1(x))
        if float(y.mean()) > -1.0:  # reads values: cannot run on the meta device
            y = self.c2(y)
        return self.fc(y.mean((2, 3)))


def test_value_dependent_control_flow_falls_back_to_real_execution():
    model, x = ValueDependent().double().eval(), torch.randn(2, 3, 10, 10, dtype=torch.float64)
    graph, removals = _check_equivalent(model, x)
    assert "c2" in removals
    # the mean that steers the branch mixes c1's channels: prunable, but flagged as not exact
    assert graph.group("c1").prunable and not graph.group("c1").exact


class HardCodedSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 6, 3), nn.Linear(6, 2)

    def forward(self, x):
        y = F.relu(self.c1(x))
        return self.fc(F.relu(self.c2(y[:, :4])).mean((2, 3)))  # a hard-coded channel count


def test_hard_coded_channel_slicing_is_never_broken():
    model, x = HardCodedSlice().double().eval(), torch.randn(2, 3, 10, 10, dtype=torch.float64)
    graph, _ = _check_equivalent(model, x)
    c1 = [g for g in graph.groups if g.members[0].param == "c1.weight" and g.members[0].dim == 0]
    frozen = [g for g in c1 if not g.prunable]
    assert len(frozen) == 1 and frozen[0].size == 4  # the 4 sliced channels must stay
    assert sum(g.size for g in c1 if g.prunable) == 4  # the 4 dropped ones are free to go


class OptionAShortcut(nn.Module):
    """CIFAR ResNet 'option A': the shortcut pads channels with zeros."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.Linear(8, 2)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = self.c2(a) + F.pad(a[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return self.fc(F.relu(b).mean((2, 3)))


def test_channel_padding_shortcut():
    model, x = OptionAShortcut().double().eval(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph, removals = _check_equivalent(model, x)
    assert graph.group("c1").prunable  # the padded channels freeze only the padding's partners


class OtherDims(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 8, 3)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.v = nn.Conv3d(6, 4, 1)
        self.fc = nn.Linear(4 * 2 * 2, 2)  # flatten of spatial maps: C*H*W features

    def forward(self, x):
        y = F.relu(self.a(x))  # (n, 8, L)
        y = F.relu(self.up(y.view(y.shape[0], y.shape[1], 2, -1)))
        y = self.v(y.unsqueeze(2))[:, :, 0]
        return self.fc(F.adaptive_avg_pool2d(y, 2).flatten(1))


def test_conv1d_transposed_conv3d_and_flatten_linear():
    model, x = randomize(OtherDims().double().eval()), torch.randn(2, 3, 10, dtype=torch.float64)
    graph, removals = _check_equivalent(model, x)
    fc_member = next(m for m in graph.group("v").members if m.param == "fc.weight")
    assert len(fc_member.positions) == 4 * 4  # every channel owns its 2x2 flattened features
    assert {"a", "up", "v"} <= set(removals)


class Tokens(nn.Module):
    """Feature maps as token sequences: flatten(2).mT, a Linear over channels, then back."""

    def __init__(self):
        super().__init__()
        self.c1, self.mlp, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        y = F.relu(self.c1(x))
        tokens = self.mlp(y.flatten(2).mT)  # (n, hw, c)
        y = y + tokens.mT.reshape(y.shape)
        return self.fc(y.mean((2, 3)))


def test_property_reads_like_mT_are_data_movement():
    model, x = Tokens().double().eval(), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing unknown
        graph, removals = _check_equivalent(model, x)
    assert "c1" in removals and graph.group("c1").exact


def test_keep_freezes_layers_and_unknown_keep_is_an_error():
    model, x = DictOut().eval(), torch.randn(1, 3, 12, 12)
    graph = rlpruner.trace(model, x, keep=["c2"])
    assert not graph.prunable_groups()
    with pytest.raises(ConfigError, match="no module named 'nope'"):
        rlpruner.trace(model, x, keep=["nope"])


def test_group_norm_groups_are_whole_units_and_layer_norm_is_flagged_inexact():
    model = rlpruner.create_model("convnext_atto", num_classes=3).eval()
    graph = rlpruner.trace(model, torch.randn(1, 3, 32, 32))
    assert any(not g.exact for g in graph.prunable_groups())
    gn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.Conv2d(16, 2, 1))
    graph = rlpruner.trace(gn, torch.randn(1, 3, 8, 8))
    assert graph.group("0").size == 4 and graph.group("0").exact


# --- the high-level prune() API -------------------------------------------------------------------


def _small():
    torch.manual_seed(0)
    return rlpruner.create_model("resnet8", num_classes=4).eval(), torch.randn(4, 3, 16, 16)


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "activation", "variance", "bn_scale", "random"])
def test_every_criterion_prunes_and_the_model_still_runs(criterion):
    model, x = _small()
    before = rlpruner.count(model, x[:1]).flops
    rlpruner.prune(model, x[:1], 0.5, importance=criterion, data=(x, torch.arange(4)))
    assert rlpruner.count(model, x[:1]).flops < 0.5 * before


def test_l1_removes_the_weakest_filter_and_custom_criteria_plug_in():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[0].weight[2] *= 1e-3
        net[2].weight[:, 2] *= 1e-3
    x = torch.randn(1, 3, 6, 6)
    graph = rlpruner.trace(net, x)
    scores = get_importance("l1")(net, graph)["0"]
    assert int(np.argmin(scores)) == 2
    kept = copy.deepcopy(net)
    rlpruner.prune(kept, x, 0.25, importance="l1")
    assert torch.equal(kept[0].weight, net[0].weight[[0, 1, 3]])
    prefer_last = lambda m, g: {grp.name: -np.arange(grp.size, dtype=float) for grp in g.prunable_groups()}  # noqa: E731
    rlpruner.prune(net, x, 0.25, importance=prefer_last)
    assert net[0].out_channels == 3 and torch.equal(net[0].weight, kept[0].weight[:3]) is False


def test_ratio_validation_and_round_to():
    model, x = _small()
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        rlpruner.prune(model, x[:1], 1.0)
    with pytest.raises(ConfigError, match="unknown groups"):
        rlpruner.prune(model, x[:1], {"not_a_layer": 0.5})
    rlpruner.prune(model, x[:1], 0.4, round_to=8)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


def test_removing_every_unit_is_refused():
    model, x = _small()
    graph = rlpruner.trace(model, x[:1])
    g = graph.prunable_groups()[0]
    with pytest.raises(PruningError, match="would empty it"):
        prune_channels(model, graph, {g.name: list(range(g.size))})
