"""The main job: the chat pipeline with real stages (encoder, LM + strategy, codec, file output) on tiny
random components, and `omnivox chat` end to end on an espeak-ng recording."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from omnivox.cli.chat import TranscriptPrinter, displayable
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import AudioOut, CodecFrame, Interruption, TextIn, TextToken, TurnEnd, TurnStart
from omnivox.core.runtime.model_stages import CodecStage, LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.speech_kit import NOTICE, RANDOM_MODEL, SpeechKit
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import ChunkRecordingCodec, run_stage
from omnivox.plugins.audio_files import FileAudioOutput
from omnivox.plugins.snac_codec import SnacCodec

# A SNAC with 3 codebooks of 4096 (like the 24 kHz model) but tiny layers.
TINY_SNAC = dict(sampling_rate=8000, encoder_dim=4, encoder_rates=[2, 2], decoder_dim=16, decoder_rates=[2, 2],
                 attn_window_size=None, codebook_size=4096, codebook_dim=4, vq_strides=[4, 2, 1], noise=True,
                 depthwise=True)


@pytest.fixture(scope="module")
def components():
    """The demo's tiny random model (its audio heads never pick a special id, so every step completes a
    frame and no answer stops before max_steps) and a tiny SNAC."""
    return SpeechKit.load_model(RANDOM_MODEL, seed=1), SnacCodec.load(config=TINY_SNAC, seed=0)


class Recorder(Stage):
    """Records the events passing by (and passes them on) and, at the first audio of a turn, whether the LM
    was still generating."""

    consumes = (AudioOut, TextToken, CodecFrame, TurnEnd)

    def __init__(self, lm: LMStage):
        super().__init__("recorder")
        self.lm, self.events, self.audio_while_generating = lm, [], {}

    async def process(self, event):
        if isinstance(event, AudioOut) and event.turn not in self.audio_while_generating:
            self.audio_while_generating[event.turn] = event.turn in self.lm.generating
        self.events.append(event)
        if not isinstance(event, TurnEnd):  # control events are forwarded by the base
            yield event


def _turn(turn_id, text):
    return [TurnStart(turn_id=turn_id), TextIn(text, turn_id=turn_id), TurnEnd(reason="done", turn_id=turn_id)]


def test_first_audio_reaches_the_sink_while_the_lm_is_still_generating(components):
    model, codec = components
    lm = LMStage("text-delay", model=model, task="T1A2", max_steps=160)
    recorder = Recorder(lm)
    pipeline = Pipeline([lm, CodecStage(codec), recorder])
    asyncio.run(pipeline.run(_turn(0, "hi")))
    audio = [e for e in recorder.events if isinstance(e, AudioOut)]
    assert audio and recorder.audio_while_generating[("default", 0)] is True
    assert lm.results[("default", 0)].steps == 160  # generation went on after that first audio
    # every generated frame was voiced: the stream (tail flushed at TurnEnd) has all their samples
    frames = lm.results[("default", 0)].frames
    streamed = sum(len(e.audio) // 2 for e in audio)
    assert streamed == frames.shape[0] * codec.grid.samples_per_frame


def test_interrupted_turn_sends_nothing_more_and_next_turn_completes(components, tmp_path):
    model, codec = components
    lm = LMStage("text-delay", model=model, task="T1A2", max_steps=400)
    recorder = Recorder(lm)
    out = FileAudioOutput(str(tmp_path / "turn{turn}.wav"))
    pipeline = Pipeline([lm, CodecStage(codec), recorder, out])

    async def scenario():
        await pipeline.start()
        for event in _turn(0, "a long answer please"):
            await pipeline.feed(event)
        async def first_audio():
            while not any(isinstance(e, AudioOut) for e in recorder.events):
                await asyncio.sleep(0.005)

        await asyncio.wait_for(first_audio(), timeout=120)
        await pipeline.bus.publish(Interruption(turn_id=0), sender="test")
        marker = len(recorder.events)
        for event in _turn(1, "short"):
            await pipeline.feed(event)
        await pipeline.drain()
        await pipeline.stop()
        return marker

    marker = asyncio.run(scenario())
    after = recorder.events[marker:]
    late = [e for e in after if e.turn_id == 0 and isinstance(e, (AudioOut, TextToken, CodecFrame))]
    assert late == []
    assert lm.results.get(("default", 0)) is None or lm.results[("default", 0)].stop_reason == "cancelled"
    ends = {e.turn_id: e.reason for e in recorder.events if isinstance(e, TurnEnd)}
    assert ends == {0: "interrupted", 1: "done"}
    assert not (tmp_path / "turn0.wav").exists() and (tmp_path / "turn1.wav").is_file()


def test_stage_failure_ends_the_turn_and_the_next_turn_completes(components):
    model, codec = components
    lm = LMStage("text-delay", model=model, task="T1A2", max_steps=20)
    recorder = Recorder(lm)
    pipeline = Pipeline([lm, CodecStage(codec), recorder])
    # turn 0's text is empty: the LM stage raises InputError mid-turn
    asyncio.run(pipeline.run([*_turn(0, ""), *_turn(1, "ok")]))
    errors = pipeline.errors
    assert [(e.stage, e.turn_id) for e in errors] == [("lm", 0)] and "empty" in errors[0].message
    ends = {e.turn_id: e.reason for e in recorder.events if isinstance(e, TurnEnd)}
    assert ends == {0: "error", 1: "done"}
    assert any(isinstance(e, AudioOut) and e.turn_id == 1 for e in recorder.events)


def _chat(*args, cwd):
    return subprocess.run([sys.executable, "-m", "omnivox.cli.main", "chat", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_omnivox_chat_on_spoken_question(tmp_path):
    question = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(question), "What is the capital of France?"], check=True)
    run = _chat("--checkpoint", "random", "--input", str(question), "--output", "answer.wav", "--text-out",
                "answer.txt", "--max-steps", "40", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert NOTICE in run.stderr and "first audio" in run.stderr
    data, rate = sf.read(tmp_path / "answer.wav")
    assert rate == 24000 and data.ndim == 1 and 0 < len(data) and abs(data).max() <= 1.0
    assert (tmp_path / "answer.txt").is_file()


CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ufffd]")  # C0 but newline, DEL, C1, replacement char


def test_chat_prints_no_control_bytes_and_shows_ids_for_undecodable_bytes(tmp_path):
    """The random model's answer is random bytes: the terminal and --text-out get escapes and ids instead."""
    run = _chat("--checkpoint", "random", "--text", "hello", "--task", "T1T2", "--max-steps", "48", "--text-out",
                "answer.txt", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    written = (tmp_path / "answer.txt").read_text(encoding="utf-8")
    for text in (run.stdout, written):
        assert not CONTROL.search(text), repr(text)
        assert "<ids " in text  # undecodable byte sequences are shown as their token ids
    assert written.strip() == run.stdout.strip()


def test_displayable_escapes_what_a_terminal_would_act_on():
    assert displayable("Paris.\n", [1, 2]) == "Paris.\n"
    assert displayable("caf\u00e9 \u4e2d", [1]) == "caf\u00e9 \u4e2d"  # printable non-ASCII stays
    assert displayable("\x1b[31mred\x07\r\t", [1]) == "\\x1b[31mred\\x07\\x0d\\x09"
    assert displayable("a\x85b\u202ec\u2028", [1]) == "a\\x85b\\u202ec\\u2028"  # C1, bidi override, separator
    assert displayable("\ufffdA", [195, 65]) == "<ids 195 65>"


def test_printer_groups_held_back_ids_and_flushes_them_at_turn_end():
    printer = TranscriptPrinter(io.StringIO())
    # the tokenizer holds back a partial character (empty text) until it completes
    events = [TextToken(10, "", turn_id=0), TextToken(11, "\u00e9", turn_id=0), TextToken(12, "", turn_id=0),
              TextToken(13, "\ufffdx", turn_id=0), TextToken(14, "", turn_id=0), TurnEnd(reason="done", turn_id=0)]
    asyncio.run(run_stage(printer, events))
    assert printer.shown[("default", 0)] == "\u00e9<ids 12 13><ids 14>"
    assert printer.out.getvalue() == "\u00e9<ids 12 13><ids 14>\n"
    assert printer.texts[("default", 0)] == "\u00e9\ufffdx"  # the decoded text is kept as it was


def test_printer_shows_each_action_on_a_line_of_its_own_and_keeps_it_out_of_the_text(capsys):
    from omnivox.core.runtime.events import Action, ActionWarning

    printer = TranscriptPrinter(io.StringIO())
    events = [TextToken(10, "turning on", turn_id=0), Action(name="light", arguments={"room": "kitchen", "on": True},
                                                               turn_id=0),
              ActionWarning(code="unknown-action", message="no action 'fly'", turn_id=0),
              TextToken(11, " the light", turn_id=0), TurnEnd(reason="done", turn_id=0)]
    asyncio.run(run_stage(printer, events))
    assert printer.out.getvalue() == 'turning on\naction light {"room": "kitchen", "on": true}\n the light\n'
    assert printer.shown[("default", 0)] == "turning on the light"  # what --text-out writes
    assert printer.actions[("default", 0)] == [("light", {"room": "kitchen", "on": True})]
    assert "action dropped (unknown-action): no action 'fly'" in capsys.readouterr().err


def test_chat_bad_inputs_fail_clearly(tmp_path):
    run = _chat("--input", "missing.wav", cwd=tmp_path)
    assert run.returncode == 2 and "missing.wav does not exist" in run.stderr and "Traceback" not in run.stderr
    (tmp_path / "notes.wav").write_text("not audio at all")
    run = _chat("--checkpoint", "random", "--input", "notes.wav", cwd=tmp_path)
    assert run.returncode == 2 and "cannot read audio file" in run.stderr and "Traceback" not in run.stderr
    run = _chat("--text", "hi", "--task", "A1A2", cwd=tmp_path)
    assert run.returncode == 2 and "takes audio" in run.stderr


@pytest.mark.slow
def test_demo_pipeline_file_runs(tmp_path):
    question = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(question), "Hello there"], check=True)
    pipeline = Path(__file__).resolve().parents[1] / "recipes" / "pipelines" / "chat_demo.yaml"
    run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "run", str(pipeline),
                          "--set", f"input.path={question}", "--set", "output.path=a.wav", "--set", "lm.max_steps=30",
                          *[f"--set={stage}.checkpoint=random" for stage in ("encoder", "lm", "codec")]],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert sf.info(tmp_path / "a.wav").samplerate == 24000


def test_mini_omni_pipeline_file_names_the_missing_checkpoint(tmp_path):
    pipeline = Path(__file__).resolve().parents[1] / "recipes" / "pipelines" / "chat_mini_omni.yaml"
    run = subprocess.run([sys.executable, "-m", "omnivox.cli.main", "run", str(pipeline)], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "small.pt" in run.stderr and "Traceback" not in run.stderr


def test_codec_stage_decodes_frame_by_frame_until_audio_is_ahead_then_in_chunks(components):
    """Until the audio returned is ahead of playback by the time one more frame takes to arrive and decode,
    each frame is decoded as it comes; then frames wait, up to max_chunk per call. Nothing is lost: the
    stream holds every frame's samples, tail flushed at TurnEnd."""
    from omnivox.core.runtime.model_stages import _CodecTurn

    _, codec = components
    stage, spf = CodecStage(codec, max_chunk=3), codec.grid.samples_per_frame
    turn = _CodecTurn(codec.stream_decoder(), pending=[[0] * 7])
    assert stage._due(turn)  # no audio yet: decode at once
    turn.started, turn.emitted = time.monotonic(), spf  # one frame returned, playing now: barely ahead
    assert stage._due(turn)
    turn.emitted = 1000 * spf  # far ahead of playback: wait for more frames ...
    assert not stage._due(turn)
    turn.pending += [[0] * 7] * 2
    assert stage._due(turn)  # ... up to max_chunk
    assert CodecStage(codec, max_chunk=1)._due(turn)
    with pytest.raises(ConfigError, match="max_chunk"):
        CodecStage(codec, max_chunk=0)

    recording = ChunkRecordingCodec(codec)
    stage = CodecStage(recording, max_chunk=4)
    frames = [CodecFrame([i % 4096] * 7, step=i) for i in range(10)]
    out = asyncio.run(run_stage(stage, [TurnStart(), *frames, TurnEnd(reason="done")]))
    audio = [e for e in out if isinstance(e, AudioOut)]
    assert sum(recording.chunks) == 10 and sum(len(e.audio) // 2 for e in audio) == 10 * spf


def test_chat_fails_clearly_on_an_answer_with_no_speech(tmp_path):
    """text-delay needs several steps before its first complete audio frame: 2 steps give text and no speech."""
    run = _chat("--checkpoint", "random", "--text", "hi", "--max-steps", "2", "--output", "answer.wav", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "no speech" in run.stderr and "0 s of audio" in run.stderr and "try: " in run.stderr, run.stderr
    assert "wrote answer.wav" not in run.stderr and not (tmp_path / "answer.wav").exists()


@pytest.mark.parametrize("reason, audio, rc, warned", [("done", b"", 1, True), ("done", b"\0\0" * 80, 0, False),
                                                       ("interrupted", b"", 1, False)],
                         ids=["silent", "spoken", "interrupted"])
def test_ask_fails_clearly_on_an_answer_with_no_speech(tmp_path, monkeypatch, capsys, reason, audio, rc, warned):
    """`omnivox ask --output`: a finished turn without audio is an error; an interrupted one may be silent."""
    from omnivox.cli import ask
    from omnivox.cli.main import main
    from omnivox.plugins.mqtt.client import Answer

    async def answered(args):
        return [Answer(turn=0, text="hi", audio=audio, rate=16000 if audio else None, reason=reason)]

    monkeypatch.setattr(ask, "_ask", answered)
    assert main(["ask", "--text", "hi", "--output", str(tmp_path / "a.wav")]) == rc
    err = capsys.readouterr().err
    assert ("no speech" in err and "try: " in err) == warned, err
    assert (tmp_path / "a.wav").exists() == bool(audio)
