"""`omnivox serve --http`: upstream Mini-Omni's clients get a streamed WAV from POST /chat, /v1/chat streams JSON
events, concurrent requests are all answered, a client that goes away frees its turn, and every bad request gets
a 4xx JSON error while the server goes on serving. The tiny random model answers noise, quickly."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import wave

import pytest
import requests
from http_support import question_b64, serving, wait_until

from omnivox.core.runtime.events import Cancel, TurnStart, VoiceStopped

pytest.importorskip("aiohttp")


def test_upstream_streamlit_request_gets_a_streamed_wav_whose_audio_arrives_before_the_turn_ends(tmp_path):
    # exactly what upstream's webui/omni_streamlit.py and omni_gradio.py send (plus the fields server.py reads)
    body = {"audio": question_b64(tmp_path), "stream_stride": 4, "max_tokens": 2048, "unknown_field": [1]}
    with serving(max_steps=200) as served, requests.post(f"{served.url}/chat", json=body, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "audio/wav"
        chunks = response.iter_content(chunk_size=None)
        received = b""
        while len(received) <= 44:  # the header, then the first PCM
            received += next(chunks)
        still_generating = served.call(lambda: len(served.lm.generating))
        received += b"".join(chunks)
    assert still_generating == 1, "the first audio bytes arrived only after the LM had finished the turn"
    answer = wave.open(io.BytesIO(received))
    assert (answer.getnchannels(), answer.getsampwidth(), answer.getcomptype()) == (1, 2, "NONE")
    assert answer.getframerate() == served.pipeline.stages[3].codec.grid.sample_rate
    pcm = answer.readframes(1 << 30)
    assert len(pcm) == len(received) - 44 and len(pcm) > 0 and len(pcm) % 2 == 0


def test_wav_header_false_gives_upstreams_headerless_pcm(tmp_path):
    body = {"audio": question_b64(tmp_path), "wav_header": False}
    with serving() as served:
        with_header = requests.post(f"{served.url}/chat", json={"audio": body["audio"]}).content
        raw = requests.post(f"{served.url}/chat", json=body).content
    assert with_header[:4] == b"RIFF" and raw[:4] != b"RIFF"
    assert raw == with_header[44:]  # the same (deterministic) answer, minus the header


def test_v1_chat_streams_text_audio_metrics_and_turn_end_events(tmp_path):
    with serving() as served:
        lines = [json.loads(line) for line in
                 requests.post(f"{served.url}/v1/chat", json={"audio": question_b64(tmp_path)}).text.splitlines()]
        typed = [json.loads(line) for line in
                 requests.post(f"{served.url}/v1/chat", json={"text": "hello"}).text.splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "turn-start" and kinds[-2:] == ["turn-end", "metrics"]
    assert "text" in kinds and "audio" in kinds and lines[-2]["reason"] == "done"
    audio = [line for line in lines if line["event"] == "audio"]
    assert [a["seq"] for a in audio] == list(range(len(audio)))
    assert all(a["width"] == 2 and a["channels"] == 1 and len(base64.b64decode(a["pcm"])) > 0 for a in audio)
    assert lines[-1]["first_audio_ms"] is not None and lines[-1]["text_tokens"] > 0
    assert [line["event"] for line in typed][-2:] == ["turn-end", "metrics"]


def test_v1_chat_metrics_count_from_the_end_of_a_slow_upload_and_keep_the_turn_start_figures(tmp_path):
    """Issue 24: a spoken question uploaded slowly (~1.5 s) is stamped VoiceStopped once its whole body arrived (after
    the client sent the last of it), and first_audio_ms counts from there; first_audio_from_turn_start_ms counts from
    the TurnStart, made once the question was decoded. A typed question has no speech: both count from its start."""
    body = json.dumps({"audio": question_b64(tmp_path)}).encode()
    size, sent = len(body) // 4 + 1, []

    def upload():
        for start in range(0, len(body), size):
            time.sleep(0.4)
            sent.append(time.monotonic())
            yield body[start:start + size]

    with serving() as served:
        fed, feed = [], served.service.feed

        def spy(event):
            fed.append(event)
            feed(event)

        served.service.feed = spy
        spoken = [json.loads(line) for line in requests.post(
            f"{served.url}/v1/chat", data=upload(), headers={"Content-Type": "application/json"}).text.splitlines()]
        typed = requests.post(f"{served.url}/v1/chat", json={"text": "hello"}).text.splitlines()
    [stopped] = [e for e in fed if isinstance(e, VoiceStopped)]
    [started, _] = [e for e in fed if isinstance(e, TurnStart)]
    assert sent[-1] - sent[0] > 1.0 and sent[-1] <= stopped.timestamp <= started.timestamp
    metrics = spoken[-1]
    assert metrics["event"] == "metrics" and metrics["first_audio_ms"] is not None
    decoding_ms = (started.timestamp - stopped.timestamp) * 1000  # (the figures differ by exactly this)
    for kind in ("text", "audio"):
        assert metrics[f"first_{kind}_ms"] - metrics[f"first_{kind}_from_turn_start_ms"] == pytest.approx(decoding_ms,
                                                                                                           abs=1e-3)
    typed_metrics = json.loads(typed[-1])
    assert typed_metrics["first_audio_ms"] == typed_metrics["first_audio_from_turn_start_ms"] is not None


def test_four_concurrent_requests_are_all_answered(tmp_path):
    body = {"audio": question_b64(tmp_path)}
    answers: dict[int, bytes] = {}

    def ask(i: int) -> None:
        with requests.post(served.url + "/chat", json=body, stream=True, timeout=60) as response:
            answers[i] = response.content if response.status_code == 200 else b""

    with serving(max_steps=48) as served:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert served.call(lambda: len(served.service.engine.sessions)) == 0
    assert sorted(answers) == [0, 1, 2, 3]
    assert all(wave.open(io.BytesIO(a)).readframes(1 << 30) for a in answers.values())
    assert len(set(answers.values())) == 1  # the same question and a greedy model: the same answer for each


def test_a_client_disconnecting_mid_stream_cancels_its_turn(tmp_path):
    with serving(max_steps=300) as served:
        engine, feed, cancelled_at = served.lm.engine, served.service.feed, []

        def spy(event):  # the real feed, noting the LM's step count when the service cancels the turn
            if isinstance(event, Cancel):
                cancelled_at.append(engine.steps)
            feed(event)

        served.service.feed = spy
        response = requests.post(f"{served.url}/chat", json={"audio": question_b64(tmp_path)}, stream=True)
        answer = response.iter_content(chunk_size=None)
        next(answer)
        assert served.call(lambda: len(served.lm.generating)) == 1
        response.close()  # the client goes away mid-answer
        assert wait_until(lambda: served.call(lambda: not served.lm.generating and engine.idle)), "the LM kept on"
        print(f"LM steps after the cancel: {engine.steps - cancelled_at[0]}")
        # the engine drops a cancelled row before its next forward; one more may race the Cancel along the bus
        assert len(cancelled_at) == 1 and engine.steps - cancelled_at[0] <= 2
        assert served.call(lambda: (served.service.turns_cancelled, len(served.service.engine.sessions))) == (1, 0)
        assert wait_until(lambda: served.call(lambda: list(served.pipeline.metrics.turns)))
        [metrics] = served.call(lambda: list(served.pipeline.metrics.turns))
        assert metrics.reason == "interrupted" and metrics.text_tokens < 300
        # the server goes on serving
        assert requests.post(f"{served.url}/v1/chat", json={"text": "hi"}).text.splitlines()[-2] \
            == json.dumps({"event": "turn-end", "reason": "done"})


def bad_requests(tmp_path) -> list[tuple[str, dict, int, str]]:
    wav = question_b64(tmp_path)
    long = question_b64(tmp_path, seconds=3.0)
    return [
        ("not JSON", {"data": b"audio=please"}, 400, "not-json"),
        ("JSON, not an object", {"json": ["audio"]}, 400, "not-json"),
        ("missing audio", {"json": {"stream_stride": 4}}, 400, "bad-audio-field"),
        ("audio not a string", {"json": {"audio": 42}}, 400, "bad-audio-field"),
        ("not base64", {"json": {"audio": "this is not base64!"}}, 400, "not-base64"),
        ("base64, not audio", {"json": {"audio": base64.b64encode(b"hello, not a wav file").decode()}}, 400,
         "not-audio"),
        ("too long", {"json": {"audio": long}}, 413, "turn-too-long"),
        ("body too large", {"json": {"audio": wav, "padding": "x" * 300_000}}, 413, "body-too-large"),
    ]


def test_each_bad_request_gets_a_4xx_json_error_and_the_server_goes_on(tmp_path):
    with serving(limits={"max_turn_s": 2.0}, max_body_bytes=250_000) as served:
        for what, kwargs, status, code in bad_requests(tmp_path):
            for path in ("/chat", "/v1/chat"):
                response = requests.post(served.url + path, **kwargs)
                assert response.status_code == status, what
                error = response.json()["error"]
                assert error["code"] == code and error["message"] and error["fix"], what
        assert served.call(lambda: len(served.service.engine.sessions)) == 0
        answer = requests.post(f"{served.url}/chat", json={"audio": question_b64(tmp_path)}).content
    assert wave.open(io.BytesIO(answer)).readframes(1 << 30)


def test_requests_beyond_max_sessions_get_503_while_the_others_are_answered(tmp_path):
    body = {"audio": question_b64(tmp_path)}
    with serving(max_steps=300, limits={"max_sessions": 1}) as served:
        with requests.post(f"{served.url}/chat", json=body, stream=True) as first:
            answer = first.iter_content(chunk_size=None)  # (dropping a half-read iterator closes the connection)
            next(answer)
            refused = requests.post(f"{served.url}/chat", json=body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too-many-sessions"
        assert wait_until(lambda: served.call(lambda: not served.service.engine.sessions))
        assert requests.post(f"{served.url}/v1/chat", json={"text": "hi"}).status_code == 200
