"""The HTTP server of `omnivox serve --http` (aiohttp): each request is one session of one turn in the shared
pipeline, through the transport-neutral session engine (omnivox.core.runtime.sessions).

- `POST /chat`: upstream Mini-Omni's request (`{"audio": <base64 WAV>, "stream_stride": 4, "max_tokens": 2048}`,
  other fields ignored) answered by a streamed `audio/wav` body: a WAV header (s16le, mono, the codec's rate)
  first, then the PCM of each AudioOut as the codec produces it.
- `POST /v1/chat`: the same request (or `{"text": ...}`), answered by newline-delimited JSON events: turn-start,
  text (per token), audio (base64 s16le per chunk), error, metrics, turn-end. docs: docs/http_api.md. A spoken
  question's metrics count from the end of its speech: when the whole request body had arrived (VoiceStopped).
- `GET /v1/live`: a full-duplex voice session over a WebSocket: the server cuts the client's continuous
  microphone stream into turns (VAD, end-of-turn detector, barge-in). plugins/http/live.py, docs/live_api.md.
- `GET /`: the browser page (page/index.html; page/app.js: record and send, type; page/live.js and
  page/mic-worklet.js: the live mode over /v1/live).
- HTTPS with a certificate and key (`HttpConfig.tls`); a bearer token (`HttpConfig.token`) then required on every
  request but the page's files (the page asks for it).
- A request holds a session slot from the end of its headers to its answer's end; its body must arrive within
  `request_timeout_s` (else 408), and an answer waits that long at most for a client that stopped reading.
- Errors: a refused request gets a 4xx (503 when the server is full) with `{"error": {code, message, fix}}`;
  docs/http_api.md lists every kind.
- A client that disconnects mid-answer cancels its turn: the handler is cancelled, its session closed, and the
  Cancel stops the LM within one step.
- Conversations (`/v1/chat`): a request naming a `conversation` id continues that conversation (its own pipeline
  session, kept between requests; at most `max_conversations`, the least recently used idle one dropped beyond
  that, each dropped after `conversation_idle_s` without a request); `context`, `reset` and `action_results`
  become SetContext, ResetConversation and ActionResult before the question; answers carry `action` and
  `action-warning` lines. A conversation's client gone mid-answer interrupts only its turn, whose history keeps
  what was written (Played).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import re
import ssl
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger as server_log

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import (
    Action,
    ActionResult,
    ActionWarning,
    AudioOut,
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
)
from omnivox.core.runtime.sessions import (
    Limits,
    ProtocolError,
    Session,
    SessionEngine,
    check_action_result,
    check_context,
    json_object,
    shown,
)
from omnivox.plugins.http.wav import Question, decode_question, stream_header

log = logging.getLogger(__name__)

STATUS = {"token-required": 401, "bad-token": 401, "not-found": 404, "method-not-allowed": 405,
          "request-timeout": 408, "conversation-busy": 409, "too-many-conversations": 503,
          "body-too-large": 413, "turn-too-long": 413, "text-too-long": 413,
          "unsupported-media-type": 415, "too-many-site-sessions": 429, "too-many-sessions": 503}
METRICS_WAIT_S = 1.0  # how long a finished turn waits for its Metrics note
PAGE_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
              "/live.js": ("live.js", "text/javascript"), "/mic-worklet.js": ("mic-worklet.js", "text/javascript")}
# Content-Types a JSON body may come with: JSON, none, and what `curl -d` and text editors send
JSON_TYPES = {"application/json", "text/plain", "application/x-www-form-urlencoded"}
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
NO_TURN = -1  # the turn_id of a conversation's controls that belong to no turn
TOKEN_FIX = "send the header `Authorization: Bearer <token>` with the token the server was started with " \
            "(omnivox serve --http-token or OMNIVOX_HTTP_TOKEN)"


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 60808  # upstream Mini-Omni's port
    limits: Limits = field(default_factory=Limits)  # max_sessions bounds concurrent requests
    max_body_bytes: int = 8 * 1024 * 1024  # a 30 s 16 kHz WAV is ~1.3 MB as base64
    request_timeout_s: float = 120.0  # a body must arrive (and a stalled reader resume) within this
    token: str | None = None  # required as `Authorization: Bearer <token>` when set
    tls: ssl.SSLContext | None = None  # HTTPS when set (tls_context)
    max_conversations: int = 256  # conversations kept (the least recently used idle one goes beyond it)
    conversation_idle_s: float = 600.0  # a conversation without a request for this long is dropped
    live_turn_end: str | None = "default"  # /v1/live's end-of-turn detector (plugins/turn_end.py); None: silence rule


@dataclass
class Conversation:
    """A `/v1/chat` conversation: its pipeline session (unique per conversation, never reused), the next turn id,
    when a request last ended, and whether one is in progress."""

    session_id: str
    next_turn: int = 0
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


def parse_address(value: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); ValueError naming the problem."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--http {value!r}: expected [HOST:]PORT with PORT 0..65535")
    return host or "127.0.0.1", int(port)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from a PEM certificate (chain) and its key; None without either. ConfigError for
    one without the other, an unreadable file or a key that does not match."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("certificate", "key") if key is None else ("key", "certificate")
        raise ConfigError(f"HTTPS needs a certificate and its key: the {given} was given without the {missing}",
                          "pass both --http-tls-cert PEM and --http-tls-key PEM (or neither, for plain HTTP)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the HTTPS certificate {cert} with key {key}: {exc}",
                          "pass PEM files, the key matching the certificate; a self-signed pair for tests: openssl "
                          "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out "
                          "cert.pem -subj /CN=HOST -addext subjectAltName=DNS:HOST") from None
    return context


def check_token(token: str | None) -> None:
    """ConfigError unless `token` is None or can travel in an Authorization header."""
    if token is not None and (not token or not token.isascii() or not token.isprintable() or " " in token):
        raise ConfigError("the HTTP token must be one or more visible ASCII characters without spaces",
                          "pass e.g. --http-token $(openssl rand -hex 16)")


def check_timeout(seconds: float) -> None:
    """ConfigError unless `seconds` is a positive number."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(f"the HTTP request timeout must be a positive number of seconds, got {seconds!r}",
                          "pass e.g. --http-timeout 120")


class HttpService:
    """Requests -> pipeline events through `feed`; the output stage hands each session's answer events to
    `deliver`. `start()` binds the socket (port 0 picks a free one: see `port`), `stop()` closes it."""

    def __init__(self, config: HttpConfig, feed: Callable[[Event], None]):
        self.config, self.feed = config, feed
        self.engine = SessionEngine(config.limits)
        self.answers: dict[str, asyncio.Queue[Event]] = {}  # session -> its answer events
        self.conversations: OrderedDict[str, Conversation] = OrderedDict()  # id -> conversation, oldest use first
        self._of_session: dict[str, str] = {}  # a conversation request's session -> its conversation id
        self._one_off_context: set[str] = set()  # one-off sessions with a context: freed in the stages at their end
        self.turns_cancelled = 0  # turns whose client went away before the end
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._detector = None  # /v1/live's end-of-turn detector, loaded at start (live_detector), shared by sessions
        self._detector_lock = asyncio.Lock()

    # ---- running --------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self.guard])
        app.router.add_post("/chat", self.chat)
        app.router.add_post("/v1/chat", self.chat_events)
        app.router.add_get("/v1/live", self.live)
        for path in PAGE_FILES:
            app.router.add_get(path, self.page)
        return app

    async def start(self) -> None:
        # handler_cancellation: a client that goes away cancels its handler (and so its turn); keepalive_timeout
        # also closes a connection whose request headers have not arrived by then; malformed requests log no
        # traceback
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None,
                                     keepalive_timeout=self.config.request_timeout_s,
                                     logger=ClientErrorLog(server_log, {}))
        await self._runner.setup()
        await self._load_live_models()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, ssl_context=self.config.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("HTTP server on %s", self.url)
        if self.config.token is None and not _loopback(self.config.host):
            log.warning("HTTP on %s without a token: anyone who reaches it can use the model (set --http-token)",
                        self.config.host)

    async def _load_live_models(self) -> None:
        """Load what each /v1/live session needs (Silero VAD, the end-of-turn detector) before the server listens,
        so that a page's first session starts at once: loading them then took 0.6-0.9 s here and seconds on a busy
        machine, and the page holds the microphone's audio meanwhile. Without silero-vad, live sessions are
        refused with its install hint when they start."""
        from omnivox.plugins.silero_vad import load_silero

        try:
            await asyncio.to_thread(load_silero)
        except ConfigError:
            return
        await self.live_detector()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"{'https' if self.config.tls else 'http'}://{self.config.host}:{self.port}"

    # ---- from the output stage ------------------------------------------------------------------------
    def deliver(self, event: Event) -> None:
        queue = self.answers.get(event.session_id)
        if queue is not None:
            queue.put_nowait(event)

    # ---- every request --------------------------------------------------------------------------------
    @web.middleware
    async def guard(self, request: web.Request, handler) -> web.StreamResponse:
        """The token (all but the page's files need it when set); unknown paths and methods as JSON errors."""
        if self.config.token is not None and not (request.method in ("GET", "HEAD") and request.path in PAGE_FILES):
            header = request.headers.get("Authorization")
            if header is None and request.path == "/v1/live" and "token" in request.query:  # browsers' WebSocket
                header = f"Bearer {request.query['token']}"  # API sends no headers: the token comes in the URL
            refusal = self._refuse_token(header)
            if refusal is not None:
                response = error_response(refusal)
                response.headers["WWW-Authenticate"] = 'Bearer realm="omnivox"'
                return response
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            response = error_response(ProtocolError(
                "method-not-allowed", f"{request.method} {request.path} is not served",
                f"use {' or '.join(sorted(exc.allowed_methods))} {request.path}"))
            response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
            return response
        except web.HTTPNotFound:
            return error_response(ProtocolError("not-found", f"no such path: {request.path}",
                                                "POST /chat or /v1/chat; the page is at GET /"))

    def _refuse_token(self, header: str | None) -> ProtocolError | None:
        if not header:
            return ProtocolError("token-required", "this server requires a bearer token", TOKEN_FIX)
        scheme, _, given = header.partition(" ")
        given_bytes = given.strip().encode("utf-8", "surrogateescape")  # (the header's bytes, UTF-8 or not)
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self.config.token.encode()):
            return ProtocolError("bad-token", "the Authorization header does not carry this server's bearer token",
                                 TOKEN_FIX)
        return None

    # ---- handlers -------------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        name, content_type = PAGE_FILES[request.path]
        text = resources.files("omnivox.plugins.http").joinpath("page", name).read_text(encoding="utf-8")
        return web.Response(text=text, content_type=content_type)

    async def live(self, request: web.Request) -> web.StreamResponse:
        """/v1/live: a full-duplex voice session over a WebSocket (plugins/http/live.py)."""
        from omnivox.plugins.http.live import live

        return await live(self, request)

    async def live_detector(self):
        """The end-of-turn detector shared by /v1/live sessions (loaded once), or None for the silence rule."""
        if self.config.live_turn_end is not None and self._detector is None:
            async with self._detector_lock:
                if self._detector is None:
                    from omnivox.plugins.turn_end import TurnEndDetector

                    self._detector = await asyncio.to_thread(TurnEndDetector, self.config.live_turn_end)
        return self._detector

    async def live_vad(self):
        """A /v1/live session's own SileroVAD (full duplex, barge-in; no echo gate: the client cancels echo) with
        the shared end-of-turn detector, and its own PlaybackState (the client's speaker as the server knows it)."""
        from omnivox.core.runtime.playback import PlaybackState
        from omnivox.plugins.silero_vad import SileroVAD

        vad = SileroVAD(duplex="full", echo_gate=False, turn_end=await self.live_detector())
        await vad.setup()
        vad.playback = PlaybackState()
        vad.playback.has_sink = True  # its turns stay open until their answer played out or was interrupted
        return vad

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """Upstream's /chat: the answer as one streamed WAV."""
        try:
            session_id, _, body = await self._receive(request, typed=False)
        except ProtocolError as exc:
            return error_response(exc)
        with_header = body.get("wav_header", True)
        response: web.StreamResponse | None = None
        failure: Error | None = None
        try:
            async with aclosing(self._answer(session_id)) as answer:
                async for event in answer:
                    if isinstance(event, AudioOut):
                        if response is None:
                            header = stream_header(event.rate) if with_header else b""
                            response = await self._open(request, "audio/wav", header)
                        await self._write(request, response, event.audio)
                    elif isinstance(event, Error):
                        failure = failure or event
        finally:
            self._end(session_id)
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
            session_id, turn, body = await self._receive(request, typed=True)
        except ProtocolError as exc:
            return error_response(exc)
        written = -1  # the last LM step written to the client (text or audio)
        try:
            head = {"event": "turn-start", "turn": turn}
            if session_id in self._of_session:
                head["conversation"] = self._of_session[session_id]
            response = await self._open(request, "application/x-ndjson", json.dumps(head).encode() + b"\n")
            seq = 0
            async with aclosing(self._answer(session_id)) as answer:
                async for event in answer:
                    await self._write(request, response, json.dumps(self._event_line(event, seq)).encode() + b"\n")
                    seq += isinstance(event, AudioOut)
                    if isinstance(event, TextToken | AudioOut) and event.step is not None:
                        written = max(written, event.step)
        finally:
            self._end(session_id, written)
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
        if isinstance(event, Action):
            return {"event": "action", "turn": event.turn_id, "index": event.index, "name": event.name,
                    "arguments": dict(event.arguments), "step": event.step}
        if isinstance(event, ActionWarning):
            return {"event": "action-warning", "turn": event.turn_id, "code": event.code, "message": event.message,
                    "step": event.step}
        if isinstance(event, Metrics):
            return {"event": "metrics", "first_text_ms": event.first_text_ms, "first_audio_ms": event.first_audio_ms,
                    "first_audio_step": event.first_audio_step, "audio_s": event.audio_s, "wall_s": event.wall_s,
                    "rtf": event.rtf, "text_tokens": event.text_tokens, "stage_busy_ms": dict(event.stage_busy_ms),
                    "first_text_from_turn_start_ms": event.first_text_from_turn_start_ms,
                    "first_audio_from_turn_start_ms": event.first_audio_from_turn_start_ms}
        return {"event": "turn-end", "reason": event.reason}  # TurnEnd

    # ---- one turn -------------------------------------------------------------------------------------
    async def _receive(self, request: web.Request, typed: bool) -> tuple[str, int, dict]:
        """Take a session slot, read and check the request, feed its question: (session_id, turn, body).
        `typed`: `{"text": ...}` is a question too. ProtocolError when refused (server full, bad request): the
        slot is free again and nothing was fed then."""
        session_id = f"http-{uuid.uuid4().hex[:12]}"
        session = self.engine.open(session_id, site=f"http:{request.remote}")  # a client address is a site
        try:
            body = await self._body(request)
            arrived = time.monotonic()  # the whole question is here: the end of speech metrics count from
            controls = self._conversation(session, body) if typed else []
            if typed and "text" in body and "audio" not in body:
                events = session.text(body["text"])
            else:
                if "text" in body and "audio" not in body:
                    raise ProtocolError("bad-audio-field", "POST /chat takes a spoken question (`audio`) only",
                                        'send {"audio": "<base64 WAV>"}, or POST {"text": ...} to /v1/chat')
                if not typed and not isinstance(body.get("wav_header", True), bool):
                    raise ProtocolError("bad-field", "`wav_header` must be true or false, got "
                                        f"{shown(body['wav_header'])}",
                                        "leave it out (a WAV header) or send false (upstream's bare PCM)")
                events = self._question_events(session, decode_question(body.get("audio")), arrived)
        except BaseException:  # a refusal, or the client went away (cancelled)
            self.engine.sessions.pop(session.id, None)
            self._release(session.id)
            self._one_off_context.discard(session.id)
            raise
        session_id = session.id
        self.answers[session_id] = asyncio.Queue()
        for event in controls + events:
            self.feed(event)
        return session_id, events[0].turn_id, body

    # ---- conversations ----------------------------------------------------------------------------------
    def _conversation(self, session: Session, body: dict) -> list[Event]:
        """A /v1/chat request's conversation fields: with `conversation`, the session becomes that conversation's
        (made on first use); the SetContext / ResetConversation / ActionResult events to feed before the question.
        ProtocolError for a bad field, a conversation in use or none free."""
        self._expire()
        name, context = body.get("conversation"), body.get("context")
        check_context(context, "`context`", self.config.limits.max_text_chars)
        reset, results = body.get("reset", False), body.get("action_results")
        if not isinstance(reset, bool):
            raise ProtocolError("bad-field", f"`reset` must be true or false, got {shown(reset)}",
                                "send true to start the conversation afresh, or leave it out")
        if name is None:
            if reset or results is not None:
                raise ProtocolError("bad-field", "`reset` and `action_results` need a `conversation`",
                                    'name the conversation: {"conversation": "kitchen-robot", ...}')
            if not context:
                return []
            self._one_off_context.add(session.id)
            return [SetContext(context, session_id=session.id, turn_id=NO_TURN)]
        if not isinstance(name, str) or not CONVERSATION_ID.fullmatch(name):
            raise ProtocolError("bad-field", f"`conversation` {shown(name)} is not 1-64 characters of A-Z a-z 0-9 _ -",
                                "choose a conversation id made of letters, digits, '_' and '-' (a random one is best)")
        if results is not None and not isinstance(results, list):
            raise ProtocolError("bad-field", f"`action_results` must be a list, got {shown(results)}",
                                'send [{"turn": 0, "name": "light", "result": {"ok": true}}]')
        conversation = self._claim(name)
        try:
            checked = [check_action_result(r, f"`action_results[{i}]`", conversation.next_turn)
                       for i, r in enumerate(results or [])]
        except ProtocolError:
            conversation.busy = False
            raise
        del self.engine.sessions[session.id]  # the request's slot goes on under the conversation's session
        session.id, session.next_turn = conversation.session_id, conversation.next_turn
        self.engine.sessions[session.id] = session
        self._of_session[session.id] = name
        ids = {"session_id": session.id, "turn_id": NO_TURN}
        events: list[Event] = [ResetConversation(**ids)] if reset else []
        if "context" in body:
            events.append(SetContext(context, **ids))
        return events + [ActionResult(n, result, index=index, session_id=session.id, turn_id=turn)
                         for turn, n, result, index in checked]

    def _claim(self, name: str) -> Conversation:
        """The conversation `name`, marked busy (made when new; surplus ones dropped first)."""
        conversation = self.conversations.get(name)
        if conversation is not None and conversation.busy:
            raise ProtocolError("conversation-busy", f"conversation {name!r} is answering another request",
                                "wait for its answer to end before the next question")
        if conversation is None:
            while len(self.conversations) >= self.config.max_conversations:
                idle = next((n for n, c in self.conversations.items() if not c.busy), None)
                if idle is None:
                    raise ProtocolError("too-many-conversations", f"all {self.config.max_conversations} "
                                        "conversations are answering", "retry later")
                self._drop(idle)
            conversation = self.conversations[name] = Conversation(f"http-c-{uuid.uuid4().hex[:16]}")
        self.conversations.move_to_end(name)
        conversation.busy = True
        return conversation

    def _expire(self) -> None:
        """Drop the conversations idle longer than conversation_idle_s."""
        now = time.monotonic()
        for name in [n for n, c in self.conversations.items()
                     if not c.busy and now - c.last_used > self.config.conversation_idle_s]:
            self._drop(name)

    def _drop(self, name: str) -> None:
        conversation = self.conversations.pop(name)
        log.info("conversation %s dropped", name)
        self.feed(Cancel(session_id=conversation.session_id, turn_id=None))  # frees it in every stage

    def _release(self, session_id: str) -> None:
        """A conversation request ended: its conversation is free again (its turn ids go on)."""
        name = self._of_session.pop(session_id, None)
        conversation = self.conversations.get(name) if name is not None else None
        if conversation is not None and conversation.session_id == session_id:
            conversation.busy, conversation.last_used = False, time.monotonic()

    async def _body(self, request: web.Request) -> dict:
        """The request's JSON object, read within the request timeout."""
        if "Content-Type" in request.headers and request.content_type not in JSON_TYPES \
                and not request.content_type.endswith("+json"):
            raise ProtocolError("unsupported-media-type", f"the body is {request.content_type}, not JSON",
                                'POST a JSON object with Content-Type: application/json, e.g. {"audio": "<base64 '
                                'WAV>"} (a WAV file goes base64-encoded in `audio`)')
        timeout = self.config.request_timeout_s
        try:
            raw = await asyncio.wait_for(request.read(), timeout)
        except web.HTTPRequestEntityTooLarge:
            raise ProtocolError("body-too-large", f"the request body exceeds {self.config.max_body_bytes} bytes",
                                "send a shorter recording") from None
        except web.RequestPayloadError as exc:  # a body its Content-Encoding (gzip, deflate) does not decode
            raise ProtocolError("bad-encoding", f"the request body cannot be decoded: {exc.__cause__ or exc}",
                                "send the body uncompressed, or compressed as its Content-Encoding header "
                                "says") from None
        except asyncio.TimeoutError:
            raise ProtocolError("request-timeout", f"the request body did not arrive within {timeout:g} s",
                                "send the whole body at once, over a faster link, or a shorter recording") from None
        except ConnectionError:  # (what wait_for raises for a reset that races the handler's cancellation)
            raise _client_gone() from None
        return json_object(raw, code="not-json", subject="the request body",
                           fix='POST a JSON object such as {"audio": "<base64 WAV>"}')

    async def _answer(self, session_id: str):
        """The answer events of the session's turn, ending with TurnEnd then (within METRICS_WAIT_S) Metrics."""
        queue, session, ended, metrics_seen = self.answers[session_id], self.engine.sessions[session_id], False, False
        while not (ended and metrics_seen):
            try:
                event = await asyncio.wait_for(queue.get(), METRICS_WAIT_S) if ended else await queue.get()
            except asyncio.TimeoutError:
                return
            if isinstance(event, TurnEnd):
                ended = True
                session.end_turn(event.turn_id)
            metrics_seen = metrics_seen or isinstance(event, Metrics)
            yield event

    def _end(self, session_id: str, written: int = -1) -> None:
        """Free the session's slot; a turn not ended yet (its client went away, or the server stops) is cancelled:
        the Cancel stops its work. A conversation's turn is interrupted instead (the conversation goes on, its
        history keeping the answer up to step `written`); a one-off session with a context is freed."""
        del self.answers[session_id]
        session = self.engine.sessions.get(session_id)
        conversation = self._of_session.get(session_id)
        if session is not None and session.open_turns:
            self.turns_cancelled += 1
            log.info("session %s: client gone, turn cancelled", session_id)
            if conversation is None:
                for event in self.engine.close(session_id):
                    self.feed(event)
            else:
                for turn in sorted(session.open_turns):
                    self.feed(Interruption(session_id=session_id, turn_id=turn))
                    self.feed(Played(written + 1, session_id=session_id, turn_id=turn))
        elif session_id in self._one_off_context:
            self.feed(Cancel(session_id=session_id, turn_id=None))  # its context: nothing of it is kept anywhere
        self._one_off_context.discard(session_id)
        if session is not None and conversation in self.conversations:
            self.conversations[conversation].next_turn = session.next_turn
        self._release(session_id)
        self.engine.sessions.pop(session_id, None)

    def _question_events(self, session, question: Question, arrived: float) -> list[Event]:
        """The events of a spoken question; its VoiceStopped is timestamped `arrived`, when the whole audio had come
        (the end of speech first_audio_ms counts from)."""
        limit = self.config.limits.max_turn_s
        if question.seconds > limit:
            raise ProtocolError("turn-too-long", f"the question is {question.seconds:.1f} s of audio, the limit is "
                                f"{limit:g} s", "send a shorter recording")
        events = session.audio_start(rate=question.rate, width=2, channels=1)
        step = self.config.limits.max_chunk_bytes - self.config.limits.max_chunk_bytes % 2
        for seq, start in enumerate(range(0, len(question.pcm), step)):
            events += session.audio_chunk(events[0].turn_id, seq, question.pcm[start:start + step])
        return events + session.audio_stop(at=arrived)

    async def _open(self, request: web.Request, content_type: str, first: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        try:
            await response.prepare(request)
        except ConnectionError:
            raise _client_gone() from None
        if first:
            await self._write(request, response, first)
        return response

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        """Write part of an answer; a client that reads nothing for the request timeout is disconnected (its turn
        is cancelled, its slot freed)."""
        try:
            await asyncio.wait_for(response.write(data), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            log.info("%s: the client read nothing for %g s, disconnected", request.path, self.config.request_timeout_s)
            request.transport.abort()
            raise _client_gone() from None
        except ConnectionError:
            raise _client_gone() from None


def _client_gone() -> asyncio.CancelledError:
    """What ends a handler whose client went away (as aiohttp's handler cancellation does): its turn is cancelled
    and nothing is logged as an error."""
    return asyncio.CancelledError("the client went away")


class ClientErrorLog(logging.LoggerAdapter):
    """aiohttp's server log, in which a request aiohttp cannot parse (malformed HTTP, an oversized header, an
    unknown Content-Encoding, a body that does not decode: the client's fault, answered with a 400) is one INFO
    line without a traceback; anything else stays an ERROR with its traceback."""

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        if isinstance(exc_info, (HttpProcessingError, web.RequestPayloadError)):
            self.info(f"{msg}: %s", *args, exc_info)
        else:
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def error_response(exc: ProtocolError, status: int | None = None) -> web.Response:
    status = status or STATUS.get(exc.code, 400)
    response = web.json_response({"error": {"code": exc.code, "message": exc.problem, "fix": exc.fix}},
                                 status=status)
    if status == 408:  # the rest of the body may never come: do not wait for it
        response.force_close()
    return response
