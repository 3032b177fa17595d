"""The kinds of bad MQTT input of docs/mqtt_protocol.md's table, one producer each (issue 22): how to send that
kind on a real broker with a raw device (mqtt_support.RawDevice). Used by tests/test_bad_input_catalogue.py
(each kind against a real `omnivox serve`), tests/test_soak.py (bad input mixed into good turns) and
benchmarks/bench_mqtt.py --worst-input.

A producer gets a `Probe` (one device session, started) and returns an `Expect`: where the kind's error comes
(the probe's session unless said) and the turn that must end with exactly one `turn-end` because of it (None
when no turn is involved). The expected code is the document's, never written here, so the two cannot drift:
the catalogue test asserts BAD_INPUTS and the table list the same ids.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mqtt_support import DOCS, RawDevice, documented_bad_inputs

from omnivox.plugins.mqtt import protocol as wire

MQTT_DOC = DOCS / "mqtt_protocol.md"
RATE = 16000
SPEECH = b"\x10\x00\xf0\xff" * 800  # 100 ms of 16 kHz s16le mono


def table() -> dict[str, str]:
    """docs/mqtt_protocol.md's kinds of bad input: id -> error code."""
    return documented_bad_inputs(MQTT_DOC)


@dataclass
class Expect:
    site: str | None = None  # where the error comes: another session's topic (None: the probe's)
    session: str | None = None
    turn: int | None = None  # the turn that ends (exactly once) because of the bad input
    later: bool = False  # the kind's code comes after other errors (a summary), not as the first one


@dataclass
class Probe:
    """One session of a raw device: `start()` it, publish on its in/ topics, read its out/ replies."""

    device: RawDevice
    site: str
    session: str
    turn: int = 0  # the next turn id to use
    limits: dict = field(default_factory=dict)  # session-started's limits
    extra_sessions: list = field(default_factory=list)  # (site, session) a quota kind opened besides this one
    ended: bool = False  # session-end was sent

    def topic(self, event: str, direction: str = "in", site: str | None = None, session: str | None = None) -> str:
        return wire.topic(site or self.site, session or self.session, direction, event)

    def publish(self, event: str, payload: bytes, qos: int = 1, **where) -> None:
        self.device.publish(self.topic(event, **where), payload, qos=qos)

    def send(self, event: str, **fields) -> None:
        """A control message with "version": 1 and `fields`."""
        self.publish(event, json.dumps({"version": 1, **fields}).encode())

    def chunk(self, turn: int, seq: int, pcm: bytes) -> None:
        self.publish("audio-chunk", wire.encode_audio(turn, seq, pcm), qos=0)

    def new_turn(self) -> int:
        self.turn += 1
        return self.turn - 1

    def start(self, timeout: float = 10.0, **fields) -> dict:
        """session-start; the session-started (or error) reply's JSON."""
        mark = self.device.mark()
        self.send("session-start", **fields)
        got = self.device.wait_for(lambda t, p: t.startswith(self.topic("", "out")), mark, timeout)
        assert got is not None, f"no reply to session-start of {self.site}/{self.session}"
        data = json.loads(got[1])
        if data["event"] == "session-started":
            self.limits = data["limits"]
        return data

    def end(self, timeout: float = 10.0) -> dict | None:
        mark = self.device.mark()
        self.send("session-end")
        self.ended = True
        got = self.device.wait_for(lambda t, p: t == self.topic("session-ended", "out"), mark, timeout)
        return None if got is None else json.loads(got[1])

    def audio_turn(self, chunks: list[bytes], rate: int = RATE, **fields) -> int:
        turn = self.new_turn()
        self.send("audio-start", turn=turn, rate=rate, **fields)
        for seq, pcm in enumerate(chunks):
            self.chunk(turn, seq, pcm)
        self.send("audio-stop", turn=turn)
        return turn

    def ask(self, text: str = "hello", timeout: float = 60.0) -> dict:
        """A good typed question: {turn, reason, audio (bytes of audio-out), errors}."""
        mark = self.device.mark()
        turn = self.new_turn()
        self.send("text", turn=turn, text=text)
        return self.result(turn, mark, timeout)

    def result(self, turn: int, mark: int, timeout: float = 60.0) -> dict:
        """The turn-end of `turn` (after message index `mark`) and what came for the turn before it."""
        out = self.topic("", "out")
        end = self.device.wait_for(lambda t, p: t == out + "turn-end" and json.loads(p)["turn"] == turn, mark,
                                   timeout)
        replies = self.device.since(mark, out)
        audio = sum(len(p) - 12 for t, p, _ in replies if t == out + "audio-out" and p[4:8] == struct.pack(">I", turn))
        errors = [json.loads(p) for t, p, _ in replies if t == out + "error" and json.loads(p).get("turn") == turn]
        return {"turn": turn, "reason": None if end is None else json.loads(end[1])["reason"], "audio": audio,
                "errors": errors}


def _limit(probe: Probe, name: str, default: float) -> float:
    return probe.limits.get(name, default)


# ---- the producers ------------------------------------------------------------------------------------------
def _text_payload(payload: bytes) -> Callable[[Probe], Expect]:
    def produce(p: Probe) -> Expect:
        p.publish("text", payload)
        return Expect()
    return produce


def _refused_question(event: str, **fields) -> Callable[[Probe], Expect]:
    """An audio-start or text with a valid new turn id that is refused: the turn ends (error)."""
    def produce(p: Probe) -> Expect:
        turn = p.new_turn()
        p.send(event, turn=turn, **{**({"rate": RATE} if event == "audio-start" else {}), **fields})
        return Expect(turn=turn)
    return produce


def _audio(chunks: Callable[[Probe], list[bytes]], *, width: int = 2, channels: int = 1, seqs=None):
    """A spoken turn whose audio (`chunks`, numbered `seqs` or 0, 1, ...) is refused: the turn is dropped (ends
    with error)."""
    def produce(p: Probe) -> Expect:
        turn = p.new_turn()
        p.send("audio-start", turn=turn, rate=RATE, width=width, channels=channels)
        for index, pcm in enumerate(chunks(p)):
            p.chunk(turn, index if seqs is None else seqs[index], pcm)
        p.send("audio-stop", turn=turn)
        return Expect(turn=turn)
    return produce


def _payload_too_large(p: Probe) -> Expect:
    chars = int(_limit(p, "max_text_chars", 2000))
    p.publish("text", json.dumps({"version": 1, "text": "a" * (1024 + 12 * chars + 1)}).encode())
    return Expect()


def _unknown_event(p: Probe) -> Expect:
    p.send("hello")
    return Expect()


def _bad_site(p: Probe) -> Expect:
    site = "no spaces"
    p.publish("session-start", b'{"version":1}', site=site)
    return Expect(site=site)


def _long_session(p: Probe) -> Expect:
    session = "s" * 65
    p.publish("session-start", b'{"version":1}', session=session)
    return Expect(session=session)


def _turn_back(p: Probe) -> Expect:
    p.ask()
    p.send("text", turn=p.turn - 1, text="again, with the last turn's id")
    return Expect()


def _turn_in_progress(p: Probe) -> Expect:
    turn = p.new_turn()
    p.send("audio-start", turn=turn, rate=RATE)
    p.chunk(turn, 0, SPEECH)
    p.send("audio-start", turn=turn + 1, rate=RATE)  # refused: turn + 1 is used up and ends
    p.turn = turn + 2
    p.send("audio-stop", turn=turn)
    return Expect(turn=turn + 1)


def _too_many_turns(p: Probe) -> Expect:
    """Questions beyond max_open_turns while the first ones are answered: refused; the accepted ones end first.
    The tiny model answers 8 steps in milliseconds, so under load the first answer can end before the extra
    question arrives (it is then answered: CI saw it once): the three are sent again, at most 5 times."""
    for _ in range(5):
        mark, accepted = p.device.mark(), [p.new_turn() for _ in range(int(_limit(p, "max_open_turns", 2)))]
        for turn in accepted:
            p.send("text", turn=turn, text="tell me a long story")
        refused = p.new_turn()
        p.send("text", turn=refused, text="and another one")
        for turn in accepted:
            p.result(turn, mark)
        if p.result(refused, mark)["errors"]:
            break
    return Expect(turn=refused)


def _chunk_without_start(p: Probe) -> Expect:
    p.chunk(p.turn, 0, SPEECH)
    return Expect()


def _chunk_other_turn(p: Probe) -> Expect:
    turn = p.new_turn()
    p.send("audio-start", turn=turn, rate=RATE)
    p.chunk(turn + 5, 0, SPEECH)
    p.chunk(turn, 0, SPEECH)
    p.send("audio-stop", turn=turn)
    return Expect()


def _stop_without_start(p: Probe) -> Expect:
    p.send("audio-stop", turn=p.turn)
    return Expect()


def _turn_too_long(p: Probe) -> list[bytes]:
    seconds = _limit(p, "max_turn_s", 30.0) + 0.2
    step = min(int(_limit(p, "max_chunk_bytes", 64000)), 32000) // 2 * 2
    return [b"\0" * step] * math.ceil(seconds * RATE * 2 / step)


def _text_too_long(p: Probe) -> Expect:
    return _refused_question("text", text="a" * (int(_limit(p, "max_text_chars", 2000)) + 1))(p)


def _unknown_session(p: Probe) -> Expect:
    session = f"never-{p.session}"[:64]
    p.publish("text", json.dumps({"version": 1, "turn": 0, "text": "hi"}).encode(), session=session)
    return Expect(session=session)


def _ended_session(p: Probe) -> Expect:
    p.end()
    p.send("text", turn=p.new_turn(), text="still there?")
    return Expect()


def _session_taken(p: Probe) -> Expect:
    p.publish("session-start", json.dumps({"version": 1, "client": "intruder"}).encode())
    return Expect()


def _site_quota(p: Probe) -> Expect:
    """More sessions of the probe's site than limits.max_sessions_per_site (the extra ones are refused)."""
    quota = int(_limit(p, "max_sessions_per_site", 8))
    extra = [(p.site, f"{p.session}-{i}") for i in range(quota)]  # the probe holds one already: the last is refused
    for site, name in extra:
        p.publish("session-start", b'{"version":1}', site=site, session=name)
    p.extra_sessions = extra  # ended by the caller (end_extra)
    return Expect(session=extra[-1][1])


def _too_many_sessions(p: Probe) -> Expect:
    """More sessions than limits.max_sessions, spread over sites within their quota."""
    total, quota = int(_limit(p, "max_sessions", 32)), int(_limit(p, "max_sessions_per_site", 8))
    extra = [(f"{p.site}-{i // quota}", f"{p.session}-{i}") for i in range(total)]
    for site, name in extra:
        p.publish("session-start", b'{"version":1}', site=site, session=name)
    p.extra_sessions = extra
    return Expect(site=extra[-1][0], session=extra[-1][1])


def _rate_limited(p: Probe) -> Expect:
    burst = int(2 * _limit(p, "max_messages_per_s", 200)) + 5
    turn = p.new_turn()
    p.send("audio-start", turn=turn, rate=RATE)
    for seq in range(burst):
        p.chunk(turn, seq, b"\0\0" * 16)
    p.send("audio-stop", turn=turn)
    return Expect()


def _payload_on(event: str, payload: bytes) -> Callable[[Probe], Expect]:
    def produce(p: Probe) -> Expect:
        p.publish(event, payload)
        return Expect()
    return produce


def _start_on(site: str | None = None, session: str | None = None) -> Callable[[Probe], Expect]:
    """A session-start on a bad site or session id (replied to on that topic)."""
    def produce(p: Probe) -> Expect:
        p.publish("session-start", b'{"version":1}', site=site, session=session)
        return Expect(site=site, session=session)
    return produce


def _reaped_session(p: Probe) -> Expect:
    idle = _limit(p, "session_idle_s", 60.0)
    reaped = p.device.wait_for(lambda t, payload: t == p.topic("session-ended", "out"), 0, idle + 10)
    assert reaped is not None, f"{p.site}/{p.session} was not reaped within session_idle_s + 10 s"
    p.ended = True
    p.send("interrupt")
    return Expect()


def _rate_missing(p: Probe) -> Expect:
    turn = p.new_turn()
    p.send("audio-start", turn=turn)
    return Expect(turn=turn)


def _text_missing(p: Probe) -> Expect:
    turn = p.new_turn()
    p.send("text", turn=turn)
    return Expect(turn=turn)


def _turn_ids_exhausted(p: Probe) -> Expect:
    p.turn = 2**32 - 1
    p.ask()  # the last turn id there is: answered
    p.send("text", text="and again")  # the next id would be 2**32
    return Expect()


def _stop_other_turn(p: Probe) -> Expect:
    turn = p.new_turn()
    p.send("audio-start", turn=turn, rate=RATE)
    p.chunk(turn, 0, SPEECH)
    p.send("audio-stop", turn=turn + 3)  # refused; the turn still receives
    p.send("audio-stop", turn=turn)  # and ends normally (answered)
    return Expect()


def _error_flood(p: Probe) -> Expect:
    for _ in range(int(2 * _limit(p, "max_errors_per_s", 10)) + 10):
        p.publish("text", b"{not json")
    return Expect(later=True)


def _action_result(**fields) -> Callable[[Probe], Expect]:
    """An action-result for the probe's last turn (one is asked first when it has none) with `fields`."""
    def produce(p: Probe) -> Expect:
        if p.turn == 0:
            p.ask()
        p.send("action-result", turn=p.turn - 1, **fields)
        return Expect()
    return produce


def end_extra(p: Probe) -> None:
    """End the sessions a quota kind opened besides the probe's own."""
    for site, name in p.extra_sessions:
        p.publish("session-end", b'{"version":1}', site=site, session=name)
    p.extra_sessions = []


BAD_INPUTS: dict[str, Callable[[Probe], Expect]] = {
    # the payload of a control message
    "mqtt-not-json": _text_payload(b"hello"),
    "mqtt-not-utf8": _text_payload(b'\xff\xfe{"version":1}'),
    "mqtt-json-not-object": _text_payload(b"[1]"),
    "mqtt-deep-json": _text_payload(b"[" * 20_000),  # within the size limit, beyond Python's recursion limit
    "mqtt-empty-payload": _text_payload(b""),
    "mqtt-huge-integer": _text_payload(b'{"version":1,"turn":' + b"9" * 5000 + b"}"),
    "mqtt-no-version": _text_payload(b'{"turn":0,"text":"hi"}'),
    "mqtt-wrong-version": _text_payload(b'{"version":2,"text":"hi"}'),
    "mqtt-payload-too-large": _payload_too_large,
    "mqtt-unknown-event": _unknown_event,
    # names and fields
    "mqtt-bad-site": _bad_site,
    "mqtt-long-session": _long_session,
    "mqtt-bad-client": lambda p: (p.send("session-start", client="no spaces"), Expect())[1],
    "mqtt-rate-not-integer": _refused_question("audio-start", rate="16000"),
    "mqtt-text-not-string": _refused_question("text", text=5),
    "mqtt-turn-not-integer": lambda p: (p.send("text", turn="1", text="hi"), Expect())[1],
    "mqtt-bad-end-reason": lambda p: (p.send("session-end", reason="bored"), Expect())[1],
    # the declared audio format
    "mqtt-rate-huge": _refused_question("audio-start", rate=16_000_048_000),
    "mqtt-rate-too-low": _refused_question("audio-start", rate=7999),
    "mqtt-rate-too-high": _refused_question("audio-start", rate=48001),
    "mqtt-width-3": _refused_question("audio-start", width=3),
    "mqtt-channels-3": _refused_question("audio-start", channels=3),
    "mqtt-channels-0": _refused_question("audio-start", channels=0),
    # turn ids
    "mqtt-turn-above-uint32": lambda p: (p.send("text", turn=2**32, text="hi"), Expect())[1],
    "mqtt-turn-back": _turn_back,
    "mqtt-turn-in-progress": _turn_in_progress,
    "mqtt-too-many-turns": _too_many_turns,
    # audio chunks
    "mqtt-chunk-no-header": lambda p: (p.publish("audio-chunk", b"xx", qos=0), Expect())[1],
    "mqtt-chunk-bad-magic": lambda p: (p.publish("audio-chunk", b"OVA\x02" + bytes(8) + SPEECH, qos=0), Expect())[1],
    "mqtt-chunk-without-start": _chunk_without_start,
    "mqtt-chunk-other-turn": _chunk_other_turn,
    "mqtt-stop-without-start": _stop_without_start,
    "mqtt-sequence-gap": _audio(lambda p: [SPEECH, SPEECH], seqs=[0, 5]),
    "mqtt-partial-frame": _audio(lambda p: [SPEECH + b"\0"]),
    "mqtt-chunk-too-large": _audio(lambda p: [b"\0\0" * (int(_limit(p, "max_chunk_bytes", 64000)) // 2 + 1)]),
    "mqtt-turn-too-long": _audio(_turn_too_long),
    "mqtt-float-nan": _audio(lambda p: [struct.pack("<f", math.nan) * 1600], width=4),
    "mqtt-empty-turn": _audio(lambda p: []),
    # typed questions
    "mqtt-text-empty": _refused_question("text", text="   "),
    "mqtt-text-too-long": _text_too_long,
    "mqtt-lone-surrogate": _refused_question("text", text="\ud800"),
    # sessions and limits
    "mqtt-unknown-session": _unknown_session,
    "mqtt-ended-session": _ended_session,
    "mqtt-session-taken": _session_taken,
    "mqtt-site-quota": _site_quota,
    "mqtt-too-many-sessions": _too_many_sessions,
    "mqtt-rate-limited": _rate_limited,
    "mqtt-json-null": _payload_on("interrupt", b"null"),
    "mqtt-interrupt-unknown-turn": lambda p: (p.send("interrupt", turn=4_000_000_000), Expect())[1],
    "mqtt-withdraw-without-turn": lambda p: (p.send("interrupt", withdraw=True), Expect())[1],
    "mqtt-withdraw-not-bool": lambda p: (p.send("interrupt", turn=0, withdraw="yes"), Expect())[1],
    "mqtt-version-string": _text_payload(b'{"version": "1", "text": "hi"}'),
    "mqtt-version-true": _text_payload(b'{"version": true, "text": "hi"}'),
    "mqtt-site-too-long": _start_on(site="s" * 65),
    "mqtt-bad-session": _start_on(session="s.1"),
    "mqtt-reaped-session": _reaped_session,
    "mqtt-session-taken-anonymous": _payload_on("session-start", b'{"version":1}'),
    "mqtt-rate-zero": _refused_question("audio-start", rate=0),
    "mqtt-rate-missing": _rate_missing,
    "mqtt-rate-float": _refused_question("audio-start", rate=16000.5),
    "mqtt-width-8": _refused_question("audio-start", width=8),
    "mqtt-turn-negative": lambda p: (p.send("text", turn=-1, text="hi"), Expect())[1],
    "mqtt-turn-float": lambda p: (p.send("text", turn=1.5, text="hi"), Expect())[1],
    "mqtt-turn-ids-exhausted": _turn_ids_exhausted,
    "mqtt-sequence-repeat": _audio(lambda p: [SPEECH, SPEECH], seqs=[0, 0]),
    "mqtt-float-infinity": _audio(lambda p: [struct.pack("<f", math.inf) + struct.pack("<f", 0.5) * 1599], width=4),
    "mqtt-stop-other-turn": _stop_other_turn,
    "mqtt-header-only-chunks": _audio(lambda p: [b""]),
    "mqtt-text-missing": _text_missing,
    "mqtt-error-flood": _error_flood,
    # conversations: context and action results
    "mqtt-start-context-not-string": lambda p: (p.send("session-start", context=["battery"]), Expect())[1],
    "mqtt-context-not-string": lambda p: (p.send("context", context=5), Expect())[1],
    "mqtt-context-missing": lambda p: (p.send("context"), Expect())[1],
    "mqtt-context-too-long": lambda p: (p.send("context", context="a" * (int(_limit(p, "max_text_chars", 2000)) + 1)),
                                        Expect())[1],
    "mqtt-action-result-bad-turn": lambda p: (p.send("action-result", turn=p.turn + 7, name="light", result=True),
                                              Expect())[1],
    "mqtt-action-result-bad-name": _action_result(name="no spaces", result=True),
    "mqtt-action-result-no-result": _action_result(name="light"),
}

# kinds a device can send on its own held session under any limits, and that leave the session held (the soak and
# the benchmark mix them into good turns)
SESSION_LOCAL = tuple(kind for kind in BAD_INPUTS if kind not in (
    "mqtt-bad-site", "mqtt-long-session", "mqtt-unknown-session", "mqtt-ended-session", "mqtt-site-quota",
    "mqtt-too-many-sessions", "mqtt-rate-limited", "mqtt-bad-end-reason", "mqtt-session-taken", "mqtt-bad-client",
    "mqtt-turn-too-long", "mqtt-site-too-long", "mqtt-bad-session", "mqtt-reaped-session",
    "mqtt-session-taken-anonymous", "mqtt-turn-ids-exhausted", "mqtt-error-flood"))


def wait_error(p: Probe, expect: Expect, mark: int, timeout: float = 10.0, code: str | None = None) -> dict | None:
    """The first `error` on the expected session's topic after message index `mark` (for a kind whose code comes
    `later`: the first with `code`)."""
    out = wire.topic(expect.site or p.site, expect.session or p.session, "out", "error")
    wanted = code if expect.later else None
    got = p.device.wait_for(lambda t, payload: t == out and (wanted is None or json.loads(payload)["code"] == wanted),
                            mark, timeout)
    return None if got is None else json.loads(got[1])


def turn_ends(p: Probe, turn: int, mark: int, timeout: float = 10.0) -> int:
    """How many turn-ends `turn` of the probe's session got after `mark` (waits for the first, then briefly)."""
    out = p.topic("turn-end", "out")

    def ends(t, payload):
        return t == out and json.loads(payload).get("turn") == turn

    if p.device.wait_for(ends, mark, timeout) is None:
        return 0
    time.sleep(0.2)
    return sum(ends(t, payload) for t, payload, _ in p.device.since(mark, out))
