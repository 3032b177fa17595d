"""The HTTP server of `omnivox serve --http` (aiohttp): each request is one session of one turn in the shared
pipeline, through the transport-neutral session engine (omnivox.core.runtime.sessions).

- `POST /chat`: upstream Mini-Omni's request (`{"audio": <base64 WAV>, "stream_stride": 4, "max_tokens": 2048}`,
  other fields ignored) answered by a streamed `audio/wav` body: a WAV header (s16le, mono, the codec's rate)
  first, then the PCM of each AudioOut as the codec produces it.
- `POST /v1/chat`: the same request (or `{"text": ...}`), answered by newline-delimited JSON events: turn-start,
  text (per token), audio (base64 s16le per chunk), error, metrics, turn-end. docs: README "HTTP server".
- `GET /`: the browser page (page/index.html, page/app.js).
- Errors: a refused request gets a 4xx (503 when the server is full) with `{"error": {code, message, fix}}`.
- A client that disconnects mid-answer cancels its turn: the handler is cancelled, its session closed, and the
  Cancel stops the LM within one step.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

from omnivox.core.runtime.events import AudioOut, Error, Event, Metrics, TextToken, TurnEnd
from omnivox.core.runtime.sessions import Limits, ProtocolError, SessionEngine, json_object
from omnivox.plugins.http.wav import Question, decode_question, stream_header

log = logging.getLogger(__name__)

STATUS = {"too-many-sessions": 503, "turn-too-long": 413, "body-too-large": 413}
METRICS_WAIT_S = 1.0  # how long a finished turn waits for its Metrics note
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript")}


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 60808  # upstream Mini-Omni's port
    limits: Limits = field(default_factory=Limits)  # max_sessions bounds concurrent requests
    max_body_bytes: int = 8 * 1024 * 1024  # a 30 s 16 kHz WAV is ~1.3 MB as base64


def parse_address(value: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); ValueError naming the problem."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--http {value!r}: expected [HOST:]PORT with PORT 0..65535")
    return host or "127.0.0.1", int(port)


class HttpService:
    """Requests -> pipeline events through `feed`; the output stage hands each session's answer events to
    `deliver`. `start()` binds the socket (port 0 picks a free one: see `port`), `stop()` closes it."""

    def __init__(self, config: HttpConfig, feed: Callable[[Event], None]):
        self.config, self.feed = config, feed
        self.engine = SessionEngine(config.limits)
        self.answers: dict[str, asyncio.Queue[Event]] = {}  # session -> its answer events
        self.turns_cancelled = 0  # turns whose client went away before the end
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    # ---- running --------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post("/chat", self.chat)
        app.router.add_post("/v1/chat", self.chat_events)
        for path in PAGE_FILES:
            app.router.add_get(path, self.page)
        return app

    async def start(self) -> None:
        # handler_cancellation: a client that goes away cancels its handler (and so its turn)
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("HTTP server on http://%s:%d", self.config.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    # ---- from the output stage ------------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        queue = self.answers.get(event.session_id)
        if queue is not None:
            queue.put_nowait(event)

    # ---- handlers -------------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        name, content_type = PAGE_FILES[request.path]
        text = resources.files("omnivox.plugins.http").joinpath("page", name).read_text(encoding="utf-8")
        return web.Response(text=text, content_type=content_type)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Upstream's /chat: the answer as one streamed WAV."""
        try:
            body = await self._body(request)
            question = decode_question(body.get("audio"))
            with_header = body.get("wav_header", True) is not False
            session_id, _ = self._start_turn(question)
        except ProtocolError as exc:
            return error_response(exc)
        response: web.StreamResponse | None = None
        failure: Error | None = None
        async with aclosing(self._answer(session_id)) as answer:
            async for event in answer:
                if isinstance(event, AudioOut):
                    if response is None:
                        header = stream_header(event.rate) if with_header else b""
                        response = await self._open(request, "audio/wav", header)
                    await response.write(event.audio)
                elif isinstance(event, Error):
                    failure = failure or event
        if response is None and failure is not None:
            return error_response(ProtocolError("stage-failed", f"{failure.stage}: {failure.message}", failure.fix),
                                  status=500)
        if response is None:  # an answer without audio: an empty WAV
            response = await self._open(request, "audio/wav", stream_header(24000) if with_header else b"")
        await response.write_eof()
        return response

    async def chat_events(self, request: web.Request) -> web.StreamResponse:
        """/v1/chat: the answer as newline-delimited JSON events."""
        try:
            body = await self._body(request)
            if "text" in body and "audio" not in body:
                question = body["text"]
                if not isinstance(question, str):
                    raise ProtocolError("bad-text", "`text` must be a string", 'send {"text": "your question"}')
            else:
                question = decode_question(body.get("audio"))
            session_id, turn = self._start_turn(question)
        except ProtocolError as exc:
            return error_response(exc)
        response = await self._open(request, "application/x-ndjson", b"")
        await response.write(json.dumps({"event": "turn-start", "turn": turn}).encode() + b"\n")
        seq = 0
        async with aclosing(self._answer(session_id)) as answer:
            async for event in answer:
                await response.write(json.dumps(self._event_line(event, seq)).encode() + b"\n")
                seq += isinstance(event, AudioOut)
        await response.write_eof()
        return response

    @staticmethod
    def _event_line(event: Event, seq: int) -> dict:
        """One answer event of /v1/chat as its JSON line (`seq`: the number of audio events before it)."""
        if isinstance(event, TextToken):
            return {"event": "text", "text": event.text, "token": event.token_id, "step": event.step}
        if isinstance(event, AudioOut):
            return {"event": "audio", "seq": seq, "rate": event.rate, "width": event.width, "channels": event.channels,
                    "step": event.step, "pcm": base64.b64encode(event.audio).decode()}
        if isinstance(event, Error):
            return {"event": "error", "code": "stage-failed", "stage": event.stage, "message": event.message,
                    "fix": event.fix}
        if isinstance(event, Metrics):
            return {"event": "metrics", "first_text_ms": event.first_text_ms, "first_audio_ms": event.first_audio_ms,
                    "first_audio_step": event.first_audio_step, "audio_s": event.audio_s, "wall_s": event.wall_s,
                    "rtf": event.rtf, "text_tokens": event.text_tokens, "stage_busy_ms": dict(event.stage_busy_ms)}
        return {"event": "turn-end", "reason": event.reason}  # TurnEnd

    # ---- one turn -------------------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ProtocolError("body-too-large", f"the request body exceeds {self.config.max_body_bytes} bytes",
                                "send a shorter recording") from None
        return json_object(raw, code="not-json", subject="the request body",
                           fix='POST a JSON object such as {"audio": "<base64 WAV>"}')

    def _start_turn(self, question: Question | str) -> tuple[str, int]:
        """Open a session for one turn and feed its question; (session_id, turn). ProtocolError when refused
        (server full, question too long): nothing was fed then."""
        session_id = f"http-{uuid.uuid4().hex[:12]}"
        session = self.engine.open(session_id, site="http")
        try:
            events = self._question_events(session, question)
        except ProtocolError:
            self.engine.sessions.pop(session_id, None)
            raise
        self.answers[session_id] = asyncio.Queue()
        for event in events:
            self.feed(event)
        return session_id, events[0].turn_id

    async def _answer(self, session_id: str):
        """The answer events of the session's turn, ending with TurnEnd then (within METRICS_WAIT_S) Metrics.
        Leaving early (the client went away) cancels the turn."""
        queue, ended, metrics_seen = self.answers[session_id], False, False
        try:
            while not (ended and metrics_seen):
                try:
                    event = await asyncio.wait_for(queue.get(), METRICS_WAIT_S) if ended else await queue.get()
                except TimeoutError:
                    break
                ended = ended or isinstance(event, TurnEnd)
                metrics_seen = metrics_seen or isinstance(event, Metrics)
                yield event
        finally:
            del self.answers[session_id]
            if not ended:  # the client went away (or the server stops): Cancel stops the turn's work
                self.turns_cancelled += 1
                log.info("session %s: client gone, turn cancelled", session_id)
                for event in self.engine.close(session_id):
                    self.feed(event)
            self.engine.sessions.pop(session_id, None)

    def _question_events(self, session, question: Question | str) -> list[Event]:
        if isinstance(question, str):
            return session.text(question)
        limit = self.config.limits.max_turn_s
        if question.seconds > limit:
            raise ProtocolError("turn-too-long", f"the question is {question.seconds:.1f} s of audio, the limit is "
                                f"{limit:g} s", "send a shorter recording")
        events = session.audio_start(rate=question.rate, width=2, channels=1)
        step = self.config.limits.max_chunk_bytes - self.config.limits.max_chunk_bytes % 2
        for seq, start in enumerate(range(0, len(question.pcm), step)):
            events += session.audio_chunk(events[0].turn_id, seq, question.pcm[start:start + step])
        return events + session.audio_stop()

    async def _open(self, request: web.Request, content_type: str, first: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        await response.prepare(request)
        if first:
            await response.write(first)
        return response


def error_response(exc: ProtocolError, status: int | None = None) -> web.Response:
    status = status or STATUS.get(exc.code, 400)
    return web.json_response({"error": {"code": exc.code, "message": exc.problem, "fix": exc.fix}}, status=status)

