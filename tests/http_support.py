"""Helpers of the HTTP tests: the tiny omnivox HTTP pipeline (tiny whisper encoder, tiny random LM, tiny SNAC)
served in-process on a free loopback port from a background thread, so plain `requests` clients (as upstream
Mini-Omni's Streamlit and Gradio front ends) and a real browser can talk to it; a self-signed certificate made
by openssl; and the kinds of bad input of docs/http_api.md (`BAD_INPUTS`, one request per row of its table)
against the server settings of `EDGE_SERVER`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import http.client
import json
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from mqtt_support import TINY_SNAC, write_question

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    url: str
    pipeline: object
    loop: asyncio.AbstractEventLoop

    @property
    def service(self):
        return self.pipeline.stages[0].service

    @property
    def lm(self):
        return next(stage for stage in self.pipeline.stages if stage.name == "lm")

    def call(self, fn):
        """Run `fn()` on the server's event loop and return its result (to read state safely)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)


def tiny_http_stages(*, max_steps: int = 24, limits: dict | None = None, **http):
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput

    kit = SpeechKit.random(seed=1, speak=False)  # a tiny SNAC instead of the kit's full-size one
    return [HttpAudioInput(port=0, limits=limits, **http), EncoderStage(kit.encoder),
            LMStage("text-delay", model=kit.model, task="A1A2", max_steps=max_steps, name="lm"),
            CodecStage(exact_tiny_snac()), HttpAudioOutput()]


def exact_tiny_snac():
    """The tiny SNAC with the lookahead its receptive field asks for (from the start): its stream decode equals whole
    decode, so an answer's bytes do not depend on how the codec stage grouped its frames (by timing, once its audio
    is ahead of playback). The tests that compare two answers byte for byte need that; this tiny codec reaches 8.5
    frames to the right, the default lookahead is 2."""
    from omnivox.plugins.snac_codec import SnacCodec

    codec = SnacCodec.load(config=TINY_SNAC, seed=0)
    frames = -(-codec.right_reach() // codec.grid.samples_per_frame)
    return SnacCodec(codec.model, lookahead_frames=frames, first_lookahead_frames=None)


@contextlib.contextmanager
def serving(stages: list | None = None, **kwargs):
    """The tiny HTTP pipeline (or `stages`, an HTTP input first) running in a thread; yields a Served (its `url` is
    http://127.0.0.1:<port>)."""
    from omnivox.core.runtime.pipeline import Pipeline

    loop = asyncio.new_event_loop()
    pipeline = Pipeline(stages or tiny_http_stages(**kwargs))
    ready = threading.Event()

    async def main():
        runner = asyncio.create_task(pipeline.run())
        while pipeline.stages[0].service is None or pipeline.stages[0].service.port is None:
            if runner.done():
                runner.result()
            await asyncio.sleep(0.01)
        ready.set()
        await runner

    def thread_main():
        asyncio.set_event_loop(loop)
        task = loop.create_task(main())
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=thread_main, daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the HTTP pipeline did not start within 60 s")
    try:
        yield Served(pipeline.stages[0].service.url, pipeline, loop)
    finally:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(30)


def question_b64(folder: Path, seconds: float = 0.6, rate: int = 16000) -> str:
    """What upstream's clients post in `audio`: base64 of a WAV file."""
    path = write_question(folder / "question.wav", seconds=seconds, rate=rate)
    return base64.b64encode(path.read_bytes()).decode()


# ---- HTTPS ---------------------------------------------------------------------------------------------------
@dataclass
class Certificate:
    cert: Path
    key: Path
    spki: str  # base64 SHA-256 of the public key: what chromium's --ignore-certificate-errors-spki-list takes


def self_signed(folder: Path, name: str = "omnivox.test") -> Certificate:
    """A self-signed certificate (EC P-256) for DNS `name` and 127.0.0.1, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], check=True,
                            capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=public, check=True,
                         capture_output=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-binary"], input=der, check=True,
                            capture_output=True).stdout
    return Certificate(cert, key, base64.b64encode(digest).decode())


# ---- the kinds of bad input (docs/http_api.md) ---------------------------------------------------------------
EDGE_TOKEN = "edge-7f3a9c"
# the server the table's statuses hold for: two slots, one per client address (stalled uploads fill them), short
# limits
EDGE_SERVER = {"limits": {"max_sessions": 2, "max_sessions_per_site": 1, "max_turn_s": 2.0},
               "max_body_bytes": 250_000, "request_timeout_s": 1.0, "token": EDGE_TOKEN}
ROW = re.compile(r"^\| `(http-[a-z0-9-]+)` \| (.+?) \| (\d{3}) \| `([a-z0-9-]+)` \|$")


def bad_input_table() -> dict[str, tuple[int, str]]:
    """The rows of docs/http_api.md's table of bad input: id -> (status, error code), in the document's order."""
    rows = [ROW.match(line) for line in (ROOT / "docs" / "http_api.md").read_text().splitlines()]
    return {row[1]: (int(row[3]), row[4]) for row in rows if row}


@dataclass
class Edge:
    """A server run with EDGE_SERVER's settings: its URL, the CA file to trust (or None for plain HTTP), a folder
    for WAV files and `idle()`, which waits until no request holds a session slot."""

    url: str
    ca: Path | None
    folder: Path
    idle: Callable[[], None]

    def post(self, path: str, *, token: str | None = EDGE_TOKEN, headers: dict | None = None, **kwargs):
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.request("POST", path, headers=headers, **kwargs)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, self.url + path, verify=str(self.ca) if self.ca else True, timeout=30,
                                **kwargs)

    def wav(self, seconds: float = 0.6) -> bytes:
        return write_question(self.folder / f"q{seconds}.wav", seconds=seconds).read_bytes()

    def audio(self, seconds: float = 0.6) -> str:
        return base64.b64encode(self.wav(seconds)).decode()

    @contextlib.contextmanager
    def stalled_upload(self, source: str = "127.0.0.1"):
        """A POST /v1/chat from address `source` that declares a 1,000-byte body, sends 10 bytes, then nothing;
        yields a function that reads its answer as (status, JSON body)."""
        parts = urlsplit(self.url)
        sock = socket.create_connection((parts.hostname, parts.port), timeout=30, source_address=(source, 0))
        if parts.scheme == "https":
            sock = ssl.create_default_context(cafile=str(self.ca)).wrap_socket(sock, server_hostname=parts.hostname)
        with sock:
            sock.sendall(f"POST /v1/chat HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {EDGE_TOKEN}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"audio\": ".encode())

            def answer() -> tuple[int, dict]:
                response = http.client.HTTPResponse(sock)
                response.begin()
                return response.status, json.loads(response.read())

            yield answer


def wav_header(rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1, frames: int = 1600) -> bytes:
    """A WAV file of silence declaring this format (whatever its values)."""
    data = bytes(frames * channels * bits // 8)
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
            + b"data" + struct.pack("<I", len(data)) + data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def _client_quota(edge: Edge) -> tuple[int, str]:
    with edge.stalled_upload():
        time.sleep(0.2)  # its headers are in: it holds 127.0.0.1's one slot
        refused = edge.post("/v1/chat", json={"text": "hello"})
    edge.idle()
    return _error(refused)


def _too_many_sessions(edge: Edge) -> tuple[int, str]:
    with edge.stalled_upload(), edge.stalled_upload(source="127.0.0.2"):
        time.sleep(0.2)  # both slots are held
        refused = edge.post("/v1/chat", json={"text": "hello"})
    edge.idle()
    return _error(refused)


def _slow_upload(edge: Edge) -> tuple[int, str]:
    with edge.stalled_upload() as answer:
        status, body = answer()
    return status, body["error"]["code"]


def _result_bad_name(edge: Edge) -> tuple[int, str]:
    answered = edge.post("/v1/chat", json={"text": "hi", "conversation": "c1"})  # turn 0 of c1
    assert answered.status_code == 200, answered.text
    edge.idle()
    return _error(edge.post("/v1/chat", json={"text": "hi", "conversation": "c1", "action_results": [
        {"turn": 0, "name": "no spaces", "result": True}]}))


# id -> the request of that row, answered as (status, error code)
BAD_INPUTS: dict[str, Callable[[Edge], tuple[int, str]]] = {
    "http-no-token": lambda e: _error(e.post("/v1/chat", token=None, json={"text": "hello"})),
    "http-bad-token": lambda e: _error(e.post("/v1/chat", token="not-the-token", json={"text": "hello"})),
    "http-not-bearer": lambda e: _error(e.post("/v1/chat", token=None, json={"text": "hello"},
                                               headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="})),
    "http-token-not-utf8": lambda e: _error(e.post("/v1/chat", token=None, json={"text": "hello"},
                                                   headers={"Authorization": b"Bearer edge-7f3a9\xff"})),
    "http-empty-bearer": lambda e: _error(e.post("/v1/chat", token=None, json={"text": "hello"},
                                                 headers={"Authorization": "Bearer "})),
    "http-bad-path": lambda e: _error(e.post("/v2/chat", json={"text": "hello"})),
    "http-bad-method": lambda e: _error(e.request("GET", "/chat", headers={"Authorization": f"Bearer {EDGE_TOKEN}"})),
    "http-put": lambda e: _error(e.request("PUT", "/v1/chat", json={"text": "hello"},
                                           headers={"Authorization": f"Bearer {EDGE_TOKEN}"})),
    "http-post-page": lambda e: _error(e.post("/", json={"text": "hello"})),
    "http-form-upload": lambda e: _error(e.post("/chat", files={"audio": ("q.wav", e.wav(), "audio/wav")})),
    "http-raw-wav": lambda e: _error(e.post("/chat", data=e.wav(), headers={"Content-Type": "audio/wav"})),
    "http-no-body": lambda e: _error(e.post("/chat")),
    "http-not-json": lambda e: _error(e.post("/chat", data=b"audio=please")),
    "http-not-utf8": lambda e: _error(e.post("/chat", data=b"\xff\xfe{\"audio\": 1}")),
    "http-json-not-object": lambda e: _error(e.post("/chat", json=["audio"])),
    "http-deep-json": lambda e: _error(e.post("/v1/chat", data=b"[" * 100_000)),
    "http-bad-gzip": lambda e: _error(e.post("/v1/chat", data=b'{"text": "hi"}', headers={"Content-Encoding": "gzip"})),
    "http-gzip-bomb": lambda e: _error(e.post("/v1/chat", data=gzip.compress(b'{"text": "' + b"a" * 20_000_000 + b'"}'),
                                              headers={"Content-Encoding": "gzip"})),
    "http-body-too-large": lambda e: _error(e.post("/chat", json={"audio": e.audio(), "padding": "x" * 300_000})),
    "http-missing-audio": lambda e: _error(e.post("/chat", json={"stream_stride": 4})),
    "http-audio-not-string": lambda e: _error(e.post("/chat", json={"audio": 42})),
    "http-audio-empty": lambda e: _error(e.post("/v1/chat", json={"audio": ""})),
    "http-text-to-chat": lambda e: _error(e.post("/chat", json={"text": "hello"})),
    "http-not-base64": lambda e: _error(e.post("/chat", json={"audio": "this is not base64!"})),
    "http-data-url": lambda e: _error(e.post("/chat", json={"audio": "data:audio/wav;base64," + e.audio()})),
    "http-not-wav": lambda e: _error(e.post("/chat", json={"audio": _b64(b"hello, not a wav file")})),
    "http-truncated-wav": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header()[:20])})),
    "http-wav-no-samples": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header(frames=0))})),
    "http-wav-huge-rate": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header(rate=4_000_000_000))})),
    "http-wav-1-hz": lambda e: _error(e.post("/v1/chat", json={"audio": _b64(wav_header(rate=1, frames=1))})),
    "http-wav-7-channels": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header(channels=7))})),
    "http-wav-24-bit": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header(bits=24))})),
    "http-wav-8-bit": lambda e: _error(e.post("/chat", json={"audio": _b64(wav_header(bits=8))})),
    "http-turn-too-long": lambda e: _error(e.post("/chat", json={"audio": e.audio(seconds=3.0)})),
    "http-bad-wav-header": lambda e: _error(e.post("/chat", json={"audio": e.audio(), "wav_header": "no"})),
    "http-text-not-string": lambda e: _error(e.post("/v1/chat", json={"text": 5})),
    "http-text-empty": lambda e: _error(e.post("/v1/chat", json={"text": "   "})),
    "http-text-too-long": lambda e: _error(e.post("/v1/chat", json={"text": "why " * 501})),
    "http-lone-surrogate": lambda e: _error(e.post("/v1/chat", data=b'{"text": "\\ud800"}')),
    "http-client-quota": _client_quota,
    "http-too-many-sessions": _too_many_sessions,
    "http-slow-upload": _slow_upload,
    "http-bad-conversation": lambda e: _error(e.post("/v1/chat", json={"text": "hi", "conversation": "no spaces"})),
    "http-context-not-string": lambda e: _error(e.post("/v1/chat", json={"text": "hi", "context": 5})),
    "http-context-too-long": lambda e: _error(e.post("/v1/chat", json={"text": "hi", "context": "a" * 2001})),
    "http-reset-not-bool": lambda e: _error(e.post("/v1/chat", json={"text": "hi", "conversation": "c1",
                                                                     "reset": "yes"})),
    "http-results-without-conversation": lambda e: _error(e.post("/v1/chat", json={"text": "hi",
                                                                                   "action_results": []})),
    "http-results-not-list": lambda e: _error(e.post("/v1/chat", json={"text": "hi", "conversation": "c1",
                                                                       "action_results": {"turn": 0}})),
    "http-result-bad-turn": lambda e: _error(e.post("/v1/chat", json={
        "text": "hi", "conversation": "c-new", "action_results": [{"turn": 3, "name": "light", "result": True}]})),
    "http-result-bad-name": _result_bad_name,
}


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll `condition` every 20 ms until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
