"""Streaming input (core/chunked_encoder.py, EarlyPrefill in core/kernel/generation.py, EncoderStage/LMStage):
features computed chunk by chunk while the audio arrives are those of the whole audio encoded at once, and a
prompt prefilled early in parts decodes the greedy tokens of one whole prefill, for every strategy and task."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from omnivox.core import audio
from omnivox.core.chunked_encoder import ChunkedEncoder, parse_stream_input
from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.generation import Done, EarlyPrefill, TurnDecoder, generate, prepare
from omnivox.core.runtime.events import AudioChunk, AudioStart, AudioStop, Features, FeaturesPart, TurnEnd, TurnStart
from omnivox.core.runtime.model_stages import EncoderStage, LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.speech_kit import SpeechKit
from omnivox.core.runtime.stage import Stage
from omnivox.plugins.random_models import never_emit_audio_specials, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = [("A1A2", "text-delay"), ("A1T2", "text-delay"), ("A1A2", "parallel"), ("A1A2", "batch-parallel")]


@pytest.fixture(scope="module")
def kit():
    return SpeechKit.random(seed=0)


def tone(samples: int, seed: int = 0) -> np.ndarray:
    """A noisy tone, on the 16-bit grid (as the events carry it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(samples)
    return (np.round(x * 32768) / 32768).astype(np.float32)


@pytest.mark.parametrize("samples", [1, 7999, 8000, 16000, 24321, 64320])  # 64320: Whisper's frame count rounds
def test_chunks_as_they_arrive_are_the_whole_encoding(kit, samples):
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=300)
    x = tone(samples)
    whole = encoder.encode(x, 16000)
    assert whole.shape == (kit.encoder.num_frames(samples, 16000), kit.encoder.feature_dim)
    parts, received = [], 0
    for piece in np.array_split(x, max(1, samples // 320)):  # 20 ms pieces, as a VAD sends them
        received += len(piece)
        while encoder.chunk_ready(len(parts), received):
            parts.append(encoder.encode_chunk(x[:received], len(parts)))
    chunks = -(-whole.shape[0] // encoder.chunk_frames)
    parts += [encoder.encode_chunk(x, k, last=k == chunks - 1) for k in range(len(parts), chunks)]
    assert torch.equal(torch.cat(parts), whole)
    if samples >= 16000:
        assert len([p for p in parts if p.shape[0] == encoder.chunk_frames]) >= 4  # most of it encoded early


def test_chunked_features_see_only_their_context(kit):
    """A chunk's features do not change with the audio after it (they are final when it arrives); those of the
    unchunked encoder do (the reason streaming input needs its own features)."""
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=200)
    x, y = tone(16000, seed=1), tone(16000, seed=1)
    y[12000:] = tone(4000, seed=2)
    assert torch.equal(encoder.encode(x, 16000)[:30], encoder.encode(y, 16000)[:30])
    assert not torch.equal(kit.encoder.encode(x, 16000)[:30], kit.encoder.encode(y, 16000)[:30])


def test_bad_stream_input_settings_say_the_fix(kit):
    assert parse_stream_input("500") == (500, 1000)
    assert parse_stream_input("400:1200") == (400, 1200)
    with pytest.raises(ConfigError, match="CHUNK_MS"):
        parse_stream_input("half")
    with pytest.raises(ConfigError, match="chunk_ms"):
        ChunkedEncoder(kit.encoder, chunk_ms=5)
    with pytest.raises(InputError, match="chunk_ready"):
        ChunkedEncoder(kit.encoder, chunk_ms=200).encode_chunk(tone(1000), 3)


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=3)
    never_emit_audio_specials(m)  # answers run their whole step budget
    return m


def features(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(frames, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task,strategy", CASES)
def test_early_prefill_decodes_the_tokens_of_a_whole_prefill(model, task, strategy):
    feats = features(23)
    whole = generate(model, task=task, audio_features=feats, strategy=strategy, max_steps=20)
    early = EarlyPrefill(model, task=task, strategy=strategy)
    for a, b in ((0, 7), (7, 8), (8, 15)):  # the last 8 frames arrive with the turn's end
        early.extend(feats[a:b])
    assert early.frames == 15 and early.state.length == 16
    decoder = TurnDecoder(prepare(model, task=task, audio_features=feats, strategy=strategy, max_steps=20),
                          early=early)
    done = [e for e in decoder.run() if isinstance(e, Done)][0]
    assert decoder.skipped == 16
    assert torch.equal(done.result.tokens, whole.tokens)
    assert decoder.state.length == 1 + 23 + 2 + whole.steps - 1  # prompt + fed columns, as a whole prefill


def test_early_prefill_of_other_audio_is_not_used(model):
    feats = features(12)
    early = EarlyPrefill(model, task="A1A2", strategy="text-delay")
    early.extend(features(5, seed=9))  # not the turn's first frames
    decoder = TurnDecoder(prepare(model, task="A1A2", audio_features=feats, max_steps=10), early=early)
    done = [e for e in decoder.run() if isinstance(e, Done)][0]
    assert decoder.skipped == 0
    assert torch.equal(done.result.tokens, generate(model, task="A1A2", audio_features=feats, max_steps=10).tokens)
    with pytest.raises(InputError, match="audio-in"):
        EarlyPrefill(model, task="T1A2", strategy="text-delay")


def test_engine_runs_queued_early_prefills_before_the_turn_joins(model):
    feats, got, done = features(30), [], threading.Event()
    engine = BatchEngine(model)
    early = EarlyPrefill(model, task="A1A2", strategy="batch-parallel")
    for a in range(0, 25, 5):
        engine.prefill_early(early, feats[a:a + 5])

    def emit(piece):
        if isinstance(piece, Done | Exception):
            got.append(piece)
            done.set()

    decoder = engine.submit(emit, early=early, task="A1A2", audio_features=feats, strategy="batch-parallel",
                            max_steps=16)
    engine.start(1)
    assert done.wait(30)
    engine.stop()
    assert decoder.skipped == 26
    whole = generate(model, task="A1A2", audio_features=feats, strategy="batch-parallel", max_steps=16)
    assert torch.equal(got[0].result.tokens, whole.tokens)


class Collect(Stage):
    consumes = (FeaturesPart, Features)

    def __init__(self):
        super().__init__("collect")
        self.seen: list = []

    async def process(self, event):
        self.seen.append(event)
        return
        yield  # pragma: no cover


def paced_turn(x: np.ndarray, piece: int = 320) -> list:
    fmt = audio.AudioFormat(rate=16000)
    data = audio.to_bytes(x.reshape(1, -1), fmt)
    chunks = [AudioChunk(audio=data[i:i + 2 * piece], rate=16000) for i in range(0, len(data), 2 * piece)]
    return [TurnStart(), AudioStart(rate=16000), *chunks, AudioStop(), TurnEnd(reason="done")]


def test_encoder_stage_sends_chunks_during_the_turn(kit):
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=400)
    x, sink = tone(20000), Collect()
    asyncio.run(Pipeline([EncoderStage(encoder), sink]).run(paced_turn(x)))
    parts = [e for e in sink.seen if isinstance(e, FeaturesPart)]
    final = [e for e in sink.seen if isinstance(e, Features)]
    assert [p.start for p in parts] == [10 * k for k in range(len(parts))] and len(parts) == 6
    assert len(final) == 1 and torch.equal(final[0].features, encoder.encode(x, 16000))
    assert torch.equal(torch.cat([p.features for p in parts]), final[0].features[:60])


def test_a_turn_asked_again_whole_takes_the_previous_turns_chunks(kit, monkeypatch):
    """A guess withdrawn and asked again (plugins/silero_vad.py): turn 2's first chunk holds all of turn 1's audio
    and more; turn 1's whole chunks are sent on at once, not encoded again, and turn 2's features are still those
    of its audio encoded whole. A turn that does not begin with the previous one's audio encodes everything."""
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=400)
    x, sink, encoded = tone(36000), Collect(), []
    encode_chunk = encoder.encode_chunk
    monkeypatch.setattr(encoder, "encode_chunk", lambda pcm, k, **kw: encoded.append(k) or encode_chunk(pcm, k, **kw))

    def turn(turn_id: int, pcm: np.ndarray, first: int) -> list:
        events = paced_turn(pcm[first:])
        head = AudioChunk(audio=audio.to_bytes(pcm[None, :first], audio.AudioFormat(rate=16000)), rate=16000)
        events.insert(2, head)
        for event in events:
            event.turn_id = turn_id
        return events

    asyncio.run(Pipeline([EncoderStage(encoder), sink]).run(
        [*paced_turn(x[:20000]), *turn(1, x, 24000), *turn(2, tone(24000, seed=1), 3200)]))
    assert encoded[:7] == [0, 1, 2, 3, 4, 5, 6]  # turn 0: chunks 0-5 as they came, 6 (the last) at its end
    again = encoded[7:encoded.index(0, 7)]
    assert again[0] == 6 and 0 not in again  # turn 1: chunks 0-5 were turn 0's
    parts = [e for e in sink.seen if isinstance(e, FeaturesPart) and e.turn_id == 1]
    final = next(e for e in sink.seen if isinstance(e, Features) and e.turn_id == 1)
    assert [p.start for p in parts] == [10 * k for k in range(len(parts))] and len(parts) == 11
    assert all(len(p.features) == 10 for p in parts)
    assert torch.equal(final.features, encoder.encode(x, 16000))
    assert encoded[encoded.index(0, 7):][:3] == [0, 1, 2]  # turn 2: other audio, encoded from its start


def test_a_streamed_turn_answers_as_a_whole_one(kit, monkeypatch):
    """Through EncoderStage and LMStage: the turn's prompt is mostly prefilled before its end, and the answer's
    tokens are those of the same features decoded whole."""
    used = []
    usable = EarlyPrefill.usable
    monkeypatch.setattr(EarlyPrefill, "usable", lambda self, setup: used.append(usable(self, setup)) or used[-1])
    never_emit_audio_specials(kit.model)
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=400)
    x = tone(20000)
    lm = LMStage("batch-parallel", model=kit.model, max_steps=12, threads=1)
    asyncio.run(Pipeline([EncoderStage(encoder), lm]).run(paced_turn(x)))
    result = next(iter(lm.results.values()))
    whole = generate(kit.model, task="A1A2", audio_features=encoder.encode(x, 16000), strategy="batch-parallel",
                     max_steps=12)
    assert used == [60]
    assert torch.equal(result.tokens, whole.tokens)


def test_the_command_line_option_makes_the_encoder_stream():
    import argparse

    from omnivox.cli.model_options import add_model_options, load_kit

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    kit = load_kit(parser.parse_args(["--checkpoint", "random", "--stream-input", "200:600"]), say=lambda *_: None)
    assert isinstance(kit.encoder, ChunkedEncoder)
    assert (kit.encoder.chunk_frames, kit.encoder.context_frames) == (10, 30)
    plain = load_kit(parser.parse_args(["--checkpoint", "random"]), say=lambda *_: None)
    assert not isinstance(plain.encoder, ChunkedEncoder)


def test_a_model_trained_on_chunked_features_hears_only_those(tmp_path):
    """An encoder spec's `stream_input` (every encoder takes it: a recipe's prepare.encoder, so the export's
    components.json) gives a streaming encoder; --stream-input may repeat it but not change it."""
    import argparse
    import json

    from omnivox.cli.model_options import add_model_options, load_kit
    from omnivox.core.contracts.manager import get_plugin_manager
    from omnivox.core.runtime.speech_kit import COMPONENTS_FILE, RANDOM_MODEL
    from omnivox.plugins.random_models import TINY_COMPONENTS, TINY_WHISPER_DIMS
    from omnivox.training.recipe import check_component

    check_component({"_component_": "whisper", "dims": TINY_WHISPER_DIMS, "stream_input": "200:600"},
                    "prepare.encoder", "encoders", ())
    directory = tmp_path / "export"
    SpeechKit.load_model(RANDOM_MODEL).save_pretrained(directory)
    encoder = {"name": "whisper", "params": {"dims": TINY_WHISPER_DIMS, "seed": 0, "stream_input": "200:600"}}
    record = {"encoder": encoder, "codec": TINY_COMPONENTS["codec"]}
    (directory / COMPONENTS_FILE).write_text(json.dumps(record))
    assert isinstance(SpeechKit.load(str(directory), say=lambda *_: None).encoder, ChunkedEncoder)
    parser = argparse.ArgumentParser()
    add_model_options(parser)
    same = load_kit(parser.parse_args(["--checkpoint", str(directory), "--stream-input", "200:600"]),
                    say=lambda *_: None)
    assert same.encoder.setting == "200:600" and not isinstance(same.encoder.inner, ChunkedEncoder)
    with pytest.raises(ConfigError, match="trained on chunked features"):
        load_kit(parser.parse_args(["--checkpoint", str(directory), "--stream-input", "500"]), say=lambda *_: None)
    plain = get_plugin_manager().create("encoders", "whisper", dims=TINY_WHISPER_DIMS, seed=0)
    assert not isinstance(plain, ChunkedEncoder)


def run_turn(conversation, feats, task="A1A2", early=None, max_steps=10):
    decoder = conversation.turn(task=task, audio_features=feats, max_steps=max_steps, early=early)
    return decoder, [e for e in decoder.run() if isinstance(e, Done)][0].result


@pytest.mark.parametrize("task,strategy", [("A1A2", "text-delay"), ("A1A2", "batch-parallel")])
def test_a_conversation_turn_prefilled_early_continues_the_history_exactly(model, task, strategy):
    """The early prefill copies the conversation's cache; the turn then gives the tokens of a turn that continued
    the cache, and the conversation goes on from it as after any turn."""
    from omnivox.core.kernel.conversation import Conversation

    first, second, third = features(9, 1), features(17, 2), features(6, 3)
    ours, ref = Conversation(model, strategy=strategy), Conversation(model, strategy=strategy)
    for conversation in (ours, ref):
        run_turn(conversation, first, task)
    early = ours.early_prefill(task)
    before = (ours.state.length, ours.state.cache.backbone.layers[0].keys.clone())
    for a, b in ((0, 5), (5, 12)):
        early.extend(second[a:b])
    assert (ours.state.length, *[torch.equal(ours.state.cache.backbone.layers[0].keys, before[1])]) == (
        before[0], True)  # the history's own cache is untouched while the turn is spoken
    decoder, got = run_turn(ours, second, task, early=early)
    _, want = run_turn(ref, second, task)
    assert decoder.skipped == 13 and torch.equal(got.tokens, want.tokens)
    assert ours.length == ref.length and ours.state.length == ref.state.length
    assert torch.equal(run_turn(ours, third, task)[1].tokens, run_turn(ref, third, task)[1].tokens)


def test_an_early_prefill_of_a_history_that_changed_is_not_used(model):
    from omnivox.core.kernel.conversation import Conversation

    ours, ref = Conversation(model), Conversation(model)
    for conversation in (ours, ref):
        run_turn(conversation, features(9, 1))
    early = ours.early_prefill("A1A2")
    early.extend(features(12, 2)[:8])
    for conversation in (ours, ref):
        conversation.truncate(4)  # the first answer was cut while the second question was spoken
    decoder, got = run_turn(ours, features(12, 2), early=early)
    assert decoder.skipped == 0
    assert torch.equal(got.tokens, run_turn(ref, features(12, 2))[1].tokens)


def test_a_conversation_streamed_through_the_stages_answers_as_one_continued(kit, monkeypatch):
    """LMStage with session memory: both turns' prompts are prefilled early (the second on a copy of the first's
    cache), and the tokens are those of the same conversation decoded from the whole features."""
    from omnivox.core.kernel.conversation import Conversation

    used = []
    usable = EarlyPrefill.usable
    monkeypatch.setattr(EarlyPrefill, "usable", lambda self, setup: used.append(usable(self, setup)) or used[-1])
    never_emit_audio_specials(kit.model)
    encoder = ChunkedEncoder(kit.encoder, chunk_ms=200, context_ms=400)
    questions = [tone(20000, seed=4), tone(14000, seed=5)]
    events = []
    for turn, x in enumerate(questions):
        events += [e if not hasattr(e, "turn_id") else _in_turn(e, turn) for e in paced_turn(x)]
    lm = LMStage("text-delay", model=kit.model, max_steps=12, threads=1, memory=True)
    asyncio.run(Pipeline([EncoderStage(encoder), lm]).run(events))
    ref = Conversation(kit.model, strategy="text-delay")
    for turn, x in enumerate(questions):
        want = run_turn(ref, encoder.encode(x, 16000), max_steps=12)[1]
        assert torch.equal(lm.results[("default", turn)].tokens, want.tokens)
    assert used == [60, 40]


def _in_turn(event, turn: int):
    event.turn_id = turn
    return event
