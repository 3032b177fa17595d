"""Opt-in quantised decoding: every scheme swaps what it says, the split head computes only the asked rows,
quantised models decode, and the quality guard counts agreement correctly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from omnivox.core.errors import InputError, PluginError
from omnivox.core.kernel import quantize as quantize_module
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import generate
from omnivox.core.kernel.model import FewRowsLinear
from omnivox.core.kernel.quantize import (
    DEFAULT_SCHEME,
    SCHEMES,
    SplitHead,
    greedy_agreement,
    quantize,
    quantize_int8,
    teacher_forced_agreement,
)


def _tiny(seed: int = 0, **overrides) -> OmniModel:
    return OmniModel.random(OmniConfig.tiny(**overrides), seed=seed)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_swaps_the_linears_it_names_and_keeps_logits_close(scheme):
    model = _tiny(post_adapter=True, post_adapter_layers=1)
    prompt = model.layout.audio_prompt(6, "A1A2")
    features = torch.randn(1, 6, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(0))
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.lm.modules())  # lm_head, audio_head included
    with torch.no_grad():
        before = model.lm(prompt.ids, features, prompt.audio_lengths)
        quantize(model.lm, scheme)
        after = model.lm(prompt.ids, features, prompt.audio_lengths)
    quantised = [m for m in model.lm.modules() if isinstance(m, DynamicLinear)]
    fp32 = [m for m in model.lm.modules() if isinstance(m, torch.nn.Linear)]
    assert isinstance(model.lm.lm_head, SplitHead)
    # per-channel schemes fuse q/k/v into one Linear and gate/up into another: 3 fewer per Qwen2 block
    fused = 0 if scheme == "int8-tensor" else 3 * (model.config.n_layer + model.config.post_adapter_layers)
    if scheme == "int8-channel-head":  # the head's two blocks and the post-adapter's audio head stay fp32
        assert len(quantised) == n_linear - 2 - fused and len(fp32) == 3
    else:  # the head became two quantised blocks
        assert len(quantised) == n_linear + 1 - fused and not fp32
    want = torch.per_channel_affine if scheme != "int8-tensor" else torch.per_tensor_affine
    assert all(m.weight().qscheme() == want for m in quantised)
    for a, b in ((before.text_logits, after.text_logits), (before.audio_logits, after.audio_logits)):
        assert ((a - b).norm() / a.norm()).item() < 0.1


def test_split_head_computes_exactly_the_asked_blocks():
    model = _tiny(seed=1)
    quantize(model.lm, DEFAULT_SCHEME)
    prompt = model.layout.text_prompt([5, 6, 7], "T1T2")
    with torch.no_grad():
        full = model.lm(prompt.ids)
        text = model.lm(prompt.ids, audio_rows=())
        audio = model.lm(prompt.ids, text_rows=(), audio_rows=(0,))
    assert text.audio_logits is None and audio.text_logits is None
    assert torch.equal(full.text_logits, text.text_logits)
    assert torch.equal(full.audio_logits, audio.audio_logits)
    head = model.lm.lm_head
    h = torch.randn(1, 2, model.config.n_embd)
    assert torch.equal(head.partial(h, 3, 9), head(h)[..., 3:9])  # not a block: sliced from the full product


def test_quantised_models_decode_in_every_strategy():
    model = _tiny(seed=1)
    quantize_int8(model.lm)
    result = generate(model, task="T1A2", text_ids=[5, 6, 7], max_steps=12)
    assert result.steps == 12 and result.tokens.shape == (8, 12)
    features = torch.randn(5, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(2))
    batch = generate(model, task="A1A2", audio_features=features, strategy="batch-parallel", max_steps=10)
    assert batch.steps == 10


def test_the_batch_engine_decodes_a_quantised_model():
    """The engine's batched step (OmniLM.step: per-row positions, a padding mask) runs through the int8 lean
    blocks' masked single-position attention: a batch of one keeps the tokens of decoding alone, and turns
    batched together all decode to their step budget (not token-exact: dynamic int8 quantises the activations
    of one call, all rows, with one scale)."""
    model = _tiny(seed=1)
    quantize_int8(model.lm)
    features = torch.randn(5, model.config.whisper_adapter_dim, generator=torch.Generator().manual_seed(2))
    turns = [dict(task="T1A2", text_ids=[5, 6, 7], max_steps=12),
             dict(task="A1A2", audio_features=features, strategy="batch-parallel", max_steps=10),
             dict(task="A1T2", audio_features=features[:3], max_steps=8)]

    def batched(kwargs_list):
        engine, done = BatchEngine(model), {}
        for i, kwargs in enumerate(kwargs_list):
            engine.submit(lambda event, i=i: done.__setitem__(i, event), **kwargs)
        while not engine.idle:
            engine.step()
        return [done[i].result for i in range(len(kwargs_list))]

    together = batched(turns)
    for kwargs, result in zip(turns, together, strict=True):
        assert result.stop_reason == "max_steps" and result.steps == kwargs["max_steps"]
        assert torch.equal(batched([kwargs])[0].tokens, generate(model, **kwargs).tokens)


def test_teacher_forced_agreement_counts_top1_matches_per_stream():
    reference = _tiny(seed=3)
    prompt = reference.layout.text_prompt([5, 6, 7, 8], "T1A2")
    same = teacher_forced_agreement(reference.lm, reference.lm, prompt.ids)
    assert set(same) == {"text"} | {f"audio {i}" for i in range(7)} and all(v == 1.0 for v in same.values())

    candidate = _tiny(seed=3)
    with torch.no_grad():  # flip the text head: text argmaxes move, audio ones cannot
        text_rows = candidate.layout.text_vocab_size
        candidate.lm.lm_head.weight[:text_rows] *= -1
        ref, new = reference.lm(prompt.ids), candidate.lm(prompt.ids)
    expected = (ref.text_logits.argmax(-1) == new.text_logits.argmax(-1)).float().mean().item()
    got = teacher_forced_agreement(reference.lm, candidate.lm, prompt.ids)
    assert got["text"] == pytest.approx(expected) and got["text"] < 1.0
    assert all(got[f"audio {i}"] == 1.0 for i in range(7))
    last = teacher_forced_agreement(reference.lm, candidate.lm, prompt.ids, positions=slice(-1, None))
    assert last["text"] == float(ref.text_logits[0, -1].argmax() == new.text_logits[0, -1].argmax())



def test_stepwise_agreement_reads_as_decoding_does():
    """answer_from: prefill then one position per call, as a decoder runs; on fp32 the same top-1 as one
    forward, and a quantised model is compared on what it computes when decoding."""
    reference = _tiny(seed=3)
    prompt = reference.layout.text_prompt([5, 6, 7, 8, 9, 10], "T1A2")
    P = prompt.ids.shape[-1] - 4
    with torch.inference_mode():
        whole = reference.lm(prompt.ids)
        steps = quantize_module._stepwise_logits(reference.lm, prompt.ids, None, None, P)
    torch.testing.assert_close(steps[0], whole.text_logits[:, P - 1 :], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steps[1], whole.audio_logits[:, :, P - 1 :], rtol=1e-4, atol=1e-4)
    same = teacher_forced_agreement(reference.lm, reference.lm, prompt.ids, answer_from=P)
    assert all(v == 1.0 for v in same.values())
    candidate = quantize(copy.deepcopy(reference.lm), "int8-tensor")
    got = teacher_forced_agreement(reference.lm, candidate, prompt.ids, answer_from=P)
    with torch.inference_mode():
        new = quantize_module._stepwise_logits(candidate, prompt.ids, None, None, P)
    expected = (steps[0].argmax(-1) == new[0].argmax(-1)).float().mean().item()
    assert got["text"] == pytest.approx(expected)

def test_greedy_agreement_is_the_identical_prefix():
    a = torch.arange(24).view(3, 8)
    b = a.clone()
    assert greedy_agreement(a, b) == 8
    b[1, 5] = -1
    assert greedy_agreement(a, b) == 5
    assert greedy_agreement(a, b[:, :4]) == 4  # shorter run, identical so far
    b[2, 0] = -1
    assert greedy_agreement(a, b) == 0


def test_bad_scheme_and_device():
    with pytest.raises(PluginError, match="int8-channel"):
        quantize(_tiny().lm, "int3")
    model = _tiny()
    model.lm.to("meta")
    with pytest.raises(InputError, match="runs on the CPU"):
        quantize_int8(model.lm)


def test_fp32_linears_use_the_few_rows_kernel_only_where_it_is_exact_enough():
    lin = FewRowsLinear(16, 40)
    x = torch.randn(2, 1, 16)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
    with torch.no_grad():
        y = lin(torch.randn(9, 16))  # more rows than a decode step: F.linear
    assert y.shape == (9, 40)


@pytest.mark.skipif(not quantize_module.FULL_RANGE, reason="this CPU has no VNNI: activations keep 7 bits")
def test_full_range_activations_halve_the_rounding_error_on_vnni():
    gen = torch.Generator().manual_seed(0)
    weight, x = torch.randn(256, 512, generator=gen), torch.randn(4, 512, generator=gen)
    layer = quantize_module._int8(weight, None, per_channel=True)
    packed = layer._packed_params._packed_params
    reference = x @ weight.t()
    full = (layer(x) - reference).norm()
    seven_bits = (torch.ops.quantized.linear_dynamic(x, packed, reduce_range=True) - reference).norm()
    assert full < 0.75 * seven_bits
