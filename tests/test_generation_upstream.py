"""omnivox.generate vs upstream Mini-Omni's decoding loops, token for token (greedy).

The loops of litgpt/generate/base.py are re-stated below on `reference_forward` (no KV cache: the whole
sequence is recomputed every step) with ABSOLUTE ids, as upstream builds them; omnivox runs on the same
upstream-format checkpoint loaded through OmniModel.from_pretrained. To exercise the stop rules on random
weights, the lm_head row of eot (or of stream 6's eoa) is set to 1.05 x the row of a token that the
reference loop itself emits later on, so eot/eoa appear mid-answer; each case asserts its rule was hit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from upstream_reference import (
    layershift,
    reference_forward,
    specials,
    tiny_fields,
    upstream_audio_prompt,
    upstream_text_prompt,
    write_upstream_checkpoint,
)

from omnivox import generate
from omnivox.core.kernel.checkpoint import OmniModel

CFG = tiny_fields()
S = specials(CFG)
N_FRAMES = 6
BUDGET = 40  # generated steps: upstream max_returned_tokens = prompt length + BUDGET
TEXT = [72, 105, 33, 10]
AUDIO_SPECIALS = {"A1A2": ("answer_a", "answer_t"), "A1T2": ("pad_a", "answer_t"), "A1T1": ("pad_a", "asr")}


# ---- upstream loops, re-stated ---------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("single_thread")


def sample_top1(logits: torch.Tensor, row: int = 0) -> int:
    """litgpt `sample(logits, temperature=0.9, top_k=1)` on logits[row, -1]: top-1 crop, softmax, multinomial."""
    logits = logits[row, -1]
    v, i = torch.topk(logits, 1)
    cropped = torch.full_like(logits, float("-inf")).scatter_(-1, i, v) / 0.9
    return int(torch.multinomial(torch.softmax(cropped, dim=-1), 1))


class Reference:
    """A growing absolute-id sequence (8 streams x B rows) run through reference_forward each step."""

    def __init__(self, sd, rows_per_batch: list[list[list[int]]], features, lens):
        self.sd, self.features, self.lens = sd, features, lens
        self.seq = [[list(rows[s]) for rows in rows_per_batch] for s in range(8)]  # [stream][row] -> ids

    def forward(self):
        rows = [torch.tensor(stream) for stream in self.seq]
        return reference_forward(self.sd, CFG, rows, self.features, self.lens)

    def append(self, column_per_row: list[list[int]]):
        for b, column in enumerate(column_per_row):
            for s in range(8):
                self.seq[s][b].append(column[s])


def audio_column(tokens_a, token_t):
    return [layershift(CFG, a, i) for i, a in enumerate(tokens_a)] + [token_t]


def upstream_generate_AA(ref: Reference, max_returned_tokens: int) -> list[list[int]]:
    """Mirrors `generate_AA` (A1A2) and `generate_TA` (T1A2): the same loop body."""
    T = len(ref.seq[0][0])
    audio, text = ref.forward()
    tokens_a, token_t = [sample_top1(a) for a in audio], sample_top1(text)
    output = [[t] for t in tokens_a] + [[token_t]]
    text_end = False
    for _ in range(2, max_returned_tokens - T + 1):
        ref.append([audio_column(tokens_a, token_t)])
        audio, text = ref.forward()
        tokens_a, token_t = [sample_top1(a) for a in audio], sample_top1(text)
        if text_end:
            token_t = S["pad_t"]
        if tokens_a[-1] == S["eoa"]:
            break
        if token_t == S["eot"]:
            text_end = True
        for i in range(7):
            output[i].append(tokens_a[i])
        output[7].append(token_t)
    return output


def upstream_generate_text(ref: Reference, max_returned_tokens: int) -> list[int]:
    """Mirrors `generate_AT` (A1T2), `generate_ASR` (A1T1) and `generate_TT` (T1T2): text only; every audio
    layer is fed layershift(4097 = pad_a); stop on eot, which is not appended."""
    T = len(ref.seq[0][0])
    token_t = sample_top1(ref.forward()[1])
    output = [token_t]
    for _ in range(2, max_returned_tokens - T + 1):
        ref.append([audio_column([S["pad_a"]] * 7, token_t)])
        token_t = sample_top1(ref.forward()[1])
        if token_t == S["eot"]:
            break
        output.append(token_t)
    return output


def upstream_generate_TA_BATCH(ref: Reference, max_returned_tokens: int) -> list[list[int]]:
    """Mirrors `generate_TA_BATCH` / `run_AT_batch_stream`: audio sampled from row 0, text from row 1
    (`next_token_batch`); row 0 is fed its audio + the text, row 1 pad_a on every layer + the same text."""
    T = len(ref.seq[0][0])

    def step():
        audio, text = ref.forward()
        return [sample_top1(a, row=0) for a in audio], sample_top1(text, row=1)

    tokens_a, token_t = step()
    output = [[t] for t in tokens_a] + [[token_t]]
    text_end = False
    for _ in range(2, max_returned_tokens - T + 1):
        ref.append([audio_column(tokens_a, token_t), audio_column([S["pad_a"]] * 7, token_t)])
        tokens_a, token_t = step()
        if text_end:
            token_t = S["pad_t"]
        if tokens_a[-1] == S["eoa"]:
            break
        if token_t == S["eot"]:
            text_end = True
        for i in range(7):
            output[i].append(tokens_a[i])
        output[7].append(token_t)
    return output


# ---- cases -------------------------------------------------------------------------------------------------
def make_case(task: str, seed: int):
    """(reference factory, omnivox generate kwargs, prompt length) for one task, as upstream builds it."""
    features = torch.randn(1, N_FRAMES, CFG["whisper_adapter_dim"], generator=torch.Generator().manual_seed(seed))
    if task == "batch":
        rows = [upstream_audio_prompt(CFG, N_FRAMES, "answer_a", "answer_t"),
                upstream_audio_prompt(CFG, N_FRAMES, "pad_a", "answer_t")]
        both = torch.cat([features, features])

        def factory(sd):
            return Reference(sd, rows, both, [N_FRAMES, N_FRAMES])

        kwargs = dict(task="A1A2", audio_features=features, strategy="batch-parallel")
    elif task in AUDIO_SPECIALS:
        rows = [upstream_audio_prompt(CFG, N_FRAMES, *AUDIO_SPECIALS[task])]

        def factory(sd):
            return Reference(sd, rows, features, [N_FRAMES])

        kwargs = dict(task=task, audio_features=features[0])
    else:
        rows = [upstream_text_prompt(CFG, TEXT, speech=task == "T1A2")]

        def factory(sd):
            return Reference(sd, rows, None, None)

        kwargs = dict(task=task, text_ids=TEXT)
    return factory, kwargs, len(rows[0][0])


def loop_for(task: str):
    if task == "batch":
        return upstream_generate_TA_BATCH
    return upstream_generate_AA if task in ("A1A2", "T1A2") else upstream_generate_text


def steer(sd: dict, special: int, like: int) -> dict:
    """lm_head row `special` := 1.05 x row `like`: `special` wins wherever `like` would (positive logit)."""
    sd = dict(sd)
    head = sd["lm_head.weight"].clone()
    head[special] = 1.05 * head[like]
    sd["lm_head.weight"] = head
    return sd


def new_tokens(stream: list[int], start: int) -> list[int]:
    """Tokens whose first occurrence in `stream` is at index >= start, in order of appearance."""
    return [t for j, t in enumerate(stream) if j >= start and t not in stream[:j]]


def save(directory: Path, sd: dict) -> OmniModel:
    torch.save(sd, directory / "lit_model.pth")
    return OmniModel.from_pretrained(directory)


def tuned(tmp_path: Path, task: str, seed: int, eot_at: int | None, eoa_after: int | None):
    """A checkpoint whose text emits eot (first step >= eot_at) and whose audio stream 6 emits eoa (first
    step >= eoa_after, after the eot), chosen from the reference loop's own output. Returns
    (model, upstream output, omnivox kwargs, prompt length)."""
    factory, kwargs, T = make_case(task, seed)
    loop = loop_for(task)
    sd = write_upstream_checkpoint(tmp_path, CFG, seed=seed)
    out = loop(factory(sd), T + BUDGET)
    text = out[7] if isinstance(out[0], list) else out
    if eot_at is not None:
        for like in new_tokens(text, eot_at):
            candidate = steer(sd, S["eot"], like)
            candidate_out = loop(factory(candidate), T + BUDGET)
            candidate_text = candidate_out[7] if isinstance(out[0], list) else candidate_out
            if S["eot"] in candidate_text or len(candidate_text) < BUDGET:
                sd, out = candidate, candidate_out
                break
    if eoa_after is not None:
        end = out[7].index(S["eot"]) if S["eot"] in out[7] else 0
        for like in new_tokens(out[6], max(eoa_after, end + 2)):
            candidate = steer(sd, layershift(CFG, S["eoa"], 6), layershift(CFG, like, 6))
            candidate_out = loop(factory(candidate), T + BUDGET)
            if len(candidate_out[6]) < BUDGET:
                sd, out = candidate, candidate_out
                break
    return save(tmp_path, sd), out, kwargs, T


# ---- tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["text-delay", "parallel"])
@pytest.mark.parametrize("task", ["A1A2", "T1A2"])
def test_audio_answer_streams_match_generate_AA_and_TA(tmp_path, task, strategy):
    """generate_AA / generate_TA: eot kept then pad_t forced; stop before appending when stream 6 emits eoa.
    Both single-row strategies share upstream's step rule (they differ in layout, not in decoding)."""
    model, out, kwargs, T = tuned(tmp_path, task, seed=11, eot_at=2, eoa_after=4)
    eot = out[7].index(S["eot"])
    assert eot >= 1 and set(out[7][eot + 1:]) == {S["pad_t"]}, "the case must exercise pad_t forcing"
    assert len(out[7]) < BUDGET, "the case must stop on eoa"
    result = generate(model, **kwargs, strategy=strategy, max_steps=BUDGET)
    assert result.audio_tokens == out[:7]
    assert result.text_tokens == out[7]
    assert result.stop_reason == "eoa"
    assert result.text_ids == [t for t in out[7][:eot] if t < S["eot"]]


@pytest.mark.parametrize("task", ["A1T2", "A1T1", "T1T2"])
def test_text_answer_stream_matches_generate_AT_ASR_TT(tmp_path, task):
    """generate_AT (A1T2) / generate_ASR (A1T1) / generate_TT (T1T2): pad_a fed on every audio layer, stop on
    eot (not appended)."""
    model, out, kwargs, T = tuned(tmp_path, task, seed=5, eot_at=3, eoa_after=None)
    assert 3 <= len(out) < BUDGET, "the case must stop on eot"
    result = generate(model, **kwargs, max_steps=BUDGET)
    assert result.text_tokens == out
    assert result.audio_tokens is None
    assert result.stop_reason == "eot"
    assert (result.tokens[:-1] == model.layout.pad_a).all()  # what was fed on the audio streams


def test_batch_streams_match_generate_TA_BATCH(tmp_path):
    """generate_TA_BATCH: row 1's text drives both rows, row 0's audio feeds row 0, row 1 gets pad_a."""
    model, out, kwargs, T = tuned(tmp_path, "batch", seed=7, eot_at=2, eoa_after=4)
    assert S["eot"] in out[7] and len(out[7]) < BUDGET, "the case must exercise eot and the eoa stop"
    result = generate(model, **kwargs, max_steps=BUDGET)
    assert result.audio_tokens == out[:7]
    assert result.text_tokens == out[7]
    assert result.stop_reason == "eoa"


@pytest.mark.parametrize("task", ["A1A2", "T1T2", "batch"])
def test_budget_bound_matches_max_returned_tokens(tmp_path, task):
    """Upstream's loop bound range(2, max_returned_tokens - T + 1) yields max_returned_tokens - T columns;
    omnivox's max_steps is that number."""
    factory, kwargs, T = make_case(task, seed=3)
    sd = write_upstream_checkpoint(tmp_path, CFG, seed=3)
    for budget in (1, 2, 9):
        out = loop_for(task)(factory(sd), T + budget)
        result = generate(OmniModel.from_pretrained(tmp_path), **kwargs, max_steps=budget)
        if task == "T1T2":
            assert result.text_tokens == out
        else:
            assert result.tokens.tolist() == out
        assert result.steps == budget and result.stop_reason == "max_steps"


@pytest.mark.parametrize("task", ["A1A2", "T1T2"])
def test_prefill_column_is_appended_unchecked(tmp_path, task):
    """Upstream appends the prefill's tokens without checks: an eot there neither stops a text task nor
    starts pad_t forcing in an audio task."""
    for seed in range(13, 33):  # a checkpoint whose text goes on after an eot at the prefill
        factory, kwargs, T = make_case(task, seed)
        sd = write_upstream_checkpoint(tmp_path, CFG, seed=seed)
        first = loop_for(task)(factory(sd), T + 1)
        sd = steer(sd, S["eot"], first[7][0] if task == "A1A2" else first[0])
        out = loop_for(task)(factory(sd), T + BUDGET)
        text = out[7] if task == "A1A2" else out
        if len(text) > 2 and text[1] != S["pad_t"]:
            break
    assert text[0] == S["eot"] and len(text) > 2 and text[1] != S["pad_t"], "no seed gave the case"
    result = generate(save(tmp_path, sd), **kwargs, max_steps=BUDGET)
    assert result.text_tokens == text
    assert result.text_ids == []
