"""`/v1/live` (plugins/http/live.py, docs/live_api.md) with the reference client (plugins/http/live_client.py),
on the tiny random model: a continuous microphone stream is cut into turns by the server (VAD + end-of-turn
detector), each answered; speech over an answer barges in; bad frames and messages get named errors and the
session goes on; a client gone mid-answer frees its session; four sessions at once get nothing crossed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time

import numpy as np
import pytest
from http_support import serving, wait_until

from omnivox.core import audio
from omnivox.plugins.audio_files import read_audio
from omnivox.plugins.http.live_client import LiveClient

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
RATE = 16000


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("live")
    out = []
    for i, text in enumerate(["what is the capital of france", "what day comes after monday"]):
        subprocess.run(["espeak-ng", "-w", str(folder / f"{i}.wav"), text], check=True)
        pcm, rate = read_audio(folder / f"{i}.wav")
        out.append(audio.resample(audio.to_mono(pcm), rate, RATE))
    return out


@pytest.fixture(scope="module")
def server():
    with serving(max_steps=24) as served:
        yield served


@pytest.fixture(scope="module")
def long_server():
    """Answers of 1000 steps: the tiny model's audio then lasts ~2 s (24 steps: 34 ms)."""
    with serving(max_steps=1000) as served:
        yield served


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def run(coro):
    return asyncio.run(coro)


def test_two_questions_in_one_stream_are_two_answered_turns(server, questions):
    async def scenario():
        async with LiveClient(server.url) as live:
            await live.stream(np.concatenate([silence(0.3), questions[0], silence(3.0), questions[1], silence(0.5)]))
            await live.until(lambda e: e["event"] == "turn-end" and e["turn"] == 2)
            await live.until(lambda e: e["event"] == "metrics" and e["turn"] == 2)
            return live

    live = run(scenario())
    assert [e["turn"] for e in live.of("turn-start")] == [1, 2]
    assert [(e["turn"], e["reason"]) for e in live.of("turn-end")] == [(1, "done"), (2, "done")]
    assert [e["turn"] for e in live.of("audio-start")] == [1, 2] and live.of("audio-start")[0]["rate"] > 0
    answers = live.answers()
    assert set(answers) == {1, 2} and all(len(pcm) > 0 for pcm in answers.values())
    first_audio = min(at for turn, _, _, at in live.audio if turn == 1)
    assert live.of("turn-start")[0]["at"] < first_audio < live.of("turn-end")[0]["at"]
    assert [m["turn"] for m in live.of("metrics")] == [1, 2] and live.of("metrics")[0]["first_audio_ms"] > 0
    assert live.of("metrics")[0]["stage_busy_ms"]["encoder"] >= 0  # where the turn's time went, per stage
    assert not live.of("error") and not live.of("interrupted")
    # voice-stopped places the end of speech in the stream sent (Silero ends speech a little after the last
    # loud sample): a client times the answer from it
    ends = [(0.3 * RATE + np.flatnonzero(np.abs(questions[0]) > 0.02)[-1]) / RATE]
    ends.append((3.3 * RATE + len(questions[0]) + np.flatnonzero(np.abs(questions[1]) > 0.02)[-1]) / RATE)
    stops = live.of("voice-stopped")
    assert [e["turn"] for e in stops] == [1, 2]
    assert all(0.0 <= e["stream_s"] - end <= 0.2 for e, end in zip(stops, ends, strict=True)), (stops, ends)
    assert all(abs(e["server_time"] - time.time()) < 60 for e in live.of("voice-started"))


def test_audio_sent_faster_than_real_time_keeps_its_place_in_the_stream(server, questions):
    # the page sends what it heard while the session opened in one burst, then streams in real time: the end of
    # speech is still placed at its sample in the stream, not squeezed to the burst's arrival
    held = np.concatenate([silence(0.3), questions[0][: len(questions[0]) // 2]])

    async def scenario():
        async with LiveClient(server.url) as live:
            await live.stream(held, realtime=False)
            await live.stream(np.concatenate([questions[0][len(questions[0]) // 2:], silence(0.8)]))
            await live.until(lambda e: e["event"] == "voice-stopped")
            return live

    stop = run(scenario()).of("voice-stopped")[0]["stream_s"]
    end = (0.3 * RATE + np.flatnonzero(np.abs(questions[0]) > 0.02)[-1]) / RATE
    assert 0.0 <= stop - end <= 0.2, (stop, end)


def test_speech_over_an_answer_barges_in_and_becomes_the_next_turn(long_server, questions):
    async def scenario():
        async with LiveClient(long_server.url) as live:
            await live.stream(np.concatenate([silence(0.3), questions[0], silence(0.4)]))
            await live.until(lambda e: e["event"] == "audio-start" and e["turn"] == 1)
            await live.stream(np.concatenate([questions[1], silence(0.8)]))  # while the answer plays
            await live.until(lambda e: e["event"] == "turn-end" and e["turn"] == 2)
            return live

    live = run(scenario())
    assert [e["turn"] for e in live.of("interrupted")] == [1]
    interrupted = live.of("interrupted")[0]["at"]
    assert interrupted < live.of("turn-start")[1]["at"]  # the barge-in comes first, then the new question
    assert [(e["turn"], e["reason"]) for e in live.of("turn-end")] == [(1, "interrupted"), (2, "done")]
    assert not [at for turn, _, _, at in live.audio if turn == 1 and at > interrupted + 0.05]  # turn 1 stopped


def test_bad_frames_and_messages_get_named_errors_and_the_session_goes_on(server, questions):
    async def scenario():
        async with LiveClient(server.url) as live:
            await live._ws.send_bytes(b"no header here")
            await live._ws.send_bytes(b"OVA\x01" + bytes(8) + b"\x01\x02\x03")  # an odd byte count
            await live._ws.send_str("hello")
            await live._ws.send_str(json.dumps({"event": "dance"}))
            await live._ws.send_str(json.dumps({"event": "context", "text": 5}))
            await live.until(lambda e: len([x for x in live.events if x["event"] == "error"]) >= 5)
            await live.stream(np.concatenate([silence(0.3), questions[0], silence(0.8)]))
            await live.until(lambda e: e["event"] == "turn-end")
            return live

    live = run(scenario())
    assert [e["code"] for e in live.of("error")][:5] == ["bad-audio-header", "bad-chunk", "not-json", "unknown-event",
                                                         "bad-field"]
    assert all(e["fix"] for e in live.of("error"))
    assert live.of("turn-end")[0]["reason"] == "done"


def test_a_question_longer_than_max_turn_s_is_dropped_with_turn_too_long(questions):
    speech = np.concatenate([questions[0], questions[1]])
    with serving(max_steps=24, limits={"max_turn_s": 1.5}) as short:
        async def scenario():
            async with LiveClient(short.url) as live:
                await live.stream(np.concatenate([silence(0.3), speech, silence(0.8)]), realtime=False)
                await live.until(lambda e: e["event"] == "turn-end")
                await asyncio.sleep(0.5)
                return live

        live = run(scenario())
    errors, ends = live.of("error"), live.of("turn-end")
    assert errors and {e["code"] for e in errors} == {"turn-too-long"}  # each question here is > 1.5 s
    assert [e["turn"] for e in errors] == [e["turn"] for e in ends] and {e["reason"] for e in ends} == {"error"}
    assert not live.audio


@pytest.mark.parametrize("start, code", [
    (b"\x00", "bad-start"), ('{"event": "start", "version": 2}', "bad-version"),
    ('{"event": "start", "version": 1, "rate": 44100}', "bad-rate"), ('{"event": "hello"}', "bad-start")])
def test_a_bad_start_is_refused_with_its_named_error(server, start, code):
    import aiohttp

    async def scenario():
        async with aiohttp.ClientSession() as http, http.ws_connect(server.url + "/v1/live") as ws:
            await (ws.send_bytes(start) if isinstance(start, bytes) else ws.send_str(start))
            message = await ws.receive(timeout=10)
            closed = await ws.receive(timeout=10)
            return json.loads(message.data), closed.type

    error, closed = run(scenario())
    assert error["event"] == "error" and error["code"] == code and error["fix"]
    assert closed in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


def test_without_silero_vad_a_live_session_is_refused_with_the_install_hint(monkeypatch):
    import aiohttp

    from omnivox.core.errors import ConfigError
    from omnivox.plugins import silero_vad

    def missing():
        raise ConfigError("the Silero VAD stage needs the silero-vad package", 'pip install "omnivox[vad]"')

    monkeypatch.setattr(silero_vad, "_silero_template", missing)
    with serving(max_steps=24) as served:  # the server itself starts: /chat and /v1/chat need no VAD
        async def scenario():
            async with aiohttp.ClientSession() as http, http.ws_connect(served.url + "/v1/live") as ws:
                await ws.send_str('{"event": "start", "version": 1, "rate": 16000}')
                return json.loads((await ws.receive(timeout=10)).data)

        error = run(scenario())
    assert error["event"] == "error" and error["code"] == "live-unavailable", error
    assert "silero-vad" in error["message"] and "omnivox[vad]" in error["fix"]


def test_a_client_gone_mid_answer_frees_its_session(server, questions):
    async def scenario():
        live = LiveClient(server.url)
        await live.__aenter__()
        await live.stream(np.concatenate([silence(0.3), questions[0], silence(0.4)]))
        await live.until(lambda e: e["event"] == "audio-start")
        await live.close()  # mid-answer

    run(scenario())
    service = server.service
    assert wait_until(lambda: server.call(lambda: not service.answers and not service.engine.sessions))
    assert wait_until(lambda: server.call(lambda: not server.lm.generating))


def test_four_sessions_at_once_each_get_their_own_answers(server, questions):
    async def one(index: int):
        async with LiveClient(server.url) as live:
            await live.stream(np.concatenate([silence(0.2 * index), questions[index % 2], silence(0.8)]))
            await live.until(lambda e: e["event"] == "turn-end")
            return live

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(4)))

    lives = run(scenario())
    sessions = {live.of("started")[0]["session"] for live in lives}
    assert len(sessions) == 4
    for live in lives:
        assert [(e["turn"], e["reason"]) for e in live.of("turn-end")] == [(1, "done")]
        assert {turn for turn, *_ in live.audio} == {1} and len(live.answers()[1]) > 0


def test_the_reference_client_streams_a_file_and_writes_the_answers_from_a_shell(server, questions, tmp_path,
                                                                               capsys):
    from omnivox.plugins.audio_files import write_audio
    from omnivox.plugins.http.live_client import main

    question = write_audio(tmp_path / "question.wav", np.concatenate([silence(0.3), questions[0]]), RATE)
    assert main([server.url, "--input", str(question), "--output", str(tmp_path / "answers.wav")]) == 0
    answers, _ = read_audio(tmp_path / "answers.wav")
    printed = capsys.readouterr()
    assert answers.shape[-1] > 0 and printed.out.startswith("1: ")  # the turn's text, then its audio kept
    assert "[turn 1] done" in printed.err and "first audio" in printed.err
    refused = main([server.url.replace("http://", "http://no-such-host.invalid:1/x") + "/", "--input", str(question)])
    assert refused == 1 and "live_client:" in capsys.readouterr().err  # named, not a traceback


@pytest.mark.slow
def test_the_reference_client_talks_from_the_microphone_and_plays_on_the_speaker(server, questions, tmp_path):
    """Real PortAudio devices (tests/virtual_audio.py): the microphone's question is answered on the speaker."""
    import signal
    import sys

    from virtual_audio import DEVICE_RATE, VirtualAudio, available

    if available() is not None:
        pytest.skip(available())
    spoken = audio.resample(np.concatenate([silence(0.5), questions[0], silence(6.0)]), RATE, DEVICE_RATE)
    with VirtualAudio(tmp_path / "va") as va:
        va.set_microphone(np.stack([spoken, spoken]))
        client = subprocess.Popen([sys.executable, "-m", "omnivox.plugins.http.live_client", server.url, "--input",
                                   "mic", "--output", "speaker"], env=va.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            out, err = client.communicate(timeout=len(spoken) / DEVICE_RATE + 4)
        except subprocess.TimeoutExpired:
            client.send_signal(signal.SIGINT)
            out, err = client.communicate(timeout=30)
        played = va.speaker_output()
    assert client.returncode == 0, err
    assert out.startswith("1: ") and "[turn 1] done" in err, (out, err)
    assert np.abs(played).max() > 0.01  # the answer came out of the speaker
