"""OmniLM on upstream-format checkpoints vs the reference forward written from upstream's formulas."""

from __future__ import annotations

import pytest
import torch
from upstream_reference import (
    UPSTREAM_FIELDS,
    reference_forward,
    tiny_fields,
    upstream_audio_prompt,
    upstream_text_prompt,
    write_upstream_checkpoint,
)

from omnivox.core.kernel.batching import BatchCache
from omnivox.core.kernel.checkpoint import OmniModel, convert_upstream
from omnivox.core.kernel.strategies import BatchParallelStrategy

TOL = 1e-4
AUDIO_TASKS = {"A1A2": ("answer_a", "answer_t"), "A1T2": ("pad_a", "answer_t"), "A1T1": ("pad_a", "asr")}


@pytest.fixture(scope="module", params=["llamamlp", "mlp", "post_adapter"])
def checkpoint(request, tmp_path_factory):
    variant = request.param
    cfg = tiny_fields(asr_adapter="mlp" if variant == "mlp" else "llamamlp",
                      post_adapter=variant == "post_adapter", post_adapter_layers=2)
    directory = tmp_path_factory.mktemp(variant)
    sd = write_upstream_checkpoint(directory, cfg, seed=3)
    return cfg, sd, OmniModel.from_pretrained(directory)


def _absolute(model, prompt_ids: torch.Tensor) -> list[torch.Tensor]:
    ids = prompt_ids + model.lm.stream_offsets.view(1, -1, 1)
    return [ids[:, s] for s in range(ids.shape[1])]


def _compare(model, cfg, sd, prompt, features):
    with torch.no_grad():
        out = model.lm(prompt.ids, features, prompt.audio_lengths)
        ref_audio, ref_text = reference_forward(sd, cfg, _absolute(model, prompt.ids), features,
                                                prompt.audio_lengths)
    assert (out.text_logits - ref_text).abs().max().item() <= TOL
    for i in range(7):
        assert (out.audio_logits[:, i] - ref_audio[i]).abs().max().item() <= TOL


@pytest.mark.parametrize("task", sorted(AUDIO_TASKS))
def test_audio_prompts_match_upstream_layout_and_logits(checkpoint, task):
    cfg, sd, model = checkpoint
    T = 9
    prompt = model.layout.audio_prompt(T, task)
    upstream = torch.tensor(upstream_audio_prompt(cfg, T, *AUDIO_TASKS[task]))
    assert torch.equal(torch.stack(_absolute(model, prompt.ids), dim=1)[0], upstream)
    features = torch.randn(1, T, cfg["whisper_adapter_dim"], generator=torch.Generator().manual_seed(1))
    _compare(model, cfg, sd, prompt, features)


@pytest.mark.parametrize("task", ["T1A2", "T1T2"])
def test_text_prompts_match_upstream_layout_and_logits(checkpoint, task):
    cfg, sd, model = checkpoint
    tokens = model.tokenizer.encode("What is your name?")
    prompt = model.layout.text_prompt(tokens, task)
    upstream = torch.tensor(upstream_text_prompt(cfg, tokens, speech=task == "T1A2"))
    assert torch.equal(torch.stack(_absolute(model, prompt.ids), dim=1)[0], upstream)
    _compare(model, cfg, sd, prompt, None)


def test_batch_prompt_matches_upstream_layout_and_logits(checkpoint):
    cfg, sd, model = checkpoint
    T = 6
    prompt = BatchParallelStrategy().prompt(model.layout, "A1A2", n_frames=T)
    rows = torch.stack(_absolute(model, prompt.ids), dim=1)
    assert torch.equal(rows[0], torch.tensor(upstream_audio_prompt(cfg, T, "answer_a", "answer_t")))
    assert torch.equal(rows[1], torch.tensor(upstream_audio_prompt(cfg, T, "pad_a", "answer_t")))
    one = torch.randn(1, T, cfg["whisper_adapter_dim"], generator=torch.Generator().manual_seed(2))
    _compare(model, cfg, sd, prompt, torch.cat([one, one]))


def test_kv_cache_steps_equal_full_forward(checkpoint):
    cfg, sd, model = checkpoint
    T = 7
    prompt = model.layout.audio_prompt(T, "A1A2")
    features = torch.randn(1, T, cfg["whisper_adapter_dim"])
    steps = torch.randint(0, 60, (1, 8, 5))  # five generated positions (local ids)
    full_ids = torch.cat([prompt.ids, steps], dim=-1)
    with torch.no_grad():
        full = model.lm(full_ids, features, prompt.audio_lengths)
        cache = model.lm.new_cache()
        outs = [model.lm(prompt.ids, features, prompt.audio_lengths, cache=cache, last_only=True)]
        for t in range(steps.shape[-1]):
            outs.append(model.lm(steps[..., t:t + 1], cache=cache))
    positions = [prompt.length - 1 + t for t in range(len(outs))]
    for out, pos in zip(outs, positions, strict=True):
        assert (out.text_logits[:, -1] - full.text_logits[:, pos]).abs().max().item() <= TOL
        assert (out.audio_logits[:, :, -1] - full.audio_logits[:, :, pos]).abs().max().item() <= TOL


def test_step_decodes_left_padded_rows_as_their_own_forwards(checkpoint):
    """OmniLM.step: one position of rows with different histories (left-padded, masked, each at its own
    position) gives every row the logits of a forward on its own cache."""
    _, _, model = checkpoint
    lm, gen = model.lm, torch.Generator().manual_seed(4)
    caches, batch = [], BatchCache(lm)
    with torch.no_grad():
        for length in (3, 6):
            cache = lm.new_cache()
            lm(torch.randint(0, 60, (1, 8, length), generator=gen), cache=cache)
            caches.append(cache)
            batch.add(cache)
        ids = torch.randint(0, 60, (2, 8, 1), generator=gen)
        mask = torch.cat([batch.valid, batch.valid.new_ones(2, 1)], dim=1)  # (2, 7): row 0 starts with 3 pads
        out = lm.step(ids, batch.cache, torch.tensor([[3], [6]]), mask, text_rows=(1, 0), audio_rows=(0, 1))
        for row, cache in enumerate(caches):
            alone = lm(ids[row:row + 1], cache=cache, last_only=True)
            assert (out.text_logits[1 - row] - alone.text_logits[0]).abs().max().item() <= TOL
            assert (out.audio_logits[row] - alone.audio_logits[0]).abs().max().item() <= TOL
    assert batch.cache.length == 7


def test_text_heads_alone_equal_full_heads(checkpoint):
    _, _, model = checkpoint
    prompt = model.layout.text_prompt([5, 6, 7], "T1T2")
    with torch.no_grad():
        full = model.lm(prompt.ids)
        text = model.lm(prompt.ids, audio_rows=())
    assert text.audio_logits is None
    assert torch.equal(full.text_logits, text.text_logits)


def test_native_round_trip_is_bit_exact(checkpoint, tmp_path):
    _, _, model = checkpoint
    model.save_pretrained(tmp_path / "native")
    again = OmniModel.from_pretrained(tmp_path / "native")
    a, b = model.lm.state_dict(), again.lm.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert again.config == model.config
    assert again.tokenizer.encode("héllo") == model.tokenizer.encode("héllo")


@pytest.mark.slow
def test_convert_mini_omni_shaped_checkpoint(tmp_path):
    """Mini-Omni's real shape (Qwen2-0.5B, 181,120-row vocab), random bf16 weights: convert, load both formats,
    and get identical logits (peak RSS of the conversion: benchmarks/bench_convert.py)."""
    src, dst = tmp_path / "upstream", tmp_path / "native"
    write_upstream_checkpoint(src, dict(UPSTREAM_FIELDS), seed=0, dtype=torch.bfloat16)
    convert_upstream(src, dst)
    up, native = OmniModel.from_pretrained(src), OmniModel.from_pretrained(dst)
    assert native.config.audio_streams == 7 and native.lm.lm_head.weight.shape == (181_120, 896)
    prompt = native.layout.text_prompt([9, 8, 7], "T1A2")
    with torch.no_grad():
        a, b = up.lm(prompt.ids, last_only=True), native.lm(prompt.ids, last_only=True)
    assert torch.equal(a.text_logits, b.text_logits) and torch.equal(a.audio_logits, b.audio_logits)
