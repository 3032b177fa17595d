"""Opt-in int8 dynamic quantisation: every Linear is swapped, logits stay close, decoding works."""

from __future__ import annotations

import pytest
import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import generate
from omnivox.core.kernel.quantize import quantize_int8


def test_int8_model_swaps_every_linear_and_keeps_logits_close():
    model = OmniModel.random(OmniConfig.tiny(post_adapter=True, post_adapter_layers=1), seed=0)
    prompt = model.layout.audio_prompt(6, "A1A2")
    features = torch.randn(1, 6, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.lm(prompt.ids, features, prompt.audio_lengths)
        quantize_int8(model.lm)
        after = model.lm(prompt.ids, features, prompt.audio_lengths)
    assert not any(type(m) is torch.nn.Linear for m in model.lm.modules())
    for a, b in ((before.text_logits, after.text_logits), (before.audio_logits, after.audio_logits)):
        assert ((a - b).norm() / a.norm()).item() < 0.1


def test_int8_model_generates_and_text_only_heads_agree():
    model = OmniModel.random(OmniConfig.tiny(), seed=1)
    quantize_int8(model.lm)
    prompt = model.layout.text_prompt([5, 6, 7], "T1T2")
    with torch.no_grad():
        full, text = model.lm(prompt.ids), model.lm(prompt.ids, text_only=True)
    assert torch.equal(full.text_logits, text.text_logits)
    result = generate(model, task="T1A2", text_ids=[5, 6, 7], max_steps=12)
    assert result.steps == 12 and result.tokens.shape == (8, 12)


def test_int8_refuses_a_model_off_the_cpu():
    model = OmniModel.random(OmniConfig.tiny(), seed=0)
    model.lm.to("meta")
    with pytest.raises(InputError, match="runs on the CPU"):
        quantize_int8(model.lm)
