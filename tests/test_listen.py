"""The local microphone assistant: Silero VAD turn taking, the speaker's jitter buffer, streaming resampling, and
`omnivox listen` end to end through REAL PortAudio devices (tests/virtual_audio.py), tiny random model.

Assertions on the live runs are about samples and counts (positions in the recorded output, turns in the
trace), never about wall time: the machine running them may be loaded."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from omnivox.core import audio
from omnivox.core.runtime.events import AudioChunk, AudioStart, Event, Interruption, TurnEnd, VoiceStarted
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.plugins.audio_files import FileAudioInput, read_audio, write_audio
from omnivox.plugins.silero_vad import SileroVAD
from omnivox.plugins.sounddevice_io import SpeakerOutput, StreamResampler

sys.path.insert(0, str(Path(__file__).parent))
from virtual_audio import DEVICE_RATE, VirtualAudio, available  # noqa: E402

RNG = np.random.default_rng(0)


def speak(text: str, rate: int, folder: Path) -> np.ndarray:
    """espeak-ng saying `text`, float32 (samples,) at `rate`."""
    path = folder / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    pcm, native = read_audio(path)
    return audio.resample(pcm[0], native, rate)


def silence(seconds: float, rate: int) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.float32)


class Collect(Stage):
    consumes = (Event,)

    def __init__(self):
        super().__init__("collect")
        self.events = []

    async def process(self, event):
        self.events.append(event)

    async def on_interrupt(self, event):
        self.events.append(event)


def run_vad(pcm: np.ndarray, tmp_path: Path, speaking_turn: int | None = None, **params) -> list[Event]:
    """The VAD's events on `pcm`; `speaking_turn`: an answer of that turn is being played (the pipeline's
    PlaybackState has a sink and the turn open)."""
    path = tmp_path / "stream.wav"
    write_audio(path, pcm, 16000)
    sink, vad = Collect(), SileroVAD(**params)
    pipeline = Pipeline([FileAudioInput(str(path), chunk_ms=20), vad, sink])
    if speaking_turn is not None:
        vad.playback.has_sink = True
        vad.playback.open_turn(("default", speaking_turn))
    asyncio.run(pipeline.run())
    return sink.events


# ---- fast: turn detection on files --------------------------------------------------------------------
def test_vad_cuts_two_questions_into_two_turns_with_pre_roll(tmp_path):
    q1, q2 = speak("What is the capital of France?", 16000, tmp_path), speak("How far is the moon?", 16000,
                                                                              tmp_path)
    events = run_vad(np.concatenate([silence(0.5, 16000), q1, silence(2, 16000), q2, silence(1, 16000)]), tmp_path)
    starts = [e for e in events if isinstance(e, AudioStart)]
    assert [e.turn_id for e in starts] == [1, 2]
    assert [(e.turn_id, e.reason) for e in events if isinstance(e, TurnEnd)] == [(1, "done"), (2, "done")]
    for turn, question in ((1, q1), (2, q2)):
        heard = np.concatenate([e.to_float32()[:, 0] for e in events if isinstance(e, AudioChunk)
                                and e.turn_id == turn])
        # the turn holds the whole question: the pre-roll reaches back before the first syllable
        assert len(heard) >= len(question) * 0.9
        lead = np.flatnonzero(np.abs(heard) > 0.01)[0]
        assert lead >= 0.1 * 16000  # ~300 ms of pre-roll, some of it the silence before the speech


def test_vad_starts_no_turn_on_silence_or_moderate_white_noise(tmp_path):
    noise = (RNG.standard_normal(4 * 16000) * 0.05).astype(np.float32)  # -26 dBFS
    events = run_vad(np.concatenate([silence(2, 16000), noise]), tmp_path)
    assert not [e for e in events if isinstance(e, (VoiceStarted, AudioStart))]


def test_vad_half_duplex_ignores_speech_while_the_assistant_speaks_full_duplex_interrupts(tmp_path):
    q = speak("Hello there, how are you?", 16000, tmp_path)
    stream = np.concatenate([silence(0.5, 16000), q, silence(1, 16000)])
    for duplex in ("half", "full"):
        events = run_vad(stream, tmp_path, speaking_turn=7, duplex=duplex)  # an answer is being played
        interruptions = [e for e in events if isinstance(e, Interruption)]
        if duplex == "half":
            assert not interruptions and not [e for e in events if isinstance(e, AudioStart)]
        else:
            assert [(e.turn_id, e.reason) for e in interruptions] == [(7, "barge-in")]
            assert [e.turn_id for e in events if isinstance(e, AudioStart)] == [1]


def test_stream_resampler_blockwise_equals_one_call_and_keeps_the_tone():
    rate_in, rate_out = 44100, 16000
    t = np.arange(rate_in) / rate_in
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = StreamResampler(rate_in, rate_out)(tone)
    blocks, resample = [], StreamResampler(rate_in, rate_out)
    for start in range(0, len(tone), 882):  # 20 ms blocks
        blocks.append(resample(tone[start:start + 882]))
    pieces = np.concatenate(blocks)
    assert abs(len(pieces) - rate_out) <= 1 and np.allclose(pieces[:len(whole)], whole[:len(pieces)], atol=1e-5)
    steady = pieces[2000:]  # past the filter's start-up
    spectrum = np.abs(np.fft.rfft(steady)) / len(steady) * 2  # amplitude per bin
    assert abs(np.argmax(spectrum) * rate_out / len(steady) - 440) < 2  # same pitch
    assert abs(spectrum.max() - 0.5) < 0.05  # same level


def test_speaker_jitter_buffer_counts_underruns_and_drops_an_interrupted_turn():
    speaker = SpeakerOutput(rate=1000, block_ms=10, jitter_ms=20)
    speaker.playback.has_sink = True
    block = np.zeros((10, 1), dtype=np.float32)

    def play() -> np.ndarray:
        speaker._callback(block, 10, None, None)
        return block[:, 0].copy()

    def out(turn: int, n: int):
        pcm = np.full((1, n), 0.5, dtype=np.float32)
        data = audio.to_bytes(pcm, audio.AudioFormat(1000, 2, 1))
        from omnivox.core.runtime.events import AudioOut

        return AudioOut(audio=data, rate=1000, turn_id=turn)

    async def scenario():
        await speaker.process(out(1, 15))
        assert not play().any()  # 15 frames < 20 ms jitter buffer: still silent
        await speaker.process(out(1, 10))
        assert play().all() and play().all()  # 25 buffered: plays 10 + 10
        assert play()[:5].all() and not play().any()  # 5 left, then dry mid-answer
        assert speaker.underruns == 1
        await speaker.process(out(1, 100))
        assert play().all()
        await speaker.on_interrupt(Interruption(turn_id=1))
        assert not play().any()  # stopped within one block, buffered audio dropped
        assert speaker.turns[("default", 1)].dropped and ("default", 1) in speaker.finished

    asyncio.run(scenario())


# ---- slow: `omnivox listen` through real PortAudio ------------------------------------------------------
needs_devices = pytest.mark.skipif(available() is not None, reason=str(available()))


def listen(va: VirtualAudio, tmp_path: Path, *args: str, stop_after: float | None = None, timeout: float = 240):
    """Run `omnivox listen` on the virtual devices; returns (exit code, stdout, stderr, turns, summary, played).
    `stop_after`: send Ctrl-C (SIGINT) after that many seconds instead of waiting for --max-turns."""
    trace = tmp_path / "trace.jsonl"
    command = [sys.executable, "-m", "omnivox.cli.main", "listen", "--checkpoint", "random", "--trace", str(trace),
               "--record", str(tmp_path / "played.wav"), *args]
    process = subprocess.Popen(command, env=va.env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        out, err = process.communicate(timeout=stop_after or timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    lines = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
    turns = {t["turn"]: t for t in lines if "turn" in t}
    summary = next((t["summary"] for t in lines if "summary" in t), {})
    return process.returncode, out, err, turns, summary, va.speaker_output()


def runs_of_sound(played: np.ndarray, rate: int, gap_s: float = 0.05) -> list[tuple[int, int]]:
    """[start, end) of each stretch of non-zero samples (silences shorter than gap_s are bridged)."""
    loud = np.flatnonzero(np.abs(played) > 1e-4)
    if not len(loud):
        return []
    breaks = np.flatnonzero(np.diff(loud) > gap_s * rate)
    starts = np.concatenate(([loud[0]], loud[breaks + 1]))
    ends = np.concatenate((loud[breaks] + 1, [loud[-1] + 1]))
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    folder = tmp_path_factory.mktemp("questions")
    return (speak("What is the capital of France?", DEVICE_RATE, folder),
            speak("How far away is the moon?", DEVICE_RATE, folder))


def stereo(mono: np.ndarray, left_only: bool = False) -> np.ndarray:
    return np.stack([mono, np.zeros_like(mono) if left_only else mono])


@pytest.mark.slow
@needs_devices
def test_two_questions_two_turns_answer_audio_starts_before_the_lm_finishes(tmp_path, questions):
    """48 kHz stereo microphone (question in the left channel only: down-mixed), two questions, half duplex:
    two turns, each answer played (in the recorded output) before its LM ended. The silence between the
    questions is 2 s plus the time the first answer takes to play on a slow CPU (the tiny pipeline plays
    32 steps, ~2.7 s of audio, in up to ~7 s with underruns): a question asked while the answer plays is
    ignored in half duplex by design (the full-duplex test covers talking over it)."""
    rate = 48000
    q1, q2 = (audio.resample(q, DEVICE_RATE, rate) for q in questions)
    with VirtualAudio(tmp_path / "va", mic_rate=rate) as va:
        va.set_microphone(stereo(np.concatenate([silence(0.5, rate), q1, silence(12, rate), q2]), left_only=True))
        code, out, err, turns, summary, played = listen(va, tmp_path, "--input-rate", str(rate), "--max-turns", "2",
                                                        "--max-steps", "32")
    assert code == 0, err
    assert sorted(turns) == [1, 2] and summary["turns"] == 2, out
    sounds = runs_of_sound(played, 24000)
    for turn in turns.values():
        assert turn["reason"] == "done"
        assert turn["first_frame"] is not None and turn["first_frame"] < turn["lm_done_frame"]
        # the recorded output has the answer's audio where the speaker says it played it
        assert any(start <= turn["first_frame"] + 10 and turn["first_frame"] < end for start, end in sounds)
        assert turn["latency_ms"] > 0
    assert "first audio" in out and "ms after end of speech" in out


@pytest.mark.slow
@needs_devices
def test_two_questions_2_s_apart_in_full_duplex_two_turns_each_answer_heard_before_its_lm_ended(tmp_path, questions):
    """The issue's 2 s of silence between the questions: the second question arrives while the first answer
    may still play, so in full duplex it takes the turn (barge-in) and both answers start playing before their
    LM turn ended."""
    q1, q2 = questions
    with VirtualAudio(tmp_path / "va") as va:
        va.set_microphone(stereo(np.concatenate([silence(0.5, DEVICE_RATE), q1, silence(2, DEVICE_RATE), q2])))
        code, out, err, turns, summary, played = listen(va, tmp_path, "--duplex", "full", "--max-turns", "2",
                                                        "--max-steps", "32")
    assert code == 0, err
    assert sorted(turns) == [1, 2] and summary["turns"] == 2, out
    sounds = runs_of_sound(played, 24000)
    for turn in turns.values():
        assert turn["first_frame"] is not None and turn["first_frame"] < turn["lm_done_frame"]
        assert any(start <= turn["first_frame"] + 10 and turn["first_frame"] < end for start, end in sounds)
    assert turns[2]["reason"] == "done"


@pytest.mark.slow
@needs_devices
def test_silence_and_moderate_white_noise_start_no_turn_and_ctrl_c_stops_cleanly(tmp_path):
    noise = (RNG.standard_normal(4 * DEVICE_RATE) * 0.05).astype(np.float32)  # -26 dBFS
    with VirtualAudio(tmp_path / "va") as va:
        va.set_microphone(stereo(np.concatenate([silence(2, DEVICE_RATE), noise])))
        code, out, err, turns, summary, played = listen(va, tmp_path, stop_after=25)
    assert code == 0, err  # Ctrl-C is a clean stop
    assert turns == {} and summary["turns"] == 0 and "voice started" not in out
    assert not np.abs(played).max() > 0


@pytest.mark.slow
@needs_devices
def test_full_duplex_barge_in_stops_the_answer_within_150_ms_and_answers_the_new_question(tmp_path, questions):
    q1, q2 = questions
    with VirtualAudio(tmp_path / "va") as va:
        va.set_microphone(stereo(np.concatenate([silence(0.5, DEVICE_RATE), q1, silence(3.5, DEVICE_RATE), q2])))
        code, out, err, turns, summary, played = listen(va, tmp_path, "--duplex", "full", "--max-turns", "2",
                                                        "--max-steps", "60")
    assert code == 0, err
    assert sorted(turns) == [1, 2] and summary["barge_ins"] == 1, out
    first, second = turns[1], turns[2]
    assert first["reason"] == "interrupted" and first["first_frame"] is not None, "the first answer never played"
    detected = second["voice_started_frame"]
    assert first["first_frame"] < detected
    # in the recorded output: the first answer's sound ends within 150 ms of the detected voice start
    answer = [(s, e) for s, e in runs_of_sound(played, 24000) if first["first_frame"] - 10 <= s < detected]
    assert answer, "no sound of the first answer in the recorded output"
    assert (answer[-1][1] - detected) / 24000 <= 0.150, (answer[-1][1] - detected) / 24000
    assert second["reason"] == "done" and second["first_frame"] is not None and second["first_frame"] > detected


@pytest.mark.slow
@needs_devices
def test_half_duplex_ignores_speech_fed_back_at_minus_6_db_while_answering(tmp_path, questions):
    """The echo is SPEECH at -6 dB while the assistant answers: the tiny random model's own answer is noise that
    Silero never takes for speech (probability < 0.05), so feeding it back could not fail this test. The
    full-duplex run on the same microphone input is the control: there the same echo interrupts."""
    q1, echo = questions
    echo = echo * 10 ** (-6 / 20)
    stream = stereo(np.concatenate([silence(0.5, DEVICE_RATE), q1, silence(1.2, DEVICE_RATE), echo]))
    results = {}
    for duplex in ("half", "full"):
        with VirtualAudio(tmp_path / f"va-{duplex}") as va:
            va.set_microphone(stream)
            results[duplex] = listen(va, tmp_path, "--duplex", duplex, "--max-steps", "60", "--max-turns",
                                     "1" if duplex == "half" else "2")
    code, out, err, turns, summary, _ = results["half"]
    assert code == 0, err
    assert sorted(turns) == [1] and turns[1]["reason"] == "done" and summary["onsets_ignored_while_speaking"] >= 1
    assert summary["turns"] == 1 and summary["barge_ins"] == 0
    code, out, err, turns, summary, _ = results["full"]
    assert code == 0 and summary["barge_ins"] == 1 and turns[1]["reason"] == "interrupted", out


@pytest.mark.slow
@needs_devices
def test_missing_device_is_one_line_listing_the_devices_exit_2(tmp_path):
    with VirtualAudio(tmp_path / "va") as va:
        run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "listen", "--input-device", "nosuch"],
                             env=va.env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        listed = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "listen", "--list-devices"],
                                env=va.env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stderr.splitlines() if line.startswith("omnivox listen")]
    assert run.returncode == 2 and len(errors) == 1 and "Traceback" not in run.stderr
    assert "'nosuch'" in errors[0] and "fakemic" in errors[0] and "default" in errors[0]
    assert listed.returncode == 0 and "fakemic" in listed.stdout and "fakespk" in listed.stdout


def test_mic_assistant_pipeline_file_builds_the_listen_stages_sharing_one_playback_state():
    path = Path(__file__).resolve().parents[1] / "recipes" / "pipelines" / "mic_assistant.yaml"
    random = {f"{stage}.checkpoint": "random" for stage in ("encoder", "lm", "codec")}  # no trained weights
    pipeline = Pipeline.from_yaml(path, overrides={"vad.duplex": "full", **random})
    kinds = [type(stage).__name__ for stage in pipeline.stages]
    assert kinds == ["MicrophoneInput", "SileroVAD", "EncoderStage", "LMStage", "CodecStage", "SpeakerOutput"]
    vad, speaker = pipeline.stages[1], pipeline.stages[-1]
    assert vad.duplex == "full" and vad.overflow == "drop_oldest" and vad.playback is speaker.playback


def test_echo_gate_ignores_the_played_answer_heard_back_but_not_the_user_talking_over_it():
    from echo_scenes import MIC_RATE, SPEAKER_RATE, espeak, make_vad, run_scene

    answer = espeak("The capital of France is Paris, a city on the river Seine.", SPEAKER_RATE)
    user = espeak("Wait, stop, tell me about Berlin instead.", MIC_RATE, voice="en+f3")
    ungated = run_scene(make_vad(echo_gate=False), answer)
    assert ungated["barge_ins"], "without the gate the echo barges in (else this scene tests nothing)"
    gated = run_scene(make_vad(echo_gate=True), answer)
    assert gated["barge_ins"] == [] and gated["echoes"] >= 1
    talked_over = run_scene(make_vad(echo_gate=True), answer, user=user, user_at_s=1.0)
    assert talked_over["barge_ins"] and talked_over["barge_ins"][0] > 1.0  # the user's voice, not the echo
