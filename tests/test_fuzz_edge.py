"""Fuzz (hypothesis) of the network edge of `omnivox serve` (issue 22): random MQTT control messages, random
binary audio headers and chunks, random session names, random WAV files to POST /chat and random JSON to POST
/v1/chat, against ONE real mosquitto and ONE `omnivox serve --checkpoint random --http` subprocess per module.

Every reply must be a named error (an `error` event, or a 4xx JSON body, whose `code` the documents list, and
whose text names no internal class) or a normal answer, never a crash or a 5xx; after all examples a good
question is answered on both transports, and the server's log holds no traceback at ERROR level.
OMNIVOX_FUZZ_EXAMPLES=N runs N examples per strategy (default 100).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import struct
from collections import Counter

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mqtt_support import DOCS, Mosquitto, RawDevice, ServeProcess, documented_error_codes, write_question

from omnivox.plugins.mqtt import protocol as wire

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("OMNIVOX_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
REPLY_TIMEOUT_S = 20.0  # a barrier reply later than this: the server is stuck (or dead)
V1 = b'{"version":1}'
INTERNAL = re.compile(r"\b(AudioChunk|AudioData|AudioOut|AudioStart|AudioStop|CodecFrame|ControlEvent|DataEvent|"
                      r"Interruption|SystemEvent|TextIn|TextToken|TurnEnd|TurnStart|VoiceStarted|VoiceStopped|"
                      r"[A-Z][A-Za-z]*(Error|Exception))\b")
HTTP_EVENTS = {"turn-start", "text", "audio", "action", "action-warning", "error", "metrics", "turn-end"}


class Edge:
    """The servers under fuzz and what the examples saw."""

    def __init__(self, folder):
        self.broker = Mosquitto(folder).start()
        self.server = ServeProcess(folder, self.broker.url, worker="fuzz", max_steps=8)
        try:
            self.server.start()
        except Exception:
            self.broker.kill()
            raise
        self.device = RawDevice(self.broker.port, "fuzzer")
        self.mqtt_codes = documented_error_codes(DOCS / "mqtt_protocol.md")
        self.names = itertools.count()
        self.broken: str | None = None  # the example after which the server stopped answering
        self.http_statuses: Counter = Counter()

    def close(self) -> None:
        self.device.close()
        self.server.stop()
        self.broker.kill()

    def site(self, prefix: str) -> str:
        """Examples take turns among 8 sites: the per-site error budget (max_errors_per_s) suppresses few replies."""
        return f"{prefix}{next(self.names) % 8}"

    def http_codes(self) -> set[str]:
        return documented_error_codes(DOCS / "http_api.md")

    # ---- MQTT -------------------------------------------------------------------------------------------
    def converse(self, site: str, messages: list[tuple[str, bytes]], what: str) -> list[tuple[str, dict | bytes]]:
        """Open a fresh session of `site`, publish `messages` ((event, payload)) on its in/ topics, end it and
        wait for session-ended (the barrier: the worker handles a session's messages in order); the replies."""
        self.alive(what)
        session = f"fz{next(self.names)}"
        base, device = f"omnivox/{site}/{session}", self.device
        mark = device.mark()
        device.publish(f"{base}/in/session-start", V1)
        first = device.wait_for(lambda t, p: t.startswith(f"{base}/out/"), mark, REPLY_TIMEOUT_S)
        self.barrier(first, f"session-start before {what}")
        if not first[0].endswith("/session-started"):  # refused (rate-limited, quota): a named error
            return self.check_replies(device.since(mark, f"{base}/out/"), what)
        for event, payload in messages:
            device.publish(f"{base}/in/{event}", payload, qos=0 if event == "audio-chunk" else 1)
        device.publish(f"{base}/in/session-end", V1)
        ended = device.wait_for(lambda t, p: t == f"{base}/out/session-ended", mark, REPLY_TIMEOUT_S)
        self.barrier(ended, what)
        return self.check_replies(device.since(mark, f"{base}/out/"), what)

    def alive(self, what: str) -> None:
        if self.broken:
            raise AssertionError(f"the server stopped answering after an earlier example: {self.broken}")
        if not self.server.alive():
            self.broken = f"(the process exited before {what})"
            raise AssertionError(f"omnivox serve exited:\n{self.server.log()[-3000:]}")

    def barrier(self, reply, what: str) -> None:
        if reply is None:
            self.broken = what
            raise AssertionError(f"no reply within {REPLY_TIMEOUT_S:g} s after {what}; server log:\n"
                                 f"{self.server.log()[-3000:]}")

    def check_replies(self, replies, what: str) -> list[tuple[str, dict | bytes]]:
        """Every reply is a known out event; errors carry a documented code and name no internal class."""
        seen = []
        for topic_name, payload, _ in replies:
            event = topic_name.rsplit("/", 1)[1]
            assert event in wire.OUT_EVENTS, f"unknown reply event {event!r} to {what}"
            if event in wire.BINARY_EVENTS:
                assert payload[:4] == wire.AUDIO_MAGIC, f"bad audio header in a reply to {what}"
                seen.append((event, payload))
                continue
            data = json.loads(payload)
            assert data.get("version") == 1 and data.get("event") == event, (what, data)
            if event == "error":
                check_error(data, self.mqtt_codes, what)
            seen.append((event, data))
        return seen


def check_error(data: dict, codes: set[str], what: str) -> None:
    assert data.get("code") in codes, f"error code {data.get('code')!r} (not in the document) for {what}: {data}"
    assert isinstance(data.get("message"), str) and data["message"], (what, data)
    for key in ("message", "fix"):
        found = INTERNAL.search(str(data.get(key) or ""))
        assert found is None, f"the error's {key} names the internal class {found.group(0)!r} ({what}): {data}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    edge = Edge(tmp_path_factory.mktemp("fuzz"))
    yield edge
    edge.close()


class Blob(bytes):
    """A payload that hypothesis (and the failure messages) print shortened."""

    def __repr__(self) -> str:
        return f"Blob({bytes(self[:80])!r}{'...' if len(self) > 80 else ''}, {len(self)} bytes)"


def describe(messages) -> str:
    return "; ".join(f"{event} {payload[:120]!r}{'...' if len(payload) > 120 else ''} ({len(payload)} bytes)"
                     for event, payload in messages)


# ---- strategies ---------------------------------------------------------------------------------------------
TOPIC_SAFE = st.characters(blacklist_characters="/+#", blacklist_categories=("Cc", "Cs", "Cn"))
NASTY_INTS = st.one_of(
    st.integers(-2**70, 2**70),
    st.sampled_from([0, -1, 1, 2, 3, 4, 8, 255, 7999, 8000, 16000, 48000, 48001, 96000, 2**31 - 1, 2**31, 2**32 - 1,
                     2**32, 2**53 + 1, 2**63, 2**64, 10**30, 16000048000]))
SCALARS = st.one_of(st.none(), st.booleans(), NASTY_INTS, st.floats(), st.text(max_size=40),
                    st.sampled_from(["", " ", "\n", "x" * 2001, "é" * 1000, "\ud800", "NaN", "16000"]))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
FIELDS = ("turn", "rate", "width", "channels", "text", "event", "worker", "reason", "seq", "session", "site",
          "context", "name", "result", "index")
VERSIONS = st.one_of(st.just(1), st.sampled_from([0, 2, -1, "1", 1.5, None, [1], {"v": 1}, 2**64, 1e999]))
CONTROL = st.builds(lambda version, fields, extra, keep: {**({"version": version} if keep else {}), **extra, **fields},
                    VERSIONS, st.dictionaries(st.sampled_from(FIELDS), st.one_of(NASTY_INTS, JSON_VALUES), max_size=5),
                    st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=2), st.booleans())
SPECIAL = [b"", b" ", b"null", b"[]", b"{}", b'"x"', b"1", b"1e999", b"[" * 100_000, b"{" * 50_000,
           b'{"a":' * 10_000, b'{"version":1', b'\xef\xbb\xbf{"version":1}', b'{"version":1}\x00',
           '{"version":1}'.encode("utf-16"), b'{"version":1,"version":2}', b"\xff\xfe\xfd",
           b'{"version":1,"text":"' + b"a" * 300_000 + b'"}', b'{"version":1,"turn":1e400}',
           b'{"version":1,"turn":' + b"9" * 5000 + b"}", b'{"version": NaN, "turn": Infinity}']


def encode(value, how: str) -> bytes:
    text = json.dumps(value, ensure_ascii=how == "ascii")
    return text.encode("utf-8", "surrogatepass") if how != "latin" else text.encode("latin-1", "replace")


PAYLOADS = st.one_of(st.builds(encode, CONTROL, st.sampled_from(["ascii", "utf8", "latin"])),
                     st.builds(encode, JSON_VALUES, st.just("ascii")),
                     st.binary(max_size=64), st.sampled_from(SPECIAL)).map(Blob)
CONTROL_EVENTS = ("session-start", "audio-start", "audio-stop", "text", "interrupt", "session-end", "context", "reset",
                  "action-result")
EVENTS = st.one_of(st.sampled_from(CONTROL_EVENTS), st.just("audio-chunk"),
                   st.text(TOPIC_SAFE, min_size=1, max_size=20).filter(lambda e: e not in wire.IN_EVENTS))


# ---- MQTT control messages ------------------------------------------------------------------------------------
@FUZZ
@given(messages=st.lists(st.tuples(EVENTS, PAYLOADS), min_size=1, max_size=3))
@example(messages=[("text", Blob(b"[" * 100_000))])
@example(messages=[("audio-start", b'{"version":1,"turn":0,"rate":16000048000}'),
                   ("audio-chunk", wire.encode_audio(0, 0, b"\0" * 3200)),
                   ("audio-stop", b'{"version":1,"turn":0}')])
@example(messages=[("audio-start", b'{"version":1,"turn":4294967296,"rate":16000}')])
@example(messages=[("audio-start", b'{"version":1,"turn":0,"rate":16000}'), ("audio-stop", b'{"version":1}')])
@example(messages=[("text", b'{"version":1,"turn":0,"text":"\\ud800\\udfff\\ud800"}')])
@example(messages=[("", V1), ("session-start", b"")])
def test_control_messages_get_named_errors(edge, messages):
    replies = edge.converse(edge.site("fuzzctl"), messages, describe(messages))
    assert sum(event == "session-ended" for event, _ in replies) >= 1


# ---- binary audio headers and chunks -------------------------------------------------------------------------
FORMATS = st.tuples(st.sampled_from([8000, 16000, 44100, 48000]), st.sampled_from([2, 4]), st.sampled_from([1, 2]))
FILLS = [b"\0", b"\x7f\xff", b"\xff", b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", struct.pack("<f", 3e38),
         struct.pack("<f", -1e-45), b"\x01\x02\x03"]
CHUNKS = st.one_of(
    st.tuples(st.just("header"), st.sampled_from([wire.AUDIO_MAGIC, b"OVA\x02", b"OVB\x01", b"ova\x01", b"\0" * 4]),
              st.sampled_from(["this", "next", "other"]) | st.integers(0, 2**32 - 1),
              st.sampled_from(["next", "next", "same", "skip", "back"]) | st.integers(0, 2**32 - 1),
              st.integers(0, 4000) | st.sampled_from([1, 3, 63_999, 64_000, 64_001, 64_004, 200_000]),
              st.sampled_from(FILLS)),
    st.tuples(st.just("raw"), st.binary(max_size=24)),
    st.tuples(st.just("cut"), st.integers(0, 11)))


def chunk_bytes(spec, turn: int, seq: int) -> tuple[bytes, int]:
    """The payload of a chunk spec and the next expected seq."""
    if spec[0] == "raw":
        return spec[1], seq
    if spec[0] == "cut":
        return wire.encode_audio(turn, seq, b"")[:spec[1]], seq
    _, magic, which_turn, which_seq, length, fill = spec
    t = {"this": turn, "next": turn + 1, "other": turn + 7}.get(which_turn, which_turn)
    s = {"next": seq, "same": max(seq - 1, 0), "skip": seq + 2, "back": seq - 1}.get(which_seq, which_seq)
    pcm = (fill * (length // len(fill) + 1))[:length]
    return wire.HEADER.pack(magic, t & 0xFFFFFFFF, s & 0xFFFFFFFF) + pcm, seq + 1


@FUZZ
@given(fmt=FORMATS, chunks=st.lists(CHUNKS, min_size=1, max_size=6), stop=st.booleans(), turn=st.integers(0, 5))
@example(fmt=(48000, 4, 2), chunks=[("header", wire.AUDIO_MAGIC, "this", "next", 64_000, b"\x00\x00\xc0\x7f")],
         stop=True, turn=0)
def test_audio_headers_and_chunks_get_named_errors(edge, fmt, chunks, stop, turn):
    rate, width, channels = fmt
    messages = [("audio-start", json.dumps({"version": 1, "turn": turn, "rate": rate, "width": width,
                                            "channels": channels}).encode())]
    seq = 0
    for spec in chunks:
        payload, seq = chunk_bytes(spec, turn, seq)
        messages.append(("audio-chunk", payload))
    if stop:
        messages.append(("audio-stop", json.dumps({"version": 1, "turn": turn}).encode()))
    replies = edge.converse(edge.site("fuzzaudio"), messages, describe(messages))
    assert sum(event == "session-ended" for event, _ in replies) >= 1


# ---- session-start on random site and session names ----------------------------------------------------------
NAMES = st.one_of(st.text(TOPIC_SAFE, max_size=70), st.sampled_from(["", "a" * 64, "a" * 65, "x" * 5000, "..",
                                                                      "$SYS", " ", "é", "a b", "ok-name_1"]))


@FUZZ
@given(site=NAMES, session=NAMES, payload=st.sampled_from([V1, b"", b"{", b'{"version":2}']))
def test_session_start_on_random_names_gets_a_named_error_or_a_session(edge, site, session, payload):
    what = f"session-start on site {site[:80]!r} session {session[:80]!r} payload {payload!r}"
    edge.alive(what)
    base, device = f"omnivox/{site}/{session}", edge.device
    mark = device.mark()
    device.publish(f"{base}/in/session-start", payload)
    edge.converse("fuzzname", [], f"the barrier after {what}")  # handled after the start: its replies are in
    replies = edge.check_replies(device.since(mark, f"{base}/out/"), what)
    if any(event == "session-started" for event, _ in replies):
        ended = device.mark()
        device.publish(f"{base}/in/session-end", V1)
        edge.barrier(device.wait_for(lambda t, p: t == f"{base}/out/session-ended", ended, REPLY_TIMEOUT_S),
                     f"session-end after {what}")


# ---- HTTP ------------------------------------------------------------------------------------------------------
def wav_bytes(tag: int, channels: int, rate: int, bits: int, block: int | None, fmt_size: int, data_size: int | None,
              body: bytes, riff_size: int | None) -> bytes:
    """A WAV file with the given (possibly lying) header fields."""
    block = channels * bits // 8 if block is None else block
    fmt = struct.pack("<HHIIHH", tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits & 0xFFFF)
    fmt = (fmt + b"\0" * 24)[:min(fmt_size, 40)]  # the declared size may lie (2**31): at most 40 bytes follow
    data = b"data" + struct.pack("<I", (len(body) if data_size is None else data_size) & 0xFFFFFFFF) + body
    chunks = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size & 0xFFFFFFFF) + fmt + data
    return b"RIFF" + struct.pack("<I", (len(chunks) if riff_size is None else riff_size) & 0xFFFFFFFF) + chunks


U32 = st.sampled_from([0, 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
BODIES = st.builds(lambda n, fill: (fill * (n // len(fill) + 1))[:n],
                   st.integers(0, 8000) | st.sampled_from([1, 3, 64_001, 200_000]), st.sampled_from(FILLS))
PLAUSIBLE_WAVS = st.builds(  # well-formed but for one or two fields: often answered
    wav_bytes, tag=st.sampled_from([1, 3]), channels=st.sampled_from([1, 2]),
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]), bits=st.sampled_from([16, 32]), block=st.none(),
    fmt_size=st.just(16), data_size=st.none() | U32, body=BODIES, riff_size=st.none() | U32)
WAVS = st.builds(
    wav_bytes, tag=st.sampled_from([1, 1, 3, 0xFFFE, 0, 2, 6, 7]) | st.integers(0, 0xFFFF),
    channels=st.sampled_from([1, 1, 2, 0, 3, 8, 255, 65535]),
    rate=st.sampled_from([16000, 8000, 48000, 44100, 1, 0, 7999, 48001, 96000, 192000, 4_000_000, 2**31, 2**32 - 1])
    | st.integers(0, 2**32 - 1),
    bits=st.sampled_from([16, 16, 8, 24, 32, 64, 0, 12, 65535]),
    block=st.none() | st.integers(0, 0xFFFF), fmt_size=st.sampled_from([16, 16, 18, 40, 14, 0, 2**31]),
    data_size=st.none() | U32,
    body=BODIES, riff_size=st.none() | U32) | PLAUSIBLE_WAVS
WAVS = WAVS.map(Blob)


def post(edge, path: str, *, data: bytes, content_type: str = "application/json") -> requests.Response:
    edge.alive(f"POST {path}")
    return requests.post(edge.server.http_url + path, data=data, headers={"Content-Type": content_type},
                         timeout=REPLY_TIMEOUT_S)


def check_http(edge, response: requests.Response, path: str, what: str) -> None:
    edge.http_statuses[response.status_code] += 1
    if response.status_code == 200:
        if path == "/chat":
            assert response.headers["Content-Type"].startswith("audio/wav"), what
            assert response.content[:4] == b"RIFF" or not response.content, what
            return
        lines = [json.loads(line) for line in response.content.splitlines() if line.strip()]
        assert all(isinstance(line, dict) and line.get("event") in HTTP_EVENTS for line in lines), (what, lines)
        assert [line["event"] for line in lines].count("turn-end") == 1, (what, lines)
        for line in lines:
            if line["event"] == "error":
                check_error(line, edge.http_codes(), what)
        return
    assert 400 <= response.status_code < 500 or response.status_code == 503, \
        f"HTTP {response.status_code} for {what}: {response.text[:500]}"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), (what, body)
    check_error(body["error"], edge.http_codes(), what)


@FUZZ
@given(wav=WAVS, extra=st.dictionaries(st.sampled_from(["stream_stride", "max_tokens", "wav_header"]), JSON_VALUES))
def test_random_wav_files_to_chat_get_named_errors(edge, wav, extra):
    body = json.dumps({"audio": base64.b64encode(wav).decode(), **extra}).encode()
    check_http(edge, post(edge, "/chat", data=body), "/chat", f"a WAV with header {wav[:44]!r}, extra {extra!r}")


AUDIO_VALUES = st.one_of(JSON_VALUES, st.builds(lambda w: base64.b64encode(w).decode(), WAVS),
                         st.sampled_from(["", "====", "QUJD", "not base64!", "é"]))
V1_BODIES = st.one_of(
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["audio", "text", "stream_stride", "max_tokens", "wav_header", "conversation", "context",
                         "reset", "action_results"]) | st.text(max_size=8),
        st.one_of(JSON_VALUES, AUDIO_VALUES), max_size=4)),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
    st.binary(max_size=64), st.sampled_from(SPECIAL)).map(Blob)


@FUZZ
@given(body=V1_BODIES, content_type=st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))
@example(body=Blob(b"[" * 100_000), content_type="application/json")
@example(body=b'{"text": "' + b"\\ud800" * 10 + b'"}', content_type="application/json")
def test_random_json_to_v1_chat_gets_named_errors(edge, body, content_type):
    check_http(edge, post(edge, "/v1/chat", data=body, content_type=content_type), "/v1/chat",
               f"body {body[:200]!r} ({len(body)} bytes, {content_type})")


# ---- after the examples ---------------------------------------------------------------------------------------
def test_every_turn_of_the_fuzz_ended_at_most_once(edge):
    """Late replies (after each example's barrier) are named too, and no turn ended twice."""
    ends, events, codes = Counter(), Counter(), Counter()
    for topic_name, payload, _ in edge.device.since(0):
        if "/out/" in topic_name:
            for event, data in edge.check_replies([(topic_name, payload, 0)], f"a late reply on {topic_name}"):
                events[event] += 1
                codes[data["code"] if event == "error" else None] += 1
                if event == "turn-end":
                    ends[(topic_name.rsplit("/", 2)[0], data["turn"])] += 1
    codes.pop(None, None)
    print(f"MQTT replies during the fuzz: {dict(events)}; error codes: {dict(codes)}")
    twice = {key: count for key, count in ends.items() if count > 1}
    assert not twice, f"turns that ended more than once: {twice}"


def test_after_the_fuzz_a_good_question_is_answered_on_both_transports(edge, tmp_path):
    from omnivox.mqtt import Client

    edge.alive("the good questions")
    question = write_question(tmp_path / "q.wav")

    async def ask():
        async with Client(edge.broker.url, site="good") as client:
            session = await client.session()
            return await session.ask(wav=question, timeout=60), await session.ask(text="hello", timeout=60)

    spoken, typed = asyncio.run(ask())
    assert spoken.ok and spoken.audio, spoken.errors
    assert typed.ok and typed.audio, typed.errors
    body = json.dumps({"audio": base64.b64encode(question.read_bytes()).decode()}).encode()
    answer = post(edge, "/chat", data=body)
    assert answer.status_code == 200 and answer.content[:4] == b"RIFF" and len(answer.content) > 44
    events = post(edge, "/v1/chat", data=json.dumps({"text": "hello"}).encode())
    lines = [json.loads(line) for line in events.content.splitlines()]
    assert events.status_code == 200 and lines[-1]["event"] in ("turn-end", "metrics")
    assert any(line["event"] == "audio" for line in lines)
    print(f"HTTP statuses during the fuzz: {dict(edge.http_statuses)}")


def test_the_servers_log_has_no_traceback_at_error_level(edge):
    found = edge.server.error_tracebacks()
    assert not found, f"{len(found)} traceback(s) at ERROR level; the first:\n{found[0][:3000]}"
    warned = edge.server.warning_tracebacks()
    print(f"WARNING records with a traceback (stage failures): {len(warned)}")
