"""The end-of-turn detector (plugins/turn_end.py) and the VAD that asks it (plugins/silero_vad.py `turn_end`):
the network's format, and turn taking on real speech with a pause inside a sentence."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from omnivox.core import audio
from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.threads import using_threads
from omnivox.plugins.audio_files import read_audio
from omnivox.plugins.silero_vad import SileroVAD
from omnivox.plugins.turn_end import TurnEndConfig, TurnEndNet, last_frames, load_net, save_detector

sys.path.insert(0, str(Path(__file__).parent))
from echo_scenes import stream_events, stream_turns  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")


def test_a_saved_detector_loads_with_the_same_answers(tmp_path):
    torch.manual_seed(0)
    net = TurnEndNet(TurnEndConfig(width=16, frames=20)).eval()
    feats = torch.randn(3, 20, 384)  # (B, frames, F)
    loaded = load_net(save_detector(net, tmp_path / "export"))
    assert loaded.config == net.config
    assert torch.equal(loaded(feats), net(feats)) and net(feats).shape == (3,)


def test_a_folder_that_is_not_a_detector_is_refused_with_the_fix(tmp_path):
    with pytest.raises(CheckpointError, match="(?s)turn_end.safetensors, turn_end.json missing.*recipes/turn_end.yaml"):
        load_net(tmp_path)
    save_detector(TurnEndNet(TurnEndConfig(width=16)), tmp_path)
    (tmp_path / "turn_end.json").write_text('{"width": 32}')
    with pytest.raises(CheckpointError, match="does not match turn_end.json"):
        load_net(tmp_path)


def test_short_utterances_are_padded_in_front():
    feats = torch.ones(3, 4)
    padded = last_frames(feats, 5)
    assert padded.shape == (5, 4) and padded[:2].abs().sum() == 0 and torch.equal(padded[2:], feats)
    assert torch.equal(last_frames(torch.arange(12.0).reshape(6, 2), 2), torch.tensor([[8.0, 9.0], [10.0, 11.0]]))


def test_the_recipe_loads_and_builds_the_shipped_shape():
    from omnivox.training.recipe import build, load_recipe

    recipe = load_recipe(REPO / "recipes/turn_end.yaml")
    net = build(recipe["model"], "model")
    assert net.config == load_net(REPO / "models/turn_end").config  # the shipped detector is this recipe's


def test_everyday_sentences_hold_out_frames_and_no_benchmark_question_is_trained():
    """training/everyday.py: the test side's prefixes, clauses and sentences never occur in training, and none
    of the latency benchmarks' questions (whose turn ends they time) is one of its training sentences."""
    import re

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_listen import DEMO_QUESTIONS, QUESTIONS

    from omnivox.training.everyday import TEST_PREFIXES, everyday_sentences
    from omnivox.training.turn_end import TurnEndDataConfig, sentences

    groups = everyday_sentences()
    train = {t for g in groups.values() for t in g["train"]}
    test = {t for g in groups.values() for t in g["test"]}
    assert train and test and not train & test
    assert not any(t.startswith(prefix) for t in train for prefix in TEST_PREFIXES)
    picked = sentences(TurnEndDataConfig(everyday=True, train_sentences=2000))
    assert train & set(picked["train"]) and test <= set(picked["test"])
    benchmarked = {re.sub(r"[^a-z ]", "", q.lower()).strip() for q in DEMO_QUESTIONS + QUESTIONS}
    assert len(benchmarked) == 13 and not benchmarked & train


def test_the_detector_must_be_asked_before_the_hold():
    with pytest.raises(ConfigError, match="turn_end_silence_ms=1200 must be below hold_silence_ms=1000"):
        SileroVAD(turn_end="default", turn_end_silence_ms=1200)


class ScriptedDetector:
    """Answers P(complete) from a list, one per question, and keeps the audio it was asked about (and the torch
    thread count it was asked on)."""

    def __init__(self, answers):
        self.answers, self.asked, self.threads = list(answers), [], []

    def probability(self, pcm):
        self.asked.append(len(pcm))
        self.threads.append(torch.get_num_threads())
        return self.answers.pop(0)


@pytest.fixture(scope="module")
def paused_question(tmp_path_factory) -> tuple[np.ndarray, float]:
    """'what is the capital of <700 ms pause> france', then 1.5 s of silence: (16 kHz pcm, end of speech s)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("needs espeak-ng")
    path = tmp_path_factory.mktemp("speech") / "paused.wav"
    subprocess.run(["espeak-ng", "-m", "-w", str(path),
                    '<speak>what is the capital of <break time="700ms"/> france</speak>'], check=True)
    pcm, rate = read_audio(path)
    pcm = audio.resample(audio.to_mono(pcm), rate, 16000)
    loud = np.flatnonzero(np.abs(pcm) > 0.02)
    pcm = np.concatenate([np.zeros(8000, np.float32), pcm, np.zeros(24000, np.float32)])
    return pcm, (loud[-1] + 8000) / 16000


def turns(pcm: np.ndarray, **params) -> list[tuple[float, float]]:
    """(VoiceStopped time, TurnEnd time) per turn the VAD cut from `pcm` streamed in 20 ms chunks."""
    vad = SileroVAD(**params)
    asyncio.run(vad.setup())
    return stream_turns(vad, pcm, 16000, 0.02)


@needs_espeak
def test_the_silence_rule_cuts_a_sentence_at_a_long_inner_pause(paused_question):
    pcm, _ = paused_question
    assert len(turns(pcm, end_silence_ms=600)) == 2  # the false cut-in the detector is for


@needs_espeak
def test_a_pause_judged_unfinished_holds_the_turn_and_the_end_comes_early(paused_question):
    pcm, speech_end = paused_question
    detector = ScriptedDetector([0.1, 0.9])  # the inner pause: unfinished; the real end: complete
    got = turns(pcm, turn_end=detector, turn_end_silence_ms=160, turn_end_threshold=0.9, hold_silence_ms=1000)
    assert len(got) == 1 and len(detector.asked) == 2
    stopped, ended = got[0]
    assert abs(stopped - speech_end) < 0.15  # VoiceStopped marks the end of speech
    assert 0.15 <= ended - stopped <= 0.25  # decided after 160 ms of silence (32 ms frames), not 600
    assert detector.asked[1] > detector.asked[0] > 16000  # asked about the utterance so far, growing


@needs_espeak
def test_a_pause_judged_complete_ends_the_turn_there(paused_question):
    pcm, _ = paused_question
    detector = ScriptedDetector([0.99999, 0.99999])
    assert len(turns(pcm, turn_end=detector)) == 2 and len(detector.asked) == 2


@needs_espeak
def test_the_vad_runs_on_one_torch_thread_whatever_its_callers_count(paused_question):
    """A thread that runs the VAD (the event loop, or asyncio.to_thread's) never starts a team of its own: one
    would make the LM's steps sleep between regions (core/kernel/threads.py)."""
    pcm, _ = paused_question
    detector = ScriptedDetector([0.99999, 0.99999])
    with using_threads(2):
        assert len(turns(pcm, turn_end=detector)) == 2
        assert torch.get_num_threads() == 2  # the caller's own count, back
    assert detector.threads == [1, 1]


@needs_espeak
def test_a_pause_is_asked_about_at_each_silence_of_the_schedule_then_held(paused_question):
    """Asked at 64 and 160 ms of silence (the defaults) in each pause; not sure enough at either: held to 1000."""
    pcm, speech_end = paused_question
    detector = ScriptedDetector([0.5, 0.99, 0.5, 0.99999])  # the inner pause twice, then the end: sure at 160 ms
    got = turns(pcm, turn_end=detector)
    assert len(got) == 1 and len(detector.asked) == 4
    stopped, ended = got[0]
    assert 0.15 <= ended - stopped <= 0.25  # the end: the second ask (160 ms of silence) was sure
    assert detector.asked[1] - detector.asked[0] == 3 * 512  # 64 -> 160 ms: three 32 ms frames later
    with pytest.raises(ConfigError, match="must rise"):
        SileroVAD(turn_end=detector, turn_end_silence_ms=[160, 64])
    with pytest.raises(ConfigError, match="one threshold per ask"):
        SileroVAD(turn_end=detector, turn_end_silence_ms=[64, 160], turn_end_threshold=[0.9, 0.9, 0.9])


@needs_espeak
def test_a_turn_held_to_the_end_carries_every_inner_pause_and_only_the_last_asks_silence(paused_question):
    """The silence past the last ask is held back: sent when the speaker goes on (the 700 ms inner pause arrives
    whole), dropped when the hold ends the turn (its audio ends 160 ms after speech, not 1000 ms)."""
    from omnivox.core.runtime.events import AudioChunk, TurnEnd, VoiceStopped

    pcm, speech_end = paused_question
    vad = SileroVAD(turn_end=ScriptedDetector([0.5] * 4))  # never sure: both pauses wait for the hold
    asyncio.run(vad.setup())
    events = stream_events(vad, pcm, 16000, 0.02)
    sent = np.concatenate([e.to_float32()[:, 0] for e in events if isinstance(e, AudioChunk)])
    stopped = next(e.timestamp for e in events if isinstance(e, VoiceStopped))
    ended = next(e.timestamp for e in events if isinstance(e, TurnEnd))
    as_sent = AudioChunk(audio=audio.to_bytes(pcm[None, :], audio.AudioFormat(16000, 2, 1)),
                         rate=16000).to_float32()[:, 0]  # the stream as 16-bit samples
    voiced = int(np.flatnonzero(sent)[0])  # (the pre-roll's leading zeros match anywhere)
    start = next(i for i in range(len(pcm)) if np.array_equal(as_sent[i:i + 2048], sent[voiced:voiced + 2048]))
    start -= voiced
    assert np.array_equal(as_sent[start:start + len(sent)], sent)  # one piece of the stream: no gap in the pause
    assert 0.95 <= ended - stopped <= 1.05  # held to 1000 ms of silence
    assert 0.15 <= (start + len(sent)) / 16000 - stopped <= 0.2  # but it carries the last ask's 160 ms only


@needs_espeak
def test_a_probable_end_is_announced_once_per_pause_and_taken_back_when_the_speaker_goes_on(paused_question):
    """speculate=0.6: the inner pause looks complete (0.7 at 64 ms) -> EndLikely, then the speaker goes on ->
    VoiceResumed before the speech; the end looks complete (0.7) -> EndLikely, then the turn ends at 160 ms."""
    from omnivox.core.runtime.events import AudioChunk, AudioStop, EndLikely, VoiceResumed

    pcm, speech_end = paused_question
    vad = SileroVAD(turn_end=ScriptedDetector([0.7, 0.8, 0.7, 0.99999]), speculate=0.6)
    asyncio.run(vad.setup())
    events = stream_events(vad, pcm, 16000, 0.02)
    kinds = [type(e).__name__ for e in events if not isinstance(e, AudioChunk)]
    assert kinds.count("AudioStop") == 1 and kinds.index("EndLikely") < kinds.index("VoiceResumed")
    guesses = [e for e in events if isinstance(e, EndLikely)]
    assert len(guesses) == 2 and [g.probability for g in guesses] == [0.7, 0.7]  # once per pause (not at 0.8)
    assert abs(guesses[1].timestamp - speech_end) < 0.15  # it carries the end of speech
    resumed = next(i for i, e in enumerate(events) if isinstance(e, VoiceResumed))
    assert isinstance(events[resumed + 1], AudioChunk)  # the pause and the speech follow it
    last_guess = events.index(guesses[1])
    assert not any(isinstance(e, VoiceResumed) for e in events[last_guess:])  # the end guess stood
    assert any(isinstance(e, AudioStop) for e in events[last_guess:])  # ... and the turn ended after it
    with pytest.raises(ConfigError, match="speculate=0.99999 must be between 0 and the turn-end threshold"):
        SileroVAD(turn_end="default", speculate=0.99999, turn_end_threshold=0.999)


@needs_espeak
def test_a_guess_at_zero_goes_out_before_the_detector_is_asked_and_the_detector_still_decides(paused_question):
    """speculate=0: at each pause's first ask, `early` gets the events up to the EndLikely (probability NaN) while
    the detector has not been asked yet; its answers then decide as without a guess (0.2: the turn goes on,
    VoiceResumed; 0.99999 at the end: the turn ends at the first ask). Nothing is returned twice."""
    from omnivox.core.runtime.events import AudioChunk, AudioStop, EndLikely, VoiceResumed, VoiceStopped

    pcm, speech_end = paused_question
    detector = ScriptedDetector([0.2, 0.1, 0.99999])
    vad = SileroVAD(turn_end=detector, speculate=0)
    asyncio.run(vad.setup())
    early, asked_at_guess = [], []

    def guess_now(events):
        asked_at_guess.append(len(detector.asked))
        early.extend(events)

    returned = stream_events(vad, pcm, 16000, 0.02, guess_now)
    guesses = [e for e in early if isinstance(e, EndLikely)]
    assert len(guesses) == 2 and all(np.isnan(g.probability) for g in guesses)
    assert asked_at_guess == [0, 2]  # each guess went out before that pause's first ask (the 1st pause asked twice)
    assert not any(isinstance(e, EndLikely) for e in returned)
    assert sum(isinstance(e, VoiceResumed) for e in returned) == 1  # the inner pause's guess was wrong
    stop = next(e for e in returned if isinstance(e, AudioStop))
    voice_stopped = next(e for e in returned if isinstance(e, VoiceStopped))
    assert abs(voice_stopped.timestamp - speech_end) < 0.1
    assert 0.06 <= stop.timestamp - voice_stopped.timestamp <= 0.1  # ended at the first ask (64 ms): the detector
    assert detector.answers == []
    chunks = [e for e in early + returned if isinstance(e, AudioChunk)]
    assert len({id(e) for e in chunks}) == len(chunks)


@needs_espeak
def test_the_encoder_stage_reuses_the_features_the_detector_computed_for_the_turn(paused_question):
    """The VAD asks the detector about exactly the samples it sends as the turn (16-bit), so the model's encoder
    (the same tiny.en weights, trimmed) finds them encoded already: no second encoding after the decision."""
    from omnivox.core.runtime.events import AudioChunk
    from omnivox.plugins.fw_encoder import load_fw_encoder

    pcm, _ = paused_question
    question = pcm[int(1.1 * 16000):]  # 'france' and the silence after: one short, complete utterance
    vad = SileroVAD(turn_end="default")
    asyncio.run(vad.setup())
    fmt, events = audio.AudioFormat(16000, 2, 1), []
    for start in range(0, len(question), 320):
        events += vad.push(AudioChunk(audio=audio.to_bytes(question[None, start:start + 320], fmt), rate=16000,
                                       timestamp=start / 16000))
    turn = np.concatenate([e.to_float32().T for e in events if isinstance(e, AudioChunk)], axis=1)  # (1, n)
    assert 0.3 < turn.shape[1] / 16000 < 3.0 and vad._asked  # the detector was asked and ended the turn
    encoder, calls = load_fw_encoder(threads=1, trim=True), []
    encode_windows = encoder._encode_windows
    encoder._encode_windows = lambda mels: calls.append(mels.shape) or encode_windows(mels)
    features = encoder.encode(turn, 16000)  # what EncoderStage does with the turn's chunks
    assert calls == [] and features.shape == (encoder.num_frames(turn.shape[1], 16000), 384)


@pytest.mark.slow
@needs_espeak
def test_the_recipe_builds_trains_and_exports_a_detector_the_vad_loads(tmp_path):
    """A few sentences through `python -m omnivox.training.turn_end build` and recipes/turn_end.yaml: the export
    is what TurnEndDetector (and so the VAD's `turn_end=`) loads, and it judges its own examples."""
    from omnivox.plugins.turn_end import TurnEndDetector
    from omnivox.training.recipe import load_recipe
    from omnivox.training.trainer import train
    from omnivox.training.turn_end import TurnEndDataConfig, build_turn_end, main

    data = tmp_path / "data"
    with pytest.raises(ConfigError, match="pause_ms"):
        main(["build", str(data), "--set", "pause_ms=[800, 300]"])
    build_turn_end(data, TurnEndDataConfig(train_sentences=12, test_sentences=4), progress=False)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert {r["complete"] for r in rows} == {True, False} and len(rows) >= 30
    streams = [json.loads(line) for line in (data / "test_streams.jsonl").read_text().splitlines()]
    assert streams and all(s["pause_s"][1] - s["pause_s"][0] >= 0.25 and s["pause_s"][1] < s["speech_end_s"]
                           for s in streams)
    recipe = load_recipe(REPO / "recipes/turn_end.yaml", [f"output_dir={tmp_path / 'run'}",
                                                           f"data.path={data / 'train.jsonl'}",
                                                           f"eval_data.path={data / 'test.jsonl'}",
                                                           "training.max_steps=150"])
    summary = train(recipe)
    assert summary["train"]["accuracy"] >= 0.9  # it learns its examples
    detector = TurnEndDetector(summary["export"])
    pcm, _ = read_audio(data / streams[0]["audio"])
    assert 0.0 <= detector.probability(pcm[0]) <= 1.0


def chunks_of(pcm: np.ndarray, chunk_s: float = 0.02) -> list:
    """The mono 16 kHz `pcm` as a microphone's AudioChunks, stamped with their audio time."""
    from omnivox.core.runtime.events import AudioChunk

    fmt, step = audio.AudioFormat(16000, 2, 1), int(chunk_s * 16000)
    return [AudioChunk(audio=audio.to_bytes(pcm[None, i:i + step], fmt), rate=16000, timestamp=(i + step) / 16000)
            for i in range(0, len(pcm), step)]


@needs_espeak
def test_in_a_pipeline_a_guess_ends_the_turn_and_a_wrong_one_is_withdrawn_and_asked_again_whole(paused_question):
    """speculate=0 in a pipeline: the inner pause's guess ends turn 1 there (AudioStop); the speaker goes on, so
    turn 1 is withdrawn (Interruption, Withdrawn, TurnEnd interrupted) and turn 2 carries the whole utterance so far
    in one chunk, then the rest; the end's guess ends turn 2 and its TurnEnd says it stands. The pipeline's Guesses
    hold the fates: turn 1 withdrawn, turn 2 standing."""
    from omnivox.core.runtime.events import (
        AudioChunk,
        AudioStart,
        AudioStop,
        EndLikely,
        Interruption,
        TurnEnd,
        TurnStart,
        VoiceResumed,
        VoiceStopped,
        Withdrawn,
    )
    from omnivox.core.runtime.guesses import HoldGuesses, shared_guesses
    from omnivox.core.runtime.pipeline import Pipeline
    from omnivox.core.runtime.testing import of_turn, run_pipeline

    pcm, speech_end = paused_question
    vad = SileroVAD(turn_end=ScriptedDetector([0.2, 0.1, 0.99999]), speculate=0)
    pipeline = Pipeline([vad, HoldGuesses()])  # (without it the VAD refuses to guess: the answers would be heard)
    out = asyncio.run(run_pipeline(pipeline, chunks_of(pcm)))
    first, second = of_turn(out, 1), of_turn(out, 2)
    kinds = [type(e) for e in first if not isinstance(e, (AudioChunk, Interruption))]
    assert kinds[-6:] == [EndLikely, VoiceStopped, AudioStop, VoiceResumed, Withdrawn, TurnEnd]
    assert first[-1].reason == "interrupted"
    assert [e.reason for e in first if isinstance(e, Interruption)] == ["withdrawn"]  # (a system event: at once)
    asked_first = b"".join(e.audio for e in first if isinstance(e, AudioChunk))
    assert isinstance(second[0], TurnStart) and isinstance(second[2], AudioStart)
    assert isinstance(second[3], AudioChunk) and second[3].audio.startswith(asked_first)  # all of it again
    asked_second = b"".join(e.audio for e in second if isinstance(e, AudioChunk))
    assert len(asked_second) > len(asked_first) + 2 * 16000 * 0.5  # the pause (~700 ms) and 'france' too
    kinds = [type(e) for e in second if not isinstance(e, AudioChunk)]
    assert kinds[-4:] == [EndLikely, VoiceStopped, AudioStop, TurnEnd] and second[-1].reason == "done"
    stopped = next(e for e in second if isinstance(e, VoiceStopped))
    assert abs(stopped.timestamp - speech_end) < 0.1  # the end of speech; the turn was asked at the first ask:
    assert 0.06 <= next(e for e in second if isinstance(e, AudioStop)).timestamp - stopped.timestamp <= 0.1
    guesses = shared_guesses(pipeline.shared)
    assert guesses.decision(("default", 1)).result() is None and guesses.decision(("default", 2)).result() > 0
    assert guesses.withdrawn(("default", 1)) and not guesses.withdrawn(("default", 2)) and vad.withdrawn == 1
    alone = SileroVAD(turn_end=ScriptedDetector([]), speculate=0)
    with pytest.raises(ConfigError, match="(?s)without HoldGuesses.*speech_pipeline"):
        asyncio.run(run_pipeline(Pipeline([alone]), []))


class SlowDetector(ScriptedDetector):
    """A ScriptedDetector that takes `slow_s` over its last answer (a decision the answer can beat); `done_at`:
    time.monotonic() when it gave that answer."""

    def __init__(self, answers, slow_s: float):
        super().__init__(answers)
        self.slow_s, self.done_at = slow_s, None

    def probability(self, pcm):
        if len(self.answers) == 1:
            time.sleep(self.slow_s)
            self.done_at = time.monotonic()
        return super().probability(pcm)


@needs_espeak
def test_a_guessed_answer_reaches_no_one_before_the_decision_and_a_withdrawn_one_never(paused_question):
    """The tiny random model answers each guess at once, behind HoldGuesses: the withdrawn turn's answer never
    comes out and leaves the conversation; the standing turn's answer, made while the detector took 1 s to decide,
    comes out only after it decided."""
    from omnivox.core.runtime.events import AudioOut, DataEvent, TextToken
    from omnivox.core.runtime.guesses import HoldGuesses
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.core.runtime.speech_pipeline import speech_pipeline
    from omnivox.core.runtime.stage import Stage
    from omnivox.core.runtime.testing import of_turn, run_pipeline

    pcm, _ = paused_question
    kit = SpeechKit.random(seed=0)
    detector = SlowDetector([0.2, 0.1, 0.99999], slow_s=1.0)
    made: dict[int, float] = {}

    class Made(Stage):  # right after the LM: when each turn's first piece of answer was made
        async def process(self, event):
            made.setdefault(event.turn_id, event.timestamp)
            yield event

    lm = LMStage("text-delay", model=kit.model, task="A1A2", max_steps=8, threads=1, memory=True)
    stages = [SileroVAD(turn_end=detector, speculate=0), EncoderStage(kit.encoder), lm, Made(), HoldGuesses(),
              CodecStage(kit.codec)]
    out = asyncio.run(run_pipeline(stages, chunks_of(pcm), timeout=60))
    assert not [e for e in of_turn(out, 1) if isinstance(e, DataEvent)]  # the withdrawn guess: nothing
    answer = [e for e in of_turn(out, 2) if isinstance(e, DataEvent)]
    assert any(isinstance(e, TextToken) for e in answer) and any(isinstance(e, AudioOut) for e in answer)
    assert made[2] < detector.done_at <= min(e.timestamp for e in answer)  # made before the decision, held
    assert [t.turn_id for t in lm.conversations.sessions["default"].history] == [2]
    held = [type(s).__name__ for s in speech_pipeline([], model=kit.model, encoder=kit.encoder, vad=SileroVAD(
        turn_end=detector, speculate=0)).stages]
    assert held == ["SileroVAD", "EncoderStage", "LMStage", "HoldGuesses"]  # comes with a VAD that speculates
    assert "HoldGuesses" not in [type(s).__name__ for s in speech_pipeline([], model=kit.model, vad=SileroVAD(
        turn_end=detector)).stages]
