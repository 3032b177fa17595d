"""`GET /v1/live`: one full-duplex voice session over a WebSocket (protocol: docs/live_api.md).

The client streams its microphone continuously; the server cuts the stream into turns with the stages of
`omnivox listen --duplex full` (plugins/silero_vad.py: Silero VAD, the end-of-turn detector, barge-in; no echo
gate: the client's echo cancellation does that job) and answers each turn through the shared pipeline, streaming
text, actions, audio and metrics back. Speech while an answer is being spoken is a barge-in: the answer's turn
is interrupted (the client is told at once and stops its playback) and the speech becomes the next question.
The connection is one session and one conversation (with the model's memory, when it has one).

    client                                         server
    {"event": "start", "version": 1, "rate": 16000} ->
                                                   <- {"event": "started", "version": 1, "session", "limits"}
    binary: b"OVA\\x01" + uint32 0 + uint32 seq + s16le mono PCM (microphone, continuously) ->
                                                   <- voice-started, turn-start, voice-stopped, text, action,
                                                      audio-start (rate), binary answer audio (header turn +
                                                      seq), interrupted, turn-end, metrics, error
    {"event": "context", "text": ...} / {"event": "reset"} / {"event": "stop"} ->

Limits, token and TLS are the HTTP server's (a browser sends the token as `?token=`); a session takes one of its
`max_sessions` slots until the socket closes. A client gone mid-answer frees everything of its session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import (
    Action,
    ActionWarning,
    AudioChunk,
    AudioOut,
    AudioStart,
    AudioStop,
    Cancel,
    Error,
    Event,
    Interruption,
    Metrics,
    Played,
    ResetConversation,
    SetContext,
    TextToken,
    TurnEnd,
    TurnStart,
    VoiceStarted,
    VoiceStopped,
)
from omnivox.core.runtime.sessions import ProtocolError, check_context, decode_audio, encode_audio, json_object

if TYPE_CHECKING:
    from omnivox.plugins.http.service import HttpService

log = logging.getLogger(__name__)
LIVE_VERSION = 1
RATES = (16000, 8000)  # what the VAD takes
CONTROLS = ("context", "reset", "stop")


def event_json(event: str, **fields) -> str:
    return json.dumps({"event": event, **fields})


class LiveSession:
    """One /v1/live connection: its VAD, what it has sent of each turn, and the two loops (read, write)."""

    def __init__(self, service: HttpService, ws: web.WebSocketResponse, session_id: str, rate: int, vad):
        self.service, self.ws, self.session_id, self.rate, self.vad = service, ws, session_id, rate, vad
        self.playback = vad.playback  # the answer being spoken, as the server estimates it (see _audio_out)
        # turn -> {"seq", "written" (last LM step sent), "first" (first audio sent), "seconds" (audio sent),
        # "ended" (turn-end sent)}: from the question's start until its answer has played out at the client
        self.answering: dict[int, dict] = {}
        self.interrupted: set[int] = set()  # turns whose end was sent at barge-in: their late events are dropped
        self.dropped: set[int] = set()  # turns spoken past max_turn_s: the rest of their audio goes nowhere
        self.spoken: dict[int, float] = {}  # turn -> seconds of its question so far
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.next_seq = 0  # of the client's audio frames
        self.received = 0  # samples of the client's stream so far
        self.origin: float | None = None  # time.monotonic() of the stream's first sample (see _capture_time)

    # ---- client -> server --------------------------------------------------------------------------
    async def read(self) -> None:
        """Until the client stops or goes away: audio frames through the VAD, control messages."""
        async for message in self.ws:
            try:
                if message.type == WSMsgType.BINARY:
                    await self._audio_in(message.data)
                elif message.type == WSMsgType.TEXT:
                    if not await self._control(message.data):
                        return
                else:
                    return
            except ProtocolError as exc:
                await self.error(exc)

    async def _audio_in(self, payload: bytes) -> None:
        _, seq, pcm = decode_audio(payload)
        limit = self.service.config.limits.max_chunk_bytes
        if len(pcm) > limit or len(pcm) % 2:
            raise ProtocolError("bad-chunk", f"an audio frame of {len(pcm)} bytes: frames carry whole 16-bit samples, "
                                f"at most {limit} bytes", "send 20-100 ms of s16le mono PCM per frame")
        if seq != self.next_seq:
            await self.error(ProtocolError("audio-gap", f"audio frame {seq} came after {self.next_seq - 1}",
                                           "number frames 0, 1, 2, ...; the audio goes on from this one"))
        self.next_seq = seq + 1
        self.received += len(pcm) // 2
        chunk = AudioChunk(audio=pcm, rate=self.rate, session_id=self.session_id, turn_id=0,
                           timestamp=self._capture_time())
        for event in await asyncio.to_thread(self.vad.push, chunk):  # Silero + the detector: off the loop
            await self._from_vad(event)

    def _capture_time(self) -> float:
        """When the last sample received was captured (time.monotonic): the stream's own clock, which runs with the
        samples, so that a VAD time maps back to a place in the client's stream (`voice-stopped`'s `stream_s` =
        seconds of audio sent). It starts at the first frame's arrival and moves earlier when samples arrive faster
        than real time (a page sending what it heard while the session opened, a client catching up after a
        stall): audio was never captured after it arrived."""
        now = time.monotonic()
        self.origin = min(self.origin if self.origin is not None else now, now - self.received / self.rate)
        return self.origin + self.received / self.rate

    async def _from_vad(self, event: Event) -> None:
        turn = event.turn_id
        if turn in self.dropped:
            return
        if isinstance(event, AudioChunk):
            self.spoken[turn] = self.spoken.get(turn, 0.0) + len(event.audio) / (2 * event.rate)
            limit = self.service.config.limits.max_turn_s
            if self.spoken[turn] > limit:  # the question is dropped; the speaker may go on, unheard, to a pause
                self.dropped.add(turn)
                self.answering.pop(turn, None)
                self.playback.close_turn((self.session_id, turn))
                self.service.feed(Interruption(session_id=self.session_id, turn_id=turn))
                await self.error(ProtocolError("turn-too-long", f"turn {turn} has gone on for more than {limit:g} s "
                                               "without a pause", "pause between questions (max_turn_s)"), turn)
                await self.send(event_json("turn-end", turn=turn, reason="error"))
                return
        if isinstance(event, Interruption):  # barge-in: the answer stops now, at the client too
            sent = self.answering.pop(turn, None)
            if sent is None:
                return
            self.playback.close_turn((self.session_id, turn))
            await self.send(event_json("interrupted", turn=turn, reason="barge-in", server_time=time.time()))
            if not sent["ended"]:
                self.interrupted.add(turn)
                self.service.feed(event)
                self.service.feed(Played(sent["written"] + 1, session_id=self.session_id, turn_id=turn))
                await self.send(event_json("turn-end", turn=turn, reason="interrupted"))
            return
        if isinstance(event, VoiceStarted):
            await self.send(event_json("voice-started", turn=turn, server_time=time.time()))
        elif isinstance(event, VoiceStopped):
            await self.send(event_json("voice-stopped", turn=turn, stream_s=round(event.timestamp - self.origin, 4)))
        elif isinstance(event, TurnStart):
            await self.send(event_json("turn-start", turn=turn))
        elif isinstance(event, AudioStart):
            self.answering[turn] = {"seq": 0, "written": -1, "first": None, "seconds": 0.0, "ended": False}
        elif isinstance(event, AudioStop):
            self.spoken.pop(turn, None)
        self.service.feed(event)

    async def _control(self, raw: str) -> bool:
        """A JSON control message; False for stop."""
        data = json_object(raw.encode(), code="not-json", subject="a live control message",
                           fix='send {"event": "context", "text": ...}, {"event": "reset"} or {"event": "stop"}')
        event = data.get("event")
        if event not in CONTROLS:
            raise ProtocolError("unknown-event", f"unknown control event {event!r}",
                                f"send one of: {', '.join(CONTROLS)} (audio goes in binary frames)")
        ids = {"session_id": self.session_id, "turn_id": -1}
        if event == "stop":
            return False
        if event == "reset":
            self.service.feed(ResetConversation(**ids))
        else:
            check_context(data.get("text"), "`text`", self.service.config.limits.max_text_chars)
            self.service.feed(SetContext(data.get("text"), **ids))
        return True

    # ---- server -> client --------------------------------------------------------------------------
    async def write(self) -> None:
        """The session's answer events, as they come, to the client (forever; cancelled at the end)."""
        while True:
            event = await self.queue.get()
            turn = event.turn_id
            if turn in self.interrupted:
                if isinstance(event, Metrics):
                    self.interrupted.discard(turn)
                continue
            if isinstance(event, AudioOut):
                await self._audio_out(event)
            elif isinstance(event, TextToken):
                self._written(turn, event.step)
                await self.send(event_json("text", turn=turn, text=event.text, token=event.token_id, step=event.step))
            elif isinstance(event, Action):
                await self.send(event_json("action", turn=turn, index=event.index, name=event.name,
                                           arguments=dict(event.arguments), step=event.step))
            elif isinstance(event, ActionWarning):
                await self.send(event_json("action-warning", turn=turn, code=event.code, message=event.message))
            elif isinstance(event, Error):
                await self.send(event_json("error", turn=turn, code="stage-failed", stage=event.stage,
                                           message=event.message, fix=event.fix))
            elif isinstance(event, Metrics):
                await self.send(event_json("metrics", turn=turn, first_text_ms=event.first_text_ms,
                                           first_audio_ms=event.first_audio_ms, audio_s=event.audio_s,
                                           rtf=event.rtf, text_tokens=event.text_tokens,
                                           stage_busy_ms=dict(event.stage_busy_ms)))
            elif isinstance(event, TurnEnd):
                self._ended(turn)
                await self.send(event_json("turn-end", turn=turn, reason=event.reason))

    async def _audio_out(self, event: AudioOut) -> None:
        sent = self.answering.get(event.turn_id)
        if sent is None:
            return
        self._written(event.turn_id, event.step)
        if sent["first"] is None:
            sent["first"] = time.monotonic()
            await self.send(event_json("audio-start", turn=event.turn_id, rate=event.rate, width=event.width,
                                       channels=event.channels))
        sent["seconds"] += len(event.audio) / (event.width * event.channels * event.rate)
        # the client plays it in real time from its first frame: the assistant speaks until then (barge-in window)
        self.playback.speaking_until(sent["first"] + sent["seconds"])
        await self.send(encode_audio(event.turn_id, sent["seq"], event.audio))
        sent["seq"] += 1

    def _written(self, turn: int, step: int | None) -> None:
        if turn in self.answering and step is not None:
            self.answering[turn]["written"] = max(self.answering[turn]["written"], step)

    def _ended(self, turn: int) -> None:
        """The turn's answer is all sent; it stays open (a barge-in can stop it) until it has played out."""
        sent = self.answering.get(turn)
        if sent is None:
            return
        sent["ended"] = True
        left = 0.0 if sent["first"] is None else sent["first"] + sent["seconds"] - time.monotonic()
        asyncio.get_running_loop().call_later(max(0.0, left), self._played_out, turn)

    def _played_out(self, turn: int) -> None:
        if self.answering.get(turn, {}).get("ended"):
            del self.answering[turn]
            self.playback.close_turn((self.session_id, turn))

    async def send(self, data: str | bytes) -> None:
        if self.ws.closed:
            return
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def error(self, exc: ProtocolError, turn: int | None = None) -> None:
        await self.send(event_json("error", code=exc.code, message=exc.problem, fix=exc.fix, turn=turn))

    def close(self) -> None:
        """Free everything of the session in every stage (its turns' work stops)."""
        self.service.feed(Cancel(session_id=self.session_id, turn_id=None))


async def live(service: HttpService, request: web.Request) -> web.StreamResponse:
    """The /v1/live handler: upgrade, `start`, then the session's two loops until either ends."""
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=service.config.limits.max_chunk_bytes + 4096)
    await ws.prepare(request)
    timeout = service.config.request_timeout_s
    try:
        first = await ws.receive(timeout=timeout)
    except asyncio.TimeoutError:
        await _refuse(ws, ProtocolError("request-timeout", f"no start message within {timeout:g} s",
                                        'send {"event": "start", "version": 1, "rate": 16000} first'))
        return ws
    session_id = f"live-{uuid.uuid4().hex[:12]}"
    try:
        rate = _start(first)
        service.engine.open(session_id, site=f"live:{request.remote}")
    except ProtocolError as exc:
        await _refuse(ws, exc)
        return ws
    live_session = None
    try:
        try:
            vad = await service.live_vad()
        except ConfigError as exc:  # silero-vad not installed
            await _refuse(ws, ProtocolError("live-unavailable", exc.problem, exc.fix))
            return ws
        live_session = LiveSession(service, ws, session_id, rate, vad)
        service.answers[session_id] = live_session.queue
        await live_session.send(event_json("started", version=LIVE_VERSION, session=session_id,
                                           limits=vars(service.config.limits)))
        writer = asyncio.create_task(live_session.write())
        try:
            await live_session.read()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
    finally:
        service.answers.pop(session_id, None)
        service.engine.sessions.pop(session_id, None)
        if live_session is not None:
            live_session.close()
        log.info("live session %s closed", session_id)
        await ws.close()
    return ws


def _start(message) -> int:
    """The rate of a valid `start` message; ProtocolError otherwise."""
    if message.type != WSMsgType.TEXT:
        raise ProtocolError("bad-start", "the first message must be the JSON start message",
                            'send {"event": "start", "version": 1, "rate": 16000} before any audio')
    data = json_object(message.data.encode(), code="not-json", subject="the start message",
                       fix='send {"event": "start", "version": 1, "rate": 16000}')
    if data.get("event") != "start":
        raise ProtocolError("bad-start", f"the first message is {data.get('event')!r}, not start",
                            'send {"event": "start", "version": 1, "rate": 16000} before anything else')
    if data.get("version") != LIVE_VERSION or isinstance(data.get("version"), bool):
        raise ProtocolError("bad-version", f"live protocol version {data.get('version')!r} is not served",
                            f'send "version": {LIVE_VERSION}')
    rate = data.get("rate", 16000)
    if rate not in RATES or isinstance(rate, bool):
        raise ProtocolError("bad-rate", f"microphone rate {rate!r} Hz is not taken",
                            "resample to 16000 Hz (or 8000) mono s16le on the client")
    return rate


async def _refuse(ws: web.WebSocketResponse, exc: ProtocolError) -> None:
    await ws.send_str(event_json("error", code=exc.code, message=exc.problem, fix=exc.fix, turn=None))
    await ws.close()
