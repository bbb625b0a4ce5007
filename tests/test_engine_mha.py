"""nn.MultiheadAttention prunes: per head-dim channels (q/k together, v with out_proj's columns), its
inputs and its output, exactly; a pruned one is a PrunedMultiheadAttention with the same parameters and
call, saved and loaded like any pruned model, and exported.

The strongest check throughout: the pruned model computes what the original computes with the removed
channels masked out (tests/masking.py), for torch's own module with every option it takes.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import rlpruner
from masking import assert_close, masked_reference, outputs, random_removals, randomize
from rlpruner.graph.rules import fixups_for
from rlpruner.graph.rules.mha import PrunedMultiheadAttention, whole_heads
from rlpruner.surgery import prune_channels


def fixup(module: nn.Module) -> None:
    for fix in fixups_for(module):
        fix(module)


def _traced(model: nn.Module, x, rules=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no op of the model is unknown to the tracer
        return rlpruner.trace(model, x, rules=rules)


def _pruned_as_masked(model: nn.Module, graph, x, seed: int) -> tuple[nn.Module, dict]:
    """Random removals in every exact group: the pruned model computes what the masked original computes."""
    removals = random_removals(graph, seed, fraction=1.0)
    assert removals
    pruned = prune_channels(model, graph, removals, inplace=False)
    for got, want in zip(outputs(pruned, x), outputs(masked_reference(model, graph, removals), x), strict=True):
        assert_close(got, want)
    return pruned, removals


def _check(model: nn.Module, x, seeds=(0, 1, 2), rules=None) -> nn.Module:
    """`_pruned_as_masked` for several seeds; the last pruned model."""
    graph = _traced(model, x, rules)
    for seed in seeds:
        pruned, _ = _pruned_as_masked(model, graph, x, seed)
    return pruned


# --------------------------------------------------------------------------------------------------
# A ViT as torchvision writes one
# --------------------------------------------------------------------------------------------------

class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.self_attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int = 5, in_channels: int = 3, dim: int = 24, heads: int = 3, depth: int = 2):
        super().__init__()
        self.conv_proj = nn.Conv2d(in_channels, dim, 4, stride=4)
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.ln, self.heads = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        t = self.conv_proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embedding
        return self.heads(self.ln(self.layers(t))[:, 0])


def vit(num_classes: int = 5, in_channels: int = 3) -> nn.Module:
    """Built again by rlpruner.load from the spec (an import path)."""
    torch.manual_seed(0)
    return randomize(ViT(num_classes, in_channels)).eval()


def test_a_torchvision_style_vit_prunes_its_attention_and_mlps_exactly():
    model, x = vit(), torch.randn(2, 3, 16, 16)
    graph = _traced(model, x)
    attention = graph.group("layers.0.self_attention")
    assert attention.prunable and attention.exact and attention.size == 8  # the q/k head dim, across 3 heads
    assert graph.group("layers.0.mlp.0").prunable
    pruned = _check(model, x)
    inner = pruned.layers[0].self_attention
    assert type(inner) is PrunedMultiheadAttention and type(model.layers[0].self_attention) is nn.MultiheadAttention
    assert inner.num_heads == 3 and inner.in_proj_weight.shape[0] == 3 * (2 * inner.qk_head_dim + inner.v_head_dim)
    assert inner.scale == 8 ** -0.5  # the original scale, kept


def test_a_position_embedding_follows_the_token_channels_it_is_added_to():
    """(1, N, C) added to (B, N, C): its C dim is pruned with the tokens' channels (ViT's residual stream
    then prunes too; through LayerNorm it is inexact, so here a linear layer reads the tokens)."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.fc, self.head = nn.Conv2d(3, 12, 4, stride=4), nn.Linear(12, 8), nn.Linear(8, 3)
            self.cls = nn.Parameter(torch.randn(1, 1, 12))
            self.pos = nn.Parameter(torch.randn(1, 17, 12))

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
            return self.head(torch.relu(self.fc(t)).mean(1))

    torch.manual_seed(0)
    model = randomize(Tokens()).eval()
    x = torch.randn(2, 3, 16, 16)
    graph = _traced(model, x)
    assert graph.group("patch").prunable and graph.group("patch").exact
    pruned = _check(model, x)
    assert pruned.pos.shape[2] == pruned.cls.shape[2] == pruned.patch.out_channels < 12
    vit_graph = _traced(vit(), x)
    assert vit_graph.group("conv_proj").prunable and vit_graph.coverage().share > 0.95  # the residual stream too


def test_ratio_half_removes_parameters_of_the_attention_blocks():
    model, x = vit(), torch.randn(2, 3, 16, 16)
    small = rlpruner.prune(copy.deepcopy(model), x, ratio=0.5)
    before, after = (m.layers[0].self_attention.in_proj_weight.numel() for m in (model, small))
    assert after <= before // 2 + 24 * 3  # half of each head's channels, rounded up
    assert small(x).shape == model(x).shape


def test_a_pruned_vit_is_saved_loaded_and_exported(tmp_path):
    model, x = vit(), torch.randn(2, 3, 16, 16)
    small = rlpruner.prune(model, x, ratio=0.5)
    spec = {"source": "import", "name": "test_engine_mha:vit", "kwargs": {"num_classes": 5, "in_channels": 3}}
    rlpruner.save(small, tmp_path / "vit.rlp", spec=spec)
    back = rlpruner.load(tmp_path / "vit.rlp", example_inputs=x, allow_imports=["test_engine_mha"])
    assert type(back.layers[1].self_attention) is PrunedMultiheadAttention
    assert torch.equal(outputs(back, x)[0], outputs(small, x)[0])
    report = rlpruner.export(small, tmp_path / "vit.onnx", "onnx", x)  # verified against PyTorch
    assert report.max_abs_diff <= 1e-4


def test_torchs_transformer_encoder_prunes_exactly_and_never_takes_a_fused_path_it_no_longer_fits():
    """nn.TransformerEncoderLayer runs a fused kernel in eval mode that assumes the original layout."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.inp, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

        def forward(self, x):
            return self.out(self.enc(self.inp(x)).mean(1))

    torch.manual_seed(0)
    model = randomize(Net()).eval()
    x = torch.randn(2, 5, 6)
    graph = _traced(model, x)
    assert graph.group("enc.layers.1.self_attn").exact and graph.group("enc.layers.1.linear1").exact
    with torch.no_grad():  # where the fused path would be taken
        _check(model, x)


class LeViTAttention(nn.Module):
    """timm's LeViT: per-head q/k/v interleaved in one projection, split by `[self.key_dim,
    self.key_dim, self.val_dim]` (three attributes, no list of them), heads joined by `self.val_attn_dim`."""

    def __init__(self, dim=12, key_dim=4, heads=2, ratio=2):
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = heads, key_dim, ratio * key_dim
        self.val_attn_dim, self.scale = heads * ratio * key_dim, key_dim ** -0.5
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + ratio * key_dim))
        self.proj = nn.Linear(self.val_attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = (q.permute(0, 2, 1, 3) @ k.permute(0, 2, 3, 1) * self.scale).softmax(dim=-1)
        return x + self.proj((attn @ v.permute(0, 2, 1, 3)).transpose(1, 2).reshape(B, N, self.val_attn_dim))


def test_levit_attention_split_by_three_attributes_prunes_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(5, 12), LeViTAttention(), nn.Linear(12, 3)

        def forward(self, x):
            return self.head(self.attn(self.embed(x)).mean(1))

    torch.manual_seed(0)
    model = randomize(Net()).eval()
    x = torch.randn(2, 6, 5)
    graph = _traced(model, x)
    assert graph.coverage().share > 0.8
    for seed in range(3):
        pruned, removals = _pruned_as_masked(model, graph, x, seed)
        a = pruned.attn
        assert a.qkv.out_features == a.num_heads * (2 * a.key_dim + a.val_dim)
        assert a.val_attn_dim == a.num_heads * a.val_dim == a.proj.in_features


def test_whole_heads_prune_exactly_on_request_and_survive_save_and_load(tmp_path):
    model, x = vit(), torch.randn(2, 3, 16, 16)
    rules = {nn.MultiheadAttention: whole_heads}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = rlpruner.trace(model, x, rules=rules)
    heads = graph.group("layers.0.self_attention")
    assert heads.prunable and heads.exact and heads.size == 3  # one unit per head
    for seed in range(3):
        pruned, removals = _pruned_as_masked(model, graph, x, seed)
        for block, orig in zip(pruned.layers, model.layers):
            attention = block.self_attention
            kept = 3 - len(removals.get(graph.group(f"{_name(model, orig)}.self_attention").name, []))
            assert attention.num_heads == kept and attention.head_dim == attention.v_head_dim == 8  # heads go whole
    small = rlpruner.prune(model, x, ratio=0.5, rules=rules)
    assert [b.self_attention.num_heads for b in small.layers] == [2, 2]  # 3 heads, half: 2 kept (rounded up)
    spec = {"source": "import", "name": "test_engine_mha:vit", "kwargs": {"num_classes": 5, "in_channels": 3}}
    rlpruner.save(small, tmp_path / "heads.rlp", spec=spec)
    back = rlpruner.load(tmp_path / "heads.rlp", example_inputs=x, allow_imports=["test_engine_mha"])
    assert [b.self_attention.num_heads for b in back.layers] == [2, 2]
    assert torch.equal(outputs(back, x)[0], outputs(small, x)[0])


def test_a_per_head_mask_keeps_the_heads_whole():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mha, self.out = nn.Linear(4, 8), nn.MultiheadAttention(8, 2), nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            mask = torch.zeros(x.shape[1] * 2, x.shape[0], x.shape[0])  # (batch * heads, L, S)
            return self.out(self.mha(h, h, h, attn_mask=mask, need_weights=False)[0])

    graph = _traced(Net().eval(), torch.randn(5, 2, 4), {nn.MultiheadAttention: whole_heads})
    heads = graph.group("mha")
    assert not heads.prunable and "per-head attn_mask" in heads.reason


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


# --------------------------------------------------------------------------------------------------
# Every option of torch's module
# --------------------------------------------------------------------------------------------------

class Around(nn.Module):
    """Linear layers before (query and key/value sources) and after one nn.MultiheadAttention."""

    def __init__(self, residual: bool, kdim: int | None, masks: bool, call: dict, **options):
        super().__init__()
        self.residual, self.masks, self.call = residual, masks, call
        self.q = nn.Linear(6, 12)
        self.kv = nn.Linear(5, kdim or 12)
        self.mha = nn.MultiheadAttention(12, 3, kdim=kdim, vdim=kdim, **options)
        self.fc = nn.Linear(12, 4)

    def forward(self, x, y):
        q, kv = self.q(x), self.kv(y)
        kwargs = dict(self.call)
        if self.masks:
            batch_dim = 0 if self.mha.batch_first else 1
            tokens_q, tokens_k = x.shape[1 - batch_dim], y.shape[1 - batch_dim]
            padding = torch.zeros(x.shape[batch_dim], tokens_k, dtype=torch.bool)
            padding[0, -2:] = True
            kwargs.update(key_padding_mask=padding,
                          attn_mask=torch.arange(tokens_k)[None, :] > torch.arange(tokens_q)[:, None] + 1)
        out, weights = self.mha(q, kv, kv, **kwargs)
        out = self.fc(out + q if self.residual else out)
        return (out,) if weights is None else (out, weights)


CASES = {
    "self, packed": dict(residual=True, kdim=None, masks=False, call={}),
    "batch first, masks": dict(residual=True, kdim=None, masks=True, call={}, batch_first=True),
    "kdim/vdim (separate weights)": dict(residual=False, kdim=10, masks=True, call={"average_attn_weights": False}),
    "bias_k/v, zero attn, no bias": dict(residual=True, kdim=None, masks=True, call={}, add_bias_kv=True,
                                         add_zero_attn=True, bias=False),
    "no weights": dict(residual=False, kdim=None, masks=False, call={"need_weights": False}, batch_first=True),
}


@pytest.mark.parametrize("rules", [None, {nn.MultiheadAttention: whole_heads}], ids=["head-dims", "whole-heads"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_every_option_of_the_module_prunes_exactly(case, rules):
    torch.manual_seed(0)
    model = randomize(Around(**CASES[case])).eval()
    first = model.mha.batch_first
    x = (torch.randn(2, 5, 6), torch.randn(2, 7, 5)) if first else (torch.randn(5, 2, 6), torch.randn(7, 2, 5))
    graph = _traced(model, x, rules)
    if rules is None:
        assert graph.group("mha").prunable and graph.group("mha#1").prunable  # q/k and v/out_proj units
    else:  # the heads; the attention weights returned by the module follow them
        heads, call = graph.group("mha"), CASES[case]["call"]
        assert heads.size == 3
        if call.get("need_weights", True):
            averaged = call.get("average_attn_weights", True)
            assert (heads.prunable, heads.exact) == ((True, False) if averaged else (False, True))
            return  # averaged: over fewer heads; per head: a model output
        assert heads.prunable and heads.exact
    pruned = _check(model, x, rules=rules)
    _pruned_as_masked(pruned, _traced(pruned, x, rules), x, 7)  # a pruned module traces and prunes again


@pytest.mark.parametrize("options", [{}, {"batch_first": True}, {"add_bias_kv": True, "add_zero_attn": True}])
def test_the_pruned_form_computes_what_torchs_module_computes(options):
    """Before any channel goes: outputs, attention weights and gradients, batched and unbatched."""
    torch.manual_seed(0)
    torch_mha = nn.MultiheadAttention(8, 2, **options)
    ours = copy.deepcopy(torch_mha)
    fixup(ours)  # what surgery does to a module whose tensors it sliced
    assert type(ours) is PrunedMultiheadAttention and ours.head_dim == ours.v_head_dim == 4 and ours.scale == 0.5
    batch_first = options.get("batch_first", False)
    q, k = (torch.randn(3, 4, 8), torch.randn(3, 6, 8)) if batch_first else (torch.randn(4, 3, 8), torch.randn(6, 3, 8))
    mask = torch.rand(4, 6) > 0.6
    mask[:, 0] = False
    for call in ({}, {"attn_mask": mask}, {"need_weights": False}, {"average_attn_weights": False},
                 {"attn_mask": mask.float() * -3.0, "is_causal": False}):
        for module in (torch_mha, ours):
            module.zero_grad()
        a, b = torch_mha(q, k, k, **call), ours(q, k, k, **call)
        assert_close(a[0], b[0])
        assert (a[1] is None) == (b[1] is None) and (a[1] is None or torch.allclose(a[1], b[1], atol=1e-6))
        a[0].square().sum().backward()
        b[0].square().sum().backward()
        assert_close(torch_mha.in_proj_weight.grad, ours.in_proj_weight.grad)
    unbatched = (q[0], k[0]) if batch_first else (q[:, 0], k[:, 0])
    assert_close(torch_mha(unbatched[0], unbatched[1], unbatched[1])[0], ours(unbatched[0], unbatched[1], unbatched[1])[0])
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(q, k, k, is_causal=True)


def test_attention_with_channels_along_the_tokens_is_frozen_and_named():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.mha = nn.Linear(4, 8), nn.MultiheadAttention(4, 2)

        def forward(self, x):  # (tokens, batch, 4): the linear's channels become the token dim
            t = self.fc(x).transpose(0, 2).reshape(8, -1, 4)
            return self.mha(t, t, t)[0]

    model = Odd().eval()
    with pytest.warns(UserWarning, match="MultiheadAttention in mha"):
        graph = rlpruner.trace(model, torch.randn(4, 1, 4))
    assert not graph.group("fc").prunable and "channels along the token" in graph.group("fc").reason
