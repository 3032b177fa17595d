"""The transport-neutral session engine of a speech service: many client sessions, each a sequence of turns
through one pipeline. A transport (MQTT today, HTTP later) parses its wire messages and calls `Session`
methods; they check the message against the session's state and the service limits, and return the pipeline
events to feed (or raise ProtocolError with a stable `code` the transport sends back to the client).

    engine = SessionEngine(Limits(max_sessions=8))
    session = engine.open("kitchen/7f3a", site="kitchen")  # ProtocolError "too-many-sessions" when full
    events = session.audio_start(rate=16000, width=2, channels=1)   # [TurnStart, AudioStart]
    events = session.audio_chunk(turn=0, seq=0, pcm=b"...")         # [AudioChunk]
    events = session.audio_stop()                                   # [AudioStop, TurnEnd]
    engine.reap(now) -> sessions idle longer than Limits.session_idle_s (feed Cancel for each)

A session has at most one turn being *received* at a time (audio-start .. audio-stop); the answer of a turn
may still be streaming when the next one starts (the pipeline keeps a session's events in order).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from omnivox.core.errors import InputError
from omnivox.core.runtime.events import (
    AudioChunk,
    AudioStart,
    AudioStop,
    Cancel,
    Event,
    Interruption,
    TextIn,
    TurnEnd,
    TurnStart,
    check_audio_format,
)


class ProtocolError(InputError):
    """A client message the service refuses; `code` is the kebab-case name sent back in the `error` event."""

    def __init__(self, code: str, problem: str, fix: str | None = None, *, turn: int | None = None):
        super().__init__(problem, fix)
        self.code, self.turn = code, turn
        self.dropped_turn = False  # the turn was fed to the pipeline and must be ended there (reason "error")


def json_object(raw: bytes, *, code: str, subject: str, fix: str) -> dict:
    """`raw` parsed as a JSON object; else ProtocolError(`code`) saying what `subject` (e.g. "the request
    body") holds instead."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(code, f"{subject} is not UTF-8 JSON ({exc})", fix) from None
    if not isinstance(data, dict):
        raise ProtocolError(code, f"{subject} is JSON {type(data).__name__}, not an object", fix)
    return data


@dataclass
class Limits:
    """Per-worker limits; every violation is a ProtocolError on the offending session only."""

    max_sessions: int = 32  # concurrent sessions per worker
    max_chunk_bytes: int = 64_000  # one audio chunk (2 s of 16 kHz s16le mono)
    max_turn_s: float = 30.0  # seconds of audio in one turn
    max_text_chars: int = 2_000  # one text question
    max_messages_per_s: float = 200.0  # per site, averaged over a burst of 2 s
    session_idle_s: float = 60.0  # a session without messages for this long is reaped

    @classmethod
    def from_mapping(cls, values: dict) -> Limits:
        from omnivox.core.errors import ConfigError

        known = set(cls.__dataclass_fields__)
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"limits.{key}: unknown limit", f"valid limits: {', '.join(sorted(known))}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"limits.{key}: expected a positive number, got {value!r}")
        return cls(**values)


@dataclass
class _Receiving:
    """The turn whose input is arriving: its audio format, next expected sequence number, audio so far."""

    turn: int
    rate: int
    width: int
    channels: int
    next_seq: int = 0
    audio_s: float = 0.0


@dataclass
class Session:
    """One client conversation. `id` is the pipeline's session_id; turns are numbered from 0."""

    id: str
    site: str
    limits: Limits
    next_turn: int = 0
    receiving: _Receiving | None = None
    open_turns: set[int] = field(default_factory=set)  # turns fed to the pipeline whose TurnEnd is not back
    last_seen: float = field(default_factory=time.monotonic)

    def _ids(self, turn: int) -> dict:
        return {"session_id": self.id, "turn_id": turn}

    def _new_turn(self, turn: int | None) -> int:
        """The id of a new turn: the client's (`turn`, which must be >= every earlier one) or the next."""
        if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool) or turn < self.next_turn):
            raise ProtocolError("bad-turn", f"turn id {turn!r} is not an integer >= {self.next_turn}",
                                "number turns upwards (or leave the id out and take the service's)")
        if self.receiving is not None:
            raise ProtocolError("turn-in-progress", f"turn {self.receiving.turn} is still receiving audio",
                                "send audio-stop (or interrupt) before starting another turn", turn=turn)
        turn = self.next_turn if turn is None else turn
        self.next_turn = turn + 1
        self.open_turns.add(turn)
        return turn

    def audio_start(self, rate: int, width: int, channels: int, turn: int | None = None) -> list[Event]:
        """A spoken turn begins (`turn`: the client's id for it, else the next); the format holds for all
        its chunks."""
        try:
            check_audio_format(rate, width, channels)
        except InputError as exc:
            raise ProtocolError("bad-audio-format", exc.problem, exc.fix, turn=turn) from None
        turn = self._new_turn(turn)
        self.receiving = _Receiving(turn, rate, width, channels)
        return [TurnStart(**self._ids(turn)), AudioStart(rate=rate, width=width, channels=channels,
                                                         **self._ids(turn))]

    def audio_chunk(self, turn: int, seq: int, pcm: bytes) -> list[Event]:
        """Chunk `seq` (0, 1, ... within the turn) of turn `turn`'s audio."""
        r = self.receiving
        if r is None or r.turn != turn:
            raise ProtocolError("audio-without-start", f"an audio chunk of turn {turn} arrived, but "
                                + ("no turn is receiving audio" if r is None else f"turn {r.turn} is"),
                                "send audio-start (with rate, width, channels) first")
        if len(pcm) > self.limits.max_chunk_bytes:
            raise self._drop(ProtocolError("chunk-too-large", f"audio chunk of {len(pcm)} bytes exceeds the "
                                           f"limit of {self.limits.max_chunk_bytes}",
                                           "send smaller chunks (e.g. 100 ms each)"))
        if seq != r.next_seq:
            what = "lost" if seq > r.next_seq else "reordered or repeated"
            raise self._drop(ProtocolError("sequence-gap", f"audio chunk seq {seq}, expected {r.next_seq} "
                                           f"(chunks {what})", "number chunks 0, 1, 2, ... from audio-start; "
                                           "the turn was dropped, start a new one"))
        frame = r.width * r.channels
        if len(pcm) % frame:
            raise self._drop(ProtocolError("bad-audio-format", f"audio chunk of {len(pcm)} bytes is not whole "
                                           f"frames of {r.channels} x {r.width}-byte samples",
                                           "send whole frames in the format given at audio-start"))
        r.next_seq += 1
        r.audio_s += len(pcm) / frame / r.rate
        if r.audio_s > self.limits.max_turn_s:
            raise self._drop(ProtocolError("turn-too-long", f"the turn exceeds {self.limits.max_turn_s:g} s "
                                           "of audio", "send shorter questions (end the turn with audio-stop)"))
        return [AudioChunk(audio=pcm, rate=r.rate, width=r.width, channels=r.channels, **self._ids(r.turn))]

    def audio_stop(self) -> list[Event]:
        r = self.receiving
        if r is None:
            raise ProtocolError("audio-without-start", "audio-stop arrived outside a turn",
                                "send audio-start and chunks first")
        self.receiving = None
        return [AudioStop(**self._ids(r.turn)), TurnEnd(reason="done", **self._ids(r.turn))]

    def text(self, text: str, turn: int | None = None) -> list[Event]:
        """A typed turn (tasks T1A2 / T1T2)."""
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad-text", "the text question is empty or not a string",
                                'send {"text": "your question"}', turn=turn)
        if len(text) > self.limits.max_text_chars:
            raise ProtocolError("text-too-long", f"the text has {len(text)} characters, the limit is "
                                f"{self.limits.max_text_chars}", "send a shorter question", turn=turn)
        turn = self._new_turn(turn)
        ids = self._ids(turn)
        return [TurnStart(**ids), TextIn(text, **ids), TurnEnd(reason="done", **ids)]

    def interrupt(self) -> list[Event]:
        """Interrupt every unfinished turn: its work stops within one LM step, its TurnEnd says interrupted.
        A turn still receiving audio is closed here."""
        events: list[Event] = [Interruption(**self._ids(turn)) for turn in sorted(self.open_turns)]
        if self.receiving is not None:
            ids = self._ids(self.receiving.turn)
            events += [AudioStop(**ids), TurnEnd(reason="interrupted", **ids)]
            self.receiving = None
        return events

    def turn_ended(self, turn: int) -> None:
        """The pipeline ended `turn` (its TurnEnd reached the transport)."""
        self.open_turns.discard(turn)

    def _drop(self, error: ProtocolError) -> ProtocolError:
        """Stop receiving the current turn (it ends with an error); returns `error` to raise."""
        error.turn, error.dropped_turn = self.receiving.turn, True
        self.open_turns.discard(self.receiving.turn)
        self.receiving = None
        return error


class SessionEngine:
    """The sessions of one worker, the limits, per-site rate limiting and idle reaping."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.sessions: dict[str, Session] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # site -> (tokens, last refill time)

    def open(self, session_id: str, site: str) -> Session:
        if session_id in self.sessions:
            return self.sessions[session_id]
        if len(self.sessions) >= self.limits.max_sessions:
            raise ProtocolError("too-many-sessions", f"this worker serves its limit of {self.limits.max_sessions} "
                                "sessions", "retry later, or add a worker")
        session = self.sessions[session_id] = Session(session_id, site, self.limits)
        return session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def close(self, session_id: str) -> list[Event]:
        """End a session: the Cancel to feed (drops its queued work and per-turn state in every stage)."""
        session = self.sessions.pop(session_id, None)
        return [] if session is None else [Cancel(session_id=session_id, turn_id=0)]

    def admit(self, site: str, now: float | None = None) -> None:
        """Count one message of `site`; ProtocolError "rate-limited" beyond Limits.max_messages_per_s."""
        now = time.monotonic() if now is None else now
        rate = self.limits.max_messages_per_s
        tokens, last = self._buckets.get(site, (2.0 * rate, now))
        tokens = min(2.0 * rate, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[site] = (tokens, now)
            raise ProtocolError("rate-limited", f"site {site!r} sends more than {rate:g} messages per second",
                                "send fewer, larger audio chunks; the message was dropped")
        self._buckets[site] = (tokens - 1.0, now)

    def touch(self, session: Session, now: float | None = None) -> None:
        session.last_seen = time.monotonic() if now is None else now

    def idle(self, now: float | None = None) -> list[str]:
        """Sessions without a message for Limits.session_idle_s (close them)."""
        now = time.monotonic() if now is None else now
        return [s.id for s in self.sessions.values() if now - s.last_seen > self.limits.session_idle_s]
