"""The lean Qwen2 blocks of the quantised path: the same model as transformers' blocks (fp32 factory: logits
equal to rounding), fused int8 projections bit-identical to separate ones, and the single-position attention
equal to SDPA with and without a padding mask."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnivox.core.kernel import quantize as quantize_module
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import generate
from omnivox.core.kernel.lean_blocks import LeanAttention, LeanMLP, LeanRMSNorm, _attend_one, lean_blocks
from omnivox.core.kernel.quantize import quantize


def _fp32_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight, layer.bias = nn.Parameter(weight), None if bias is None else nn.Parameter(bias)
    return layer


@pytest.mark.parametrize("post_adapter", [False, True])
def test_lean_blocks_compute_the_same_model_as_transformers_blocks(post_adapter):
    model = OmniModel.random(OmniConfig.tiny(post_adapter=post_adapter, post_adapter_layers=1), seed=2)
    lean = copy.deepcopy(model.lm)
    lean_blocks(lean, _fp32_linear)
    kinds = {type(m) for m in lean.modules()}
    assert {LeanAttention, LeanMLP, LeanRMSNorm} <= kinds
    blocks = [m for m in lean.modules() if isinstance(m, (LeanAttention, LeanMLP))]
    assert not any(hasattr(m, "q_proj") or hasattr(m, "gate_proj") for m in blocks)  # the separate ones dropped
    features = torch.randn(1, 6, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(0))
    prompt = model.layout.audio_prompt(6, "A1A2")
    with torch.inference_mode():
        pairs = [(model.lm, model.lm.new_cache()), (lean, lean.new_cache())]
        outs = [lm(prompt.ids, features, prompt.audio_lengths, cache=c) for lm, c in pairs]
        for _ in range(4):  # decode steps: the single-position attention over the growing cache
            for a, b in ((outs[0].text_logits, outs[1].text_logits), (outs[0].audio_logits, outs[1].audio_logits)):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            outs = [lm(prompt.ids[..., -1:], cache=c) for lm, c in pairs]


def test_int8_fused_projections_equal_the_separate_ones_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(rows, 64, generator=gen) for rows in (64, 16, 16))
    bias = torch.randn(96, generator=gen)
    fused = quantize_module._int8(torch.cat([q, k, v]), bias, per_channel=True)
    biases = bias.split([64, 16, 16])
    parts = [quantize_module._int8(w, b, per_channel=True) for w, b in zip((q, k, v), biases, strict=True)]
    x = torch.randn(2, 1, 64, generator=gen)
    with torch.inference_mode():
        assert torch.equal(fused(x), torch.cat([p(x) for p in parts], dim=-1))


def test_quantised_decoding_is_unchanged_by_the_lean_blocks(monkeypatch):
    """int8-channel with and without the lean blocks: the same greedy tokens (the fused products are equal;
    only the norm's and attention's sum order differ)."""
    model = OmniModel.random(OmniConfig.tiny(), seed=1)
    lean = quantize(copy.deepcopy(model.lm), "int8-channel")
    monkeypatch.setattr(quantize_module, "lean_blocks", lambda lm, linear: None)
    plain = quantize(copy.deepcopy(model.lm), "int8-channel")
    assert any(isinstance(m, LeanAttention) for m in lean.modules())
    assert not any(isinstance(m, LeanAttention) for m in plain.modules())
    features = torch.randn(7, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(3))
    for strategy in ("batch-parallel", "text-delay"):
        a, b = (generate(OmniModel(lm, None), task="A1A2", audio_features=features, strategy=strategy, max_steps=24)
                for lm in (lean, plain))
        assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_single_position_attention_equals_sdpa(mask_kind):
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 8, 1, 16, generator=gen), torch.randn(3, 2, 9, 16, generator=gen), torch.randn(
        3, 2, 9, 16, generator=gen)
    valid = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    valid[1, ..., :4] = False  # row 1 is left-padded
    mask = {None: None, "bool": valid, "additive": torch.zeros(valid.shape).masked_fill(~valid, float("-inf"))}[
        mask_kind]
    got = _attend_one(q, k, v, mask, 0.25)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1),
                                          attn_mask=None if mask is None else mask, scale=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
