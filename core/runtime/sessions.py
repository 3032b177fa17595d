"""The transport-neutral session engine of a speech service: many client sessions, each a sequence of turns
through one pipeline. A transport (MQTT, HTTP) parses its wire messages and calls `Session` methods; they check
the message against the session's state and the service limits, and return the pipeline events to feed (or
raise ProtocolError with a stable `code` the transport sends back to the client).

    engine = SessionEngine(Limits(max_sessions=8))
    session = engine.open("kitchen/7f3a", site="kitchen")  # ProtocolError "too-many-sessions" when full
    events = session.audio_start(rate=16000, width=2, channels=1)   # [TurnStart, AudioStart]
    events = session.audio_chunk(turn=0, seq=0, pcm=b"...")         # [AudioChunk]
    events = session.audio_stop()                                   # [VoiceStopped, AudioStop, TurnEnd]
    engine.idle(now) -> sessions idle longer than Limits.session_idle_s (close them: feed their Cancel)

check_audio_format() is the one bound on the audio formats clients may declare (every transport uses it), and
allow_error()/summaries() rate-limit a site's error replies. A session has at most one turn being *received*
at a time (audio-start .. audio-stop); the answer of a turn may still be streaming when the next one starts
(the pipeline keeps a session's events in order).
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from omnivox.core.errors import InputError
from omnivox.core.runtime.events import (
    SAMPLE_WIDTHS,
    AudioChunk,
    AudioStart,
    AudioStop,
    Cancel,
    Event,
    Interruption,
    TextIn,
    TurnEnd,
    TurnStart,
    VoiceStopped,
    Withdrawn,
)

# What a client may declare for its audio (docs/mqtt_protocol.md "Audio"): bounds a turn's work before any is done
MIN_RATE, MAX_RATE = 8_000, 48_000  # Hz; widths: events.SAMPLE_WIDTHS (2 = s16le, 4 = float32)
MAX_CHANNELS = 2
MAX_TURN_ID = 2**32 - 1  # turn ids travel in the audio header as unsigned 32-bit integers
# the binary audio frame of the MQTT and live protocols: magic b"OVA" + protocol version 1, uint32 turn, uint32 seq
AUDIO_MAGIC = b"OVA\x01"
AUDIO_HEADER = struct.Struct(">4sII")


def encode_audio(turn: int, seq: int, pcm: bytes) -> bytes:
    return AUDIO_HEADER.pack(AUDIO_MAGIC, turn & 0xFFFFFFFF, seq & 0xFFFFFFFF) + pcm


def decode_audio(payload: bytes) -> tuple[int, int, bytes]:
    """(turn, seq, pcm) of a binary audio frame; ProtocolError "bad-audio-header" for another payload."""
    if len(payload) < AUDIO_HEADER.size or payload[:4] != AUDIO_MAGIC:
        raise ProtocolError("bad-audio-header", f"audio payload does not start with the {AUDIO_HEADER.size}-byte "
                            f"header {AUDIO_MAGIC!r} + turn + seq", "prefix each chunk with b'OVA\\x01' and "
                            "big-endian uint32 turn and sequence numbers")
    _, turn, seq = AUDIO_HEADER.unpack_from(payload)
    return turn, seq, payload[AUDIO_HEADER.size:]


class ProtocolError(InputError):
    """A client message the service refuses; `code` is the kebab-case name sent back in the `error` event."""

    def __init__(self, code: str, problem: str, fix: str | None = None, *, turn: int | None = None):
        super().__init__(problem, fix)
        self.code, self.turn = code, turn
        self.dropped_turn = False  # the turn was fed to the pipeline: the transport stops its work and ends it


def shown(value, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters, for error messages about client input (which may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def json_object(raw: bytes, *, code: str, subject: str, fix: str) -> dict:
    """`raw` parsed as a JSON object; else ProtocolError(`code`) saying what `subject` (e.g. "the request
    body") holds instead."""
    if not raw.strip():
        raise ProtocolError(code, f"{subject} is empty", fix)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError(code, f"{subject} is not JSON ({exc})", fix) from None
    except UnicodeDecodeError:
        raise ProtocolError(code, f"{subject} is not UTF-8 text", fix) from None
    except ValueError:  # Python reads integers of at most 4300 digits
        raise ProtocolError(code, f"{subject} holds an integer of more than 4300 digits", fix) from None
    except RecursionError:
        raise ProtocolError(code, f"{subject} nests JSON arrays or objects too deeply", fix) from None
    if not isinstance(data, dict):
        raise ProtocolError(code, f"{subject} is JSON {type(data).__name__}, not an object", fix)
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_audio_format(rate, width, channels) -> None:
    """Raise ProtocolError "bad-format" unless a client's declared audio format is one the service takes:
    `rate` MIN_RATE..MAX_RATE Hz, `width` 2 (s16le) or 4 (float32le), 1..MAX_CHANNELS channels (integers).
    Stricter than events.check_audio_format (what the pipeline can carry): every transport checks a declared
    format with this before it accepts a turn."""
    if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError("bad-format", f"sample rate {shown(rate)} is not an integer from {MIN_RATE} to "
                            f"{MAX_RATE} Hz", "record at 16000 Hz (or resample to a rate in that range)")
    if not _is_int(width) or width not in SAMPLE_WIDTHS:
        raise ProtocolError("bad-format", f"sample width {shown(width)} is not 2 (s16le) or 4 (float32le) bytes",
                            "send 16-bit signed little-endian samples (width 2) or 32-bit floats (width 4)")
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError("bad-format", f"channel count {shown(channels)} is not 1 to {MAX_CHANNELS}",
                            "send mono (channels 1) or interleaved stereo (channels 2)")


def check_context(value, subject: str, max_chars: int) -> str | None:
    """A conversation's context text from a client: None (none), or a string of at most `max_chars` characters.
    ProtocolError bad-field (not a string, a lone surrogate) or text-too-long naming `subject`."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError("bad-field", f"{subject} must be a string or null, got {shown(value)}",
                            'send the context as text, e.g. "battery forty percent, in the kitchen"')
    if len(value) > max_chars:
        raise ProtocolError("text-too-long", f"{subject} has {len(value)} characters, the limit is {max_chars}",
                            "send a shorter context (max_text_chars)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad-field", f"{subject} holds a lone UTF-16 surrogate, which is not a character",
                            "send valid Unicode text") from None
    return value


def check_action_result(data, subject: str, next_turn: int) -> tuple[int, str, object, int | None]:
    """(turn, name, result, index) of a device's action result `data` ({"turn", "name", "result", "index"?}); the
    turn must be an earlier one of the conversation (< `next_turn`). ProtocolError bad-turn / bad-field."""
    from omnivox.core.kernel.actions import NAME

    if not isinstance(data, dict):
        raise ProtocolError("bad-field", f"{subject} is {shown(data)}, not an object",
                            'send {"turn": 0, "name": "light", "result": {"ok": true}}')
    turn = data.get("turn")
    if not _is_int(turn) or not 0 <= turn < next_turn:
        raise ProtocolError("bad-turn", f"{subject}: turn {shown(turn)} is not an earlier turn of this conversation "
                            f"(0..{next_turn - 1})", "send the `turn` of the `action` this result answers")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProtocolError("bad-field", f"{subject}: field 'name' is {shown(name)}, not an action name",
                            "send the `name` of the `action` this result answers")
    if "result" not in data:
        raise ProtocolError("bad-field", f"{subject}: field 'result' is missing",
                            'send the outcome as any JSON value, e.g. "result": {"ok": true}')
    index = data.get("index")
    if index is not None and (not _is_int(index) or index < 0):
        raise ProtocolError("bad-field", f"{subject}: field 'index' must be a non-negative integer, got "
                            f"{shown(index)}", "send the `index` of the `action` this result answers, or leave it out")
    return turn, name, data["result"], index


@dataclass
class Limits:
    """Per-worker limits; every violation is a ProtocolError on the offending session only."""

    max_sessions: int = 32  # concurrent sessions per worker
    max_sessions_per_site: int = 8  # concurrent sessions of one site (device) per worker
    max_chunk_bytes: int = 64_000  # one audio chunk (2 s of 16 kHz s16le mono)
    max_turn_s: float = 30.0  # seconds of audio in one turn
    max_text_chars: int = 2_000  # one text question
    max_open_turns: int = 2  # turns of one session accepted and not yet ended (the answer, and the next question)
    max_messages_per_s: float = 200.0  # per site, averaged over a burst of 2 s
    max_questions_per_s: float = 4.0  # questions (audio-start, text) per site, averaged over a burst of 2 s
    max_errors_per_s: float = 10.0  # error replies per site, averaged over a burst of 2 s; the rest are summarised
    session_idle_s: float = 60.0  # a session without messages (in or out) for this long is reaped
    mute_s: float = 2.0  # a session whose site went over max_messages_per_s is not read for this long

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

    @property
    def max_control_bytes(self) -> int:
        """The largest JSON control message: 1 KiB plus 12 bytes (a JSON-escaped surrogate pair) per text
        character."""
        return 1024 + 12 * self.max_text_chars


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
    """One client conversation. `id` is the pipeline's session_id; turns are numbered from 0. `client`: the
    identity its first start gave (None: anonymous); only that client may start it again."""

    id: str
    site: str
    limits: Limits
    client: str | None = None
    next_turn: int = 0
    receiving: _Receiving | None = None
    open_turns: set[int] = field(default_factory=set)  # turns accepted whose end was not sent to the client yet
    last_seen: float = field(default_factory=time.monotonic)

    def answering(self) -> bool:
        """A turn of this session was asked in full and has not ended yet (the service owes the next message)."""
        receiving = None if self.receiving is None else self.receiving.turn
        return any(turn != receiving for turn in self.open_turns)

    def _ids(self, turn: int) -> dict:
        return {"session_id": self.id, "turn_id": turn}

    def _new_turn(self, turn: int | None) -> int:
        """The id of a new turn: the client's (`turn`, which must be >= every earlier one) or the next."""
        if turn is not None and (not _is_int(turn) or turn < self.next_turn):
            raise ProtocolError("bad-turn", f"turn id {shown(turn)} is not an integer >= {self.next_turn}",
                                "number turns upwards (or leave the id out and take the service's)")
        if (self.next_turn if turn is None else turn) > MAX_TURN_ID:
            raise ProtocolError("bad-turn", f"turn id {shown(turn if turn is not None else self.next_turn)} is "
                                f"above {MAX_TURN_ID}, the largest the audio header carries",
                                "keep turn ids within 0..4294967295 (start a new session to count from 0)")
        if self.receiving is not None:
            raise ProtocolError("turn-in-progress", f"turn {self.receiving.turn} is still receiving audio",
                                "send audio-stop (or interrupt) before starting another turn", turn=turn)
        if len(self.open_turns) >= self.limits.max_open_turns:
            raise ProtocolError("too-many-turns", f"turns {sorted(self.open_turns)} of this session are still being "
                                f"answered (max_open_turns {self.limits.max_open_turns})",
                                "wait for their turn-end, or send interrupt, before asking again", turn=turn)
        turn = self.next_turn if turn is None else turn
        self.next_turn = turn + 1
        self.open_turns.add(turn)
        return turn

    def audio_start(self, rate: int, width: int, channels: int, turn: int | None = None) -> list[Event]:
        """A spoken turn begins (`turn`: the client's id for it, else the next); the format holds for all
        its chunks."""
        try:
            check_audio_format(rate, width, channels)
        except ProtocolError as exc:
            exc.turn = turn
            raise
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
            raise self._drop(ProtocolError("partial-frame", f"audio chunk of {len(pcm)} bytes is not whole "
                                           f"frames of {r.channels} x {r.width}-byte samples",
                                           "send whole frames in the format given at audio-start"))
        if r.width == 4:
            pcm = self._float_samples(pcm)
        r.next_seq += 1
        r.audio_s += len(pcm) / frame / r.rate
        if r.audio_s > self.limits.max_turn_s:
            raise self._drop(ProtocolError("turn-too-long", f"the turn exceeds {self.limits.max_turn_s:g} s "
                                           "of audio", "send shorter questions (end the turn with audio-stop)"))
        return [AudioChunk(audio=pcm, rate=r.rate, width=r.width, channels=r.channels, **self._ids(r.turn))]

    def _float_samples(self, pcm: bytes) -> bytes:
        """float32 samples checked: NaN or infinity drops the turn ("bad-samples"); beyond [-1, 1] is clipped."""
        samples = np.frombuffer(pcm, dtype="<f4")
        if not np.isfinite(samples).all():
            raise self._drop(ProtocolError("bad-samples", f"audio chunk has {int((~np.isfinite(samples)).sum())} "
                                           "NaN or infinite float32 samples", "send finite samples in [-1, 1]"))
        if samples.size and np.abs(samples).max() > 1.0:
            return np.clip(samples, -1.0, 1.0).astype("<f4").tobytes()
        return pcm

    def audio_stop(self, turn: int | None = None, at: float | None = None) -> list[Event]:
        """The question of the receiving turn (`turn` when the client names it) is complete: its speech ended `at`
        (a monotonic time; default now), the VoiceStopped its Metrics count first_audio_ms from."""
        r = self.receiving
        if r is None or (turn is not None and turn != r.turn):
            named = "" if turn is None else f" for turn {shown(turn)}"
            raise ProtocolError("audio-without-start", f"audio-stop{named} arrived, but "
                                + ("no turn is receiving audio" if r is None else f"turn {r.turn} is"),
                                "send audio-start and chunks first, and name the turn they belong to")
        if r.audio_s == 0:
            raise self._drop(ProtocolError("empty-turn", f"turn {r.turn} ended without audio: audio-stop came "
                                           "before any samples", "send at least one audio chunk with samples "
                                           "between audio-start and audio-stop"))
        self.receiving = None
        ids = self._ids(r.turn)
        stopped = VoiceStopped(**ids) if at is None else VoiceStopped(**ids, timestamp=at)
        return [stopped, AudioStop(**ids), TurnEnd(reason="done", **ids)]

    def text(self, text: str, turn: int | None = None) -> list[Event]:
        """A typed turn (tasks T1A2 / T1T2)."""
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad-text", "the text question is empty or not a string",
                                'send {"text": "your question"}', turn=turn)
        if len(text) > self.limits.max_text_chars:
            raise ProtocolError("text-too-long", f"the text has {len(text)} characters, the limit is "
                                f"{self.limits.max_text_chars}", "send a shorter question", turn=turn)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("bad-text", "the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                                "escape), which is not a character", "send valid Unicode text", turn=turn) from None
        turn = self._new_turn(turn)
        ids = self._ids(turn)
        return [TurnStart(**ids), TextIn(text, **ids), TurnEnd(reason="done", **ids)]

    def interrupt(self, turn: int | None = None, withdraw: bool = False) -> list[Event]:
        """Interrupt every unfinished turn (only `turn`, when given): its work stops within one LM step, its TurnEnd
        says interrupted. A turn still receiving audio is closed here. `withdraw`: `turn` (required) is taken back
        as well, ended or not: it leaves the conversation's history (a question asked on a guess that the speaker
        had finished, asked again whole as a later turn)."""
        if turn is not None and (not _is_int(turn) or not 0 <= turn < self.next_turn):
            raise ProtocolError("bad-turn", f"interrupt: turn {shown(turn)} is not a turn of this session "
                                f"(0..{self.next_turn - 1})", "name a turn the session asked, or leave turn out")
        if withdraw and turn is None:
            raise ProtocolError("bad-field", "interrupt: withdraw needs the turn to take back",
                                'send {"turn": N, "withdraw": true}')
        events: list[Event] = [Interruption(**self._ids(t)) for t in sorted(self.open_turns) if turn in (None, t)]
        if self.receiving is not None and turn in (None, self.receiving.turn):
            ids = self._ids(self.receiving.turn)
            events += [AudioStop(**ids), TurnEnd(reason="interrupted", **ids)]
            self.receiving = None
        if withdraw:
            events.append(Withdrawn(**self._ids(turn)))
        return events

    def use_up(self, turn) -> bool:
        """A refused question's turn id is used up (that turn ended with an error): True when `turn` is a new,
        valid id (then its end is sent once; a later question must take a higher one)."""
        if not _is_int(turn) or not self.next_turn <= turn <= MAX_TURN_ID:
            return False
        self.next_turn = turn + 1
        return True

    def end_turn(self, turn: int) -> bool:
        """The client is told that `turn` ended (once): True the first time for an accepted turn."""
        if turn not in self.open_turns:
            return False
        self.open_turns.discard(turn)
        return True

    def drop_receiving(self) -> int | None:
        """Stop receiving the current turn, if any (its audio is cut: it ends with an error); its id."""
        turn = None if self.receiving is None else self.receiving.turn
        self.receiving = None
        return turn

    def _drop(self, error: ProtocolError) -> ProtocolError:
        """Stop receiving the current turn (it ends with an error: the transport stops its work, end_turn());
        returns `error` to raise."""
        error.turn, error.dropped_turn = self.drop_receiving(), True
        return error


@dataclass
class Suppressed:
    """Error replies to one site held back by Limits.max_errors_per_s: how many of each code, and the session
    of the last one (where their summary goes)."""

    site: str
    session_id: str
    counts: Counter = field(default_factory=Counter)


class SessionEngine:
    """The sessions of one worker, the limits, per-site rate limiting (messages and error replies) and idle
    reaping."""

    _FORGET_BUCKETS = 1024  # above this many sites with a bucket, those full again are forgotten

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.sessions: dict[str, Session] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # site -> (tokens, last refill time): messages
        self._error_buckets: dict[str, tuple[float, float]] = {}  # site -> the same, for error replies
        self._question_buckets: dict[str, tuple[float, float]] = {}  # site -> the same, for questions
        self._suppressed: dict[str, Suppressed] = {}

    def open(self, session_id: str, site: str, client: str | None = None) -> Session:
        """A new session, or the held one when its own `client` starts it again. ProtocolError
        "session-taken" when another (or an anonymous) client starts a held session; "too-many-sessions" /
        "too-many-site-sessions" at Limits.max_sessions / max_sessions_per_site."""
        held = self.sessions.get(session_id)
        if held is not None:
            if client is not None and client == held.client:
                return held
            raise ProtocolError("session-taken", f"session {session_id!r} is held by another client",
                                "start a session with a new, random id (a session belongs to the client "
                                "whose session-start opened it)")
        if len(self.sessions) >= self.limits.max_sessions:
            raise ProtocolError("too-many-sessions", f"this worker serves its limit of {self.limits.max_sessions} "
                                "sessions", "retry later, or add a worker")
        quota = self.limits.max_sessions_per_site
        if sum(s.site == site for s in self.sessions.values()) >= quota:
            raise ProtocolError("too-many-site-sessions", f"site {site!r} holds its limit of {quota} sessions on "
                                "this worker", "end a session (session-end) before starting another")
        session = self.sessions[session_id] = Session(session_id, site, self.limits, client)
        return session

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def close(self, session_id: str) -> list[Event]:
        """End a session: the Cancel to feed (drops its queued work and per-turn state in every stage; turn_id
        None: every turn, as the stages' interruption handlers read it)."""
        session = self.sessions.pop(session_id, None)
        return [] if session is None else [Cancel(session_id=session_id, turn_id=None)]

    def admit(self, site: str, now: float | None = None) -> None:
        """Count one message of `site`; ProtocolError "rate-limited" beyond Limits.max_messages_per_s."""
        rate = self.limits.max_messages_per_s
        if not self._take(self._buckets, site, rate, now):
            raise ProtocolError("rate-limited", f"site {site!r} sends more than {rate:g} messages per second",
                                "send fewer, larger audio chunks; the message was dropped")

    def admit_question(self, site: str, now: float | None = None) -> None:
        """Count one question of `site` (a message admitted already); "rate-limited" beyond
        Limits.max_questions_per_s."""
        rate = self.limits.max_questions_per_s
        if not self._take(self._question_buckets, site, rate, now):
            raise ProtocolError("rate-limited", f"site {site!r} asks more than {rate:g} questions per second",
                                "ask one question at a time: wait for its turn-end; the question was dropped")

    def allow_error(self, site: str, code: str, session_id: str, now: float | None = None) -> bool:
        """May an error reply go to `site` now (Limits.max_errors_per_s)? When not, it is counted for the
        site's summary (summaries())."""
        if self._take(self._error_buckets, site, self.limits.max_errors_per_s, now):
            return True
        held = self._suppressed.setdefault(site, Suppressed(site, session_id))
        held.session_id = session_id
        held.counts[code] += 1
        return False

    def summaries(self, now: float | None = None) -> list[Suppressed]:
        """The suppressed errors of each site whose budget allows a reply again (the summary takes it)."""
        ready = [site for site in self._suppressed
                 if self._take(self._error_buckets, site, self.limits.max_errors_per_s, now)]
        return [self._suppressed.pop(site) for site in ready]

    def _take(self, buckets: dict[str, tuple[float, float]], site: str, rate: float, now: float | None) -> bool:
        """One token of `site`'s bucket (refilled at `rate` per second, holding 2 s worth)."""
        now = time.monotonic() if now is None else now
        tokens, last = buckets.get(site, (2.0 * rate, now))
        tokens = min(2.0 * rate, tokens + (now - last) * rate)
        if len(buckets) > self._FORGET_BUCKETS:  # sites quiet long enough to be full again need no bucket
            for key in [k for k, (t, at) in buckets.items() if t + (now - at) * rate >= 2.0 * rate]:
                del buckets[key]
        taken = tokens >= 1.0
        buckets[site] = (tokens - 1.0 if taken else tokens, now)
        return taken

    def touch(self, session: Session, now: float | None = None) -> None:
        session.last_seen = time.monotonic() if now is None else now

    def idle(self, now: float | None = None) -> list[str]:
        """Sessions without activity (touch()) for Limits.session_idle_s (close them). A session whose question
        is being answered is not idle, however long the answer takes to start: only the device can be idle."""
        now = time.monotonic() if now is None else now
        return [s.id for s in self.sessions.values()
                if now - s.last_seen > self.limits.session_idle_s and not s.answering()]
