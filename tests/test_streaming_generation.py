"""The streaming iterator: text and frames as soon as they exist (first frame at the earliest column the
layout allows), the same frames as `generate`, cancellation between steps, clean stops at the step budget
and the context end, optional forcing of the layout, and clear errors for bad input."""

from __future__ import annotations

import threading

import pytest
import torch

from omnivox import generate, stream
from omnivox.core.errors import InputError, PluginError
from omnivox.core.kernel.checkpoint import OmniModel
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import Done, FramePiece, TextPiece, TurnDecoder, prepare
from omnivox.plugins.random_models import never_emit_audio_specials

pytestmark = pytest.mark.usefixtures("single_thread")


def speaking_model(audio_streams: int = 7, seed: int = 0, **overrides) -> OmniModel:
    """A random tiny model whose audio heads never emit specials (zeroed rows lose to the best code), so
    every slot holds a code and frames are complete wherever the layout puts them."""
    model = OmniModel.random(OmniConfig.tiny(audio_streams=audio_streams, **overrides), seed=seed)
    return never_emit_audio_specials(model)


FEATURES = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))


def events(model, **kwargs):
    out = list(stream(model, **kwargs))
    assert isinstance(out[-1], Done) and not any(isinstance(e, Done) for e in out[:-1])
    return out[:-1], out[-1].result


@pytest.mark.parametrize("strategy, audio_streams, first", [
    ("text-delay", 7, 7), ("batch-parallel", 7, 7), ("parallel", 7, 0), ("text-delay", 3, 3)])
def test_first_frame_comes_at_the_earliest_column_and_frames_match_generate(strategy, audio_streams, first):
    model = speaking_model(audio_streams)
    kwargs = dict(task="A1A2", audio_features=FEATURES, strategy=strategy, max_steps=20)
    got, result = events(model, **kwargs)
    frames = [e for e in got if isinstance(e, FramePiece)]
    assert frames[0].step == first and frames[0].index == 0
    assert [f.step for f in frames] == list(range(first, 20))  # one frame per column from then on
    assert torch.equal(torch.tensor([f.codes for f in frames]), result.frames)
    again = generate(model, **kwargs)
    assert torch.equal(again.frames, result.frames) and torch.equal(again.tokens, result.tokens)
    assert [e.token for e in got if isinstance(e, TextPiece)] == result.text_ids


@pytest.mark.parametrize("speech, twin, source", [("A1A2", "A1T2", dict(audio_features=FEATURES)),
                                                  ("T1A2", "T1T2", dict(text_ids=[5, 9, 17, 3]))])
def test_batch_parallel_speaks_its_text_twins_greedy_text(speech, twin, source):
    """Row 1 is fed what its text task alone is fed: the speech answer's text is that task's text, while its
    audio streams are row 0's own."""
    model = speaking_model()
    batch = generate(model, task=speech, strategy="batch-parallel", max_steps=20, **source)
    alone = generate(model, task=twin, max_steps=20, **source)
    assert batch.text_ids == alone.text_ids and batch.frames.shape[0] > 0
    delayed = generate(model, task=speech, strategy="text-delay", max_steps=20, **source)
    assert batch.text_ids != delayed.text_ids  # the random model's speech row writes other text by itself


def test_events_arrive_before_the_next_step_runs():
    model = speaking_model()
    calls = []
    original = model.lm.forward
    model.lm.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    for event in stream(model, task="A1A2", audio_features=FEATURES, max_steps=20):
        if isinstance(event, FramePiece | TextPiece):
            assert len(calls) == event.step + 1  # the prefill + one forward per later column, no more
        if isinstance(event, FramePiece):
            break


def test_text_pieces_stop_at_eot():
    model = speaking_model()
    layout, head = model.layout, model.lm.lm_head.weight
    kwargs = dict(task="T1A2", text_ids=[5, 6, 7], max_steps=12)
    text = generate(model, **kwargs).text_tokens
    like = next(t for j, t in enumerate(text) if j >= 2 and t not in text[:j])
    with torch.no_grad():  # eot wins where the text head would emit `like` (first at step >= 2)
        head[layout.eot] = 1.05 * head[like]
    got, result = events(model, **kwargs)
    text = result.text_tokens
    assert layout.eot in text[2:]
    pieces = [e.token for e in got if isinstance(e, TextPiece)]
    assert pieces == result.text_ids == [t for t in text[:text.index(layout.eot)] if t < layout.eot]
    assert all(t == layout.pad_t for t in text[text.index(layout.eot) + 1:])


@pytest.mark.parametrize("as_callable", [False, True])
def test_cancel_stops_within_one_step_and_keeps_the_frames(as_callable):
    model = speaking_model()
    flag = threading.Event()
    cancel = flag.is_set if as_callable else flag
    seen = []
    for event in stream(model, task="A1A2", audio_features=FEATURES, cancel=cancel, max_steps=50):
        if isinstance(event, FramePiece):
            seen.append(event.codes)
            if len(seen) == 2:
                flag.set()
        if isinstance(event, Done):
            result = event.result
    assert result.stop_reason == "cancelled"
    assert result.steps == 7 + 2  # no step after the one that yielded the second frame
    assert result.frames.tolist() == [list(c) for c in seen]


def test_context_end_stops_cleanly_with_the_frames_so_far():
    model = speaking_model(block_size=30)
    result = generate(model, task="A1A2", audio_features=FEATURES)  # prompt: 8 + 3 = 11 positions
    assert result.stop_reason == "context"
    assert result.steps == 30 - 11 + 1  # the last column is sampled from position 29, never fed
    assert result.frames.shape == (result.steps - 7, 7)


def test_prompt_filling_the_context_still_answers_one_step():
    model = speaking_model(block_size=11)
    result = generate(model, task="A1T2", audio_features=FEATURES)
    assert result.steps == 1 and result.stop_reason in ("context", "eot")


def test_step_budget_stops_cleanly():
    result = generate(speaking_model(), task="T1A2", text_ids=[1, 2], max_steps=10)
    assert result.stop_reason == "max_steps" and result.steps == 10 and result.frames.shape == (3, 7)


def test_a_turn_leaves_its_state_and_a_next_decoder_continues_after_it():
    """The decoder's DecodeState outlives the turn: its cache holds the prompt and every fed column (the last
    sampled one is never fed); a decoder given that state prefills after those positions, not from position 0
    (where a session's conversation will live)."""
    model = speaking_model()
    first = TurnDecoder(prepare(model, task="A1A2", audio_features=FEATURES, max_steps=6))
    *_, done = first.run()
    state, history = first.state, first.setup.prompt.length + done.result.steps - 1
    assert state.length == state.cache.length == history == state.cache.backbone.layers[0].keys.shape[2]
    second = TurnDecoder(prepare(model, task="T1T2", text_ids=[5, 6], max_steps=3), state)
    *_, again = second.run()
    assert second.state is state
    assert state.length == state.cache.length == history + second.setup.prompt.length + again.result.steps - 1
    assert state.cache.backbone.layers[0].keys.shape[2] == state.length


def test_force_layout_pads_streams_before_their_delay():
    model = speaking_model()
    plain = generate(model, task="A1A2", audio_features=FEATURES, max_steps=12)
    forced = generate(model, task="A1A2", audio_features=FEATURES, max_steps=12, force_layout=True)
    pad = model.layout.pad_a
    assert any(plain.tokens[i, :i + 1].ne(pad).any() for i in range(7)), "the model must not know the delay"
    assert all(forced.tokens[i, :i + 1].eq(pad).all() for i in range(7))
    assert forced.frames.shape == (12 - 7, 7)


def test_accepts_an_omnilm_and_a_string():
    model = speaking_model()
    by_ids = generate(model.lm, task="T1T2", text_ids=model.tokenizer.encode("hi"), max_steps=5)
    by_text = generate(model, task="T1T2", text_ids="hi", max_steps=5)
    assert torch.equal(by_ids.tokens, by_text.tokens) and by_text.audio_tokens is None


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(task="A1A3", audio_features=FEATURES), PluginError, "unknown task 'A1A3'.*A1A2, A1T1, A1T2, T1A2"),
    (dict(task="A1A2", audio_features=FEATURES, strategy="delay"), PluginError,
     "unknown strategy 'delay'.*batch-parallel, parallel, text-delay"),
    (dict(task="T1T2", text_ids=[1], strategy="batch-parallel"), PluginError, "batch-parallel task 'T1T2'"),
    (dict(task="A1A2", audio_features=torch.randn(8, 31)), InputError, r"shape \(1, 8, 31\), expected"),
    (dict(task="A1A2", audio_features=torch.randn(0, 32)), InputError, "0 frames"),
    (dict(task="A1A2"), InputError, "no audio_features"),
    (dict(task="A1A2", audio_features=FEATURES, text_ids=[1]), InputError, "takes audio, but text_ids"),
    (dict(task="T1T2", text_ids=[]), InputError, "text prompt is empty"),
    (dict(task="T1T2", text_ids=[1], audio_features=FEATURES), InputError, "takes text, but audio_features"),
    (dict(task="T1T2", text_ids=[1], max_steps=0), InputError, "max_steps"),
    (dict(task="A1A2", audio_features=torch.randn(1200, 32)), InputError, "1203 positions.*context is 1024"),
])
def test_bad_input_fails_eagerly_with_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        stream(speaking_model(), **kwargs)  # raised on the call, before any iteration
