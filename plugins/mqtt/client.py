"""The device side of the omnivox MQTT protocol (importable as `omnivox.mqtt`): what a robot runs, what
`omnivox ask` and the tests use.

    from omnivox.mqtt import Client

    async with Client("mqtt://127.0.0.1:1883", site="kitchen") as client:
        session = await client.session()                 # claimed by one worker (session-started)
        answer = await session.ask(wav="question.wav")   # streams the file, collects the streamed answer
        print(answer.text); answer.write_wav("answer.wav")

        turn = await session.start_turn(rate=16000)      # live audio
        await turn.send(pcm_chunk)  ...  await turn.stop()
        async for reply in turn:                         # Reply(event, data, audio) as each arrives
            ...
        await session.interrupt()                        # cancels the session's running turn

        # a conversation (the session is one): context, actions the model asks for, their results
        session = await client.session(context="battery forty percent", on_action=print)
        answer = await session.ask(text="turn on the kitchen light")
        for action in answer.actions:                    # {"turn", "index", "name", "arguments", "step"}
            await session.send_action_result(action, {"ok": True})
        await session.set_context("battery thirty percent")   # the next turn sees it
        await session.reset()                            # the conversation starts afresh (context kept)
        async for action in session.actions(): ...       # every action of the session, as it arrives

The client reconnects with backoff; a turn in flight when the connection or the session's worker is lost
ends with an `error` reply (code connection-lost / worker-offline) instead of hanging; refused credentials
fail `async with Client(...)` at once (ServiceError connect-failed). Its sessions carry its `client_id`, and
its MQTT last will ends them (`session-end`, reason client-gone) when the device vanishes without a goodbye.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnivox.core.errors import InputError, OmnivoxError
from omnivox.core.runtime.sessions import ProtocolError
from omnivox.plugins.mqtt import protocol as wire
from omnivox.plugins.mqtt.connection import Backoff, BrokerConfig, refusal

log = logging.getLogger(__name__)
MUTE_MARGIN_S = 0.5  # a muted session asks again this long after the worker's `seconds`


class ServiceError(OmnivoxError):
    """The service refused or failed a request; `code` is the protocol's error code."""

    def __init__(self, code: str, problem: str, fix: str | None = None):
        super().__init__(f"{code}: {problem}", fix)
        self.code = code


@dataclass
class Reply:
    """One message from the service for a turn: `event` (e.g. "transcript-chunk"), its JSON `data`, and for
    `audio-out` the PCM `audio` and its `seq`; `at` = time.monotonic() on arrival."""

    event: str
    data: dict[str, Any] = field(default_factory=dict)
    audio: bytes | None = None
    seq: int | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Answer:
    """A finished turn: the streamed text, the speech (PCM in `rate`/`width`/`channels`), how it ended."""

    turn: int
    text: str = ""
    audio: bytes = b""
    rate: int | None = None
    width: int = 2
    channels: int = 1
    reason: str | None = None  # the turn-end reason: done, interrupted, error
    errors: list[dict] = field(default_factory=list)
    actions: list[dict] = field(default_factory=list)  # `action` replies: turn, index, name, arguments, step
    action_warnings: list[dict] = field(default_factory=list)  # `action-warning` replies: turn, code, message
    metrics: dict | None = None
    worker: str | None = None
    started: float = field(default_factory=time.monotonic)  # when the question was sent
    first_audio_at: float | None = None
    ended_at: float | None = None
    replies: list[Reply] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason == "done" and not self.errors

    @property
    def first_audio_s(self) -> float | None:
        return None if self.first_audio_at is None else self.first_audio_at - self.started

    def write_wav(self, path: str | Path) -> Path:
        from omnivox.core import audio
        from omnivox.plugins.audio_files import write_audio

        if self.rate is None:
            raise InputError(f"turn {self.turn} has no audio to write", "ask a task with a spoken answer (A1A2)")
        fmt = audio.AudioFormat(rate=self.rate, width=self.width, channels=self.channels)
        return write_audio(path, audio.from_bytes(self.audio, fmt), self.rate)


class Turn:
    """One question and its streamed answer. Iterate it for the Replies until turn-end; `result()` for all."""

    def __init__(self, session: Session, turn: int):
        self.session, self.id = session, turn
        self.answer = Answer(turn)
        self.done = asyncio.Event()
        self._replies: asyncio.Queue[Reply] = asyncio.Queue()
        self._seq = 0

    async def send(self, pcm: bytes) -> None:
        """Send one chunk of audio in the format given to start_turn (numbered automatically); nothing once the turn
        ended (refused, muted, interrupted)."""
        if self.done.is_set():
            return
        payload = wire.encode_audio(self.id, self._seq, pcm)
        await self.session.client._publish(self.session._topic("audio-chunk"), payload, wire.QOS_AUDIO)
        self._seq += 1

    async def stop(self) -> None:
        """The question is complete (audio-stop): the service answers now (nothing once the turn ended)."""
        if not self.done.is_set():
            await self.session._send("audio-stop", turn=self.id)

    async def withdraw(self) -> None:
        """Take the question back (asked on a guess that the speaker had finished, and they went on): its answer
        stops, and the turn leaves the conversation's history."""
        await self.session.interrupt(self.id, withdraw=True)

    async def result(self, timeout: float = 60.0) -> Answer:
        """Wait for turn-end; the Answer (an `error` reply does not raise: see Answer.errors/reason)."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except asyncio.TimeoutError:
            raise ServiceError("timeout", f"turn {self.id} got no turn-end within {timeout:g} s",
                               "check that a worker is online (omnivox serve) and the broker is reachable") from None
        return self.answer

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while True:
            reply = await self._replies.get()
            yield reply
            if reply.event == "turn-end":
                return

    def _receive(self, reply: Reply) -> None:
        """Fold a reply into the answer; the last one is turn-end."""
        a = self.answer
        a.replies.append(reply)
        if reply.event == "transcript-chunk":
            a.text += reply.data.get("text", "")
        elif reply.event == "audio-start":
            a.rate, a.width, a.channels = reply.data["rate"], reply.data.get("width", 2), reply.data.get("channels", 1)
        elif reply.event == "audio-out":
            a.audio += reply.audio or b""
            if a.first_audio_at is None:
                a.first_audio_at = reply.at
        elif reply.event == "error":
            a.errors.append(reply.data)
        elif reply.event == "action":
            a.actions.append(reply.data)
        elif reply.event == "action-warning":
            a.action_warnings.append(reply.data)
        elif reply.event == "metrics":
            a.metrics = reply.data
        elif reply.event == "turn-end":
            a.reason, a.worker, a.ended_at = reply.data.get("reason"), reply.data.get("worker"), reply.at
        self._replies.put_nowait(reply)
        if reply.event == "turn-end":
            self.done.set()

    def _fail(self, code: str, message: str) -> None:
        if not self.done.is_set():
            self._receive(Reply("error", {"code": code, "message": message, "turn": self.id}))
            self._receive(Reply("turn-end", {"reason": "error", "turn": self.id}))


class Session:
    """One conversation, pinned to the worker that claimed it. `on_action(action)` (sync or async) is called with
    each `action` reply's JSON (turn, index, name, arguments, step) as it arrives; `actions()` iterates them."""

    def __init__(self, client: Client, name: str, on_action: Callable[[dict], Any] | None = None):
        self.client, self.name = client, name
        self.on_action = on_action
        self._actions: asyncio.Queue[dict | None] = asyncio.Queue()
        self.worker: str | None = None
        self.status_topic: str | None = None
        self.limits: dict = {}
        self.ready = asyncio.Event()  # claimed, and its worker is online on our current connection
        self.ended: str | None = None  # why the session is over (session-ended reason, worker-offline)
        self.turns: dict[int, Turn] = {}
        self.errors: list[dict] = []  # errors that name no turn
        self.muted_until = 0.0  # loop time until which the worker drops this session's questions (error `muted`)
        self._started = asyncio.get_running_loop().create_future()
        self._next_turn = 0

    def _topic(self, event: str) -> str:
        return wire.topic(self.client.site, self.name, "in", event, self.client.prefix)

    async def _send(self, event: str, **fields) -> None:
        await self.client._publish(self._topic(event), wire.encode_json(event, **fields), wire.QOS_CONTROL)

    async def _ready(self, timeout: float) -> None:
        if self.ended:
            raise ServiceError("session-ended", f"session {self.name} is over ({self.ended})",
                               "start a new session")
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except asyncio.TimeoutError:
            raise ServiceError("not-ready", f"session {self.name}: worker {self.worker} not reachable within "
                               f"{timeout:g} s", "check the broker and the workers") from None

    def _new_turn(self) -> Turn:
        turn = Turn(self, self._next_turn)
        self._next_turn += 1
        self.turns[turn.id] = turn
        return turn

    def _muted(self, turn: Turn) -> bool:
        """While the worker mutes this session it would drop the question: `turn` ends here (error `muted`)."""
        left = self.muted_until - asyncio.get_running_loop().time()
        if left > 0:
            turn._fail("muted", f"session {self.name} is muted for {left:.1f} s more (its site sent too many "
                                "messages): the question was not sent")
        return left > 0

    async def start_turn(self, rate: int, width: int = 2, channels: int = 1, timeout: float = 10.0) -> Turn:
        """Begin a spoken turn (audio-start); then turn.send(chunk)... turn.stop()."""
        await self._ready(timeout)
        turn = self._new_turn()
        if not self._muted(turn):
            await self._send("audio-start", turn=turn.id, rate=rate, width=width, channels=channels)
        return turn

    async def send_text(self, text: str, timeout: float = 10.0) -> Turn:
        """A typed question (tasks T1A2 / T1T2 on the service)."""
        await self._ready(timeout)
        turn = self._new_turn()
        if not self._muted(turn):
            await self._send("text", turn=turn.id, text=text)
        return turn

    async def ask(self, *, wav: str | Path | None = None, pcm: bytes | None = None, rate: int = 16000,
                  width: int = 2, channels: int = 1, text: str | None = None, chunk_ms: int = 100,
                  timeout: float = 60.0) -> Answer:
        """One question (a WAV file, raw PCM, or text) and its whole streamed answer."""
        if text is not None:
            turn = await self.send_text(text)
        else:
            if wav is not None:
                pcm, rate, width, channels = read_wav_pcm(wav)
            if not pcm:
                raise InputError("no question given", "pass wav=PATH, pcm=BYTES (+ rate) or text=TEXT")
            turn = await self.start_turn(rate, width, channels)
            step = max(1, rate * chunk_ms // 1000) * width * channels
            for start in range(0, len(pcm), step):
                await turn.send(pcm[start:start + step])
            await turn.stop()
        return await turn.result(timeout)

    async def interrupt(self, turn: int | None = None, withdraw: bool = False) -> None:
        """Cancel the running turn(s) (only `turn`, when given): their turn-end comes with reason "interrupted".
        `withdraw`: `turn` is also taken back: it leaves the conversation's history."""
        fields = {} if turn is None else {"turn": turn}
        await self._send("interrupt", **fields, **({"withdraw": True} if withdraw else {}))

    async def set_context(self, text: str | None, timeout: float = 10.0) -> None:
        """The conversation's context text from the next turn on (None or "": none)."""
        await self._ready(timeout)
        await self._send("context", context=text)

    async def reset(self, timeout: float = 10.0) -> None:
        """Drop the conversation's history (its context stays): the next turn starts afresh."""
        await self._ready(timeout)
        await self._send("reset")

    async def send_action_result(self, action: dict, result: Any, timeout: float = 10.0) -> None:
        """The device's `result` (any JSON value) of `action` (an `action` reply: its turn, name, index); it
        enters the conversation before the next turn."""
        await self._ready(timeout)
        await self._send("action-result", turn=action["turn"], name=action["name"], index=action.get("index"),
                         result=result)

    async def actions(self) -> AsyncIterator[dict]:
        """Every `action` of the session's turns as it arrives (JSON: turn, index, name, arguments, step), until
        the session ends."""
        while True:
            action = await self._actions.get()
            if action is None:
                return
            yield action

    def _action(self, data: dict) -> None:
        self._actions.put_nowait(data)
        if self.on_action is not None:
            called = self.on_action(data)
            if inspect.isawaitable(called):
                asyncio.ensure_future(called)

    async def close(self) -> None:
        if not self.ended:
            self.ended = "closed by the client"
            try:
                await self._send("session-end")
            except ServiceError:
                pass
        self._actions.put_nowait(None)  # ends actions()
        self.client._sessions.pop(self.name, None)

    def _receive(self, event: str, data: dict, audio: bytes | None = None, seq: int | None = None) -> None:
        if event == "session-started":
            self.worker, self.status_topic = data.get("worker"), data.get("status_topic")
            self.limits = data.get("limits") or {}
            if not self._started.done():
                self._started.set_result(data)
            return
        if event == "session-ended":
            self._end(data.get("reason", "ended"), "session-ended")
            return
        turn = data.get("turn")
        target = self.turns.get(turn) if turn is not None else None
        if event == "error" and data.get("code") == "muted":  # (and a moment for the worker to listen again)
            self.muted_until = asyncio.get_running_loop().time() + float(data.get("seconds") or 0) + MUTE_MARGIN_S
        if target is None and event == "error":
            code = data.get("code", "error")
            if not self._started.done():
                self._started.set_exception(ServiceError(code, data.get("message", ""), data.get("fix")))
                return
            if code == "session-taken":
                return  # another client tried to start this session: ours goes on
            if code == "unknown-session":  # the worker no longer holds it (reaped, or our will ended it)
                self._end("unknown-session", "unknown-session")
                return
            open_turns = [t for t in self.turns.values() if not t.done.is_set()]
            if turn is None and open_turns and code not in ("errors-suppressed", "muted"):  # not of a turn
                target = open_turns[-1]
            else:
                self.errors.append(data)
                return
        if target is None or target.done.is_set():
            return  # a late message of a finished turn (e.g. after a connection loss)
        if event == "action":
            self._action(data)
        target._receive(Reply(event, data, audio, seq))
        if event == "turn-end":
            self.turns.pop(target.id, None)

    def _status(self, data: dict) -> None:
        if data.get("state") == "online":
            self.ready.set()
        else:
            self.ready.clear()
            self._end("worker-offline", "worker-offline")

    def _end(self, reason: str, code: str) -> None:
        self.ended = reason
        self.ready.clear()
        self._actions.put_nowait(None)  # ends actions()
        for turn in list(self.turns.values()):
            turn._fail(code, f"session {self.name} ended: {reason}")
        self.turns.clear()

    def _connection_lost(self) -> None:
        self.ready.clear()
        for turn in list(self.turns.values()):
            turn._fail("connection-lost", "the broker connection was lost during this turn")
        self.turns.clear()


class Client:
    """A device's connection to the broker: opens sessions, routes the service's replies to them. Its sessions
    belong to `client_id`; with `will` (the default) its MQTT last will names its first session and ends every
    session of `client_id` on that session's worker when the connection dies without a goodbye."""

    def __init__(self, broker: str = "mqtt://127.0.0.1:1883", *, site: str, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, prefix: str = wire.PREFIX, keepalive: int = 5,
                 connect_timeout: float = 10.0, will: bool = True):
        self.site = wire.check_name("site", site)
        self.prefix = prefix
        self.client_id = f"{self.site[:40]}-{uuid.uuid4().hex[:16]}"  # the `client` of this device's sessions
        self.will_session: str | None = uuid.uuid4().hex[:12] if will else None  # the first session()'s name
        self.config = BrokerConfig(broker, username=username, password=password, ca_file=ca_file,
                                   cert_file=cert_file, key_file=key_file, keepalive=keepalive)
        self.connect_timeout = connect_timeout
        self.connected = asyncio.Event()
        self.refused: Exception | None = None  # the last connection error (wrong credentials, ...)
        self._client = None
        self._sessions: dict[str, Session] = {}
        self._statuses: dict[str, dict] = {}  # status topic -> last status payload
        self._runner: asyncio.Task | None = None
        self._will_used = False

    async def __aenter__(self) -> Client:
        self._runner = asyncio.create_task(self._run())
        connected = asyncio.ensure_future(self.connected.wait())
        await asyncio.wait({connected, self._runner}, timeout=self.connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if not connected.done():  # refused (the runner ended) or no answer in time
            connected.cancel()
            await self.aclose()
            raise ServiceError("connect-failed", f"cannot connect to {self.config.url}: {self.refused}",
                               "check the broker URL, credentials and TLS options")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for session in list(self._sessions.values()):
            try:
                await asyncio.wait_for(session.close(), 2.0)
            except (asyncio.TimeoutError, OmnivoxError):
                pass
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def wait_for_worker(self, timeout: float = 30.0, worker: str | None = None) -> dict:
        """Wait until some worker (or the one named `worker`) announces itself online (retained status); returns
        its status. A worker that died without saying goodbye may still be retained online: name the one you
        started when it matters."""
        await self._subscribe(wire.status_topic("+", self.prefix))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            online = [s for s in self._statuses.values()
                      if s.get("state") == "online" and worker in (None, s.get("worker"))]
            if online:
                return online[0]
            await asyncio.sleep(0.05)
        raise ServiceError("no-worker", f"no omnivox worker online at {self.config.url} within {timeout:g} s",
                           "start `omnivox serve --broker ...` and check it reaches the same broker")

    async def session(self, name: str | None = None, timeout: float = 10.0, *, context: str | None = None,
                      on_action: Callable[[dict], Any] | None = None) -> Session:
        """Start a session (session-start through the workers' shared subscription) and wait until a worker
        claimed it (session-started) and is known online. `context`: the conversation's context text;
        `on_action`: called with each action (see Session)."""
        if name is None and self.will_session is not None and not self._will_used:
            name, self._will_used = self.will_session, True
        name = wire.check_name("session", name or uuid.uuid4().hex[:12])
        session = self._sessions[name] = Session(self, name, on_action)
        await self._subscribe(wire.session_filter(self.site, name, "out", self.prefix))
        fields = {} if context is None else {"context": context}
        await session._send("session-start", client=self.client_id, **fields)
        try:
            await asyncio.wait_for(asyncio.shield(session._started), timeout)
        except asyncio.TimeoutError:
            self._sessions.pop(name, None)
            raise ServiceError("no-worker", f"no worker claimed session {name} within {timeout:g} s",
                               "start `omnivox serve` (for this site) and check the broker") from None
        except ServiceError:
            self._sessions.pop(name, None)
            raise
        if session.status_topic:
            await self._subscribe(session.status_topic)
            status = self._statuses.get(session.status_topic)
            if status is not None:
                session._status(status)
        await session._ready(timeout)
        return session

    # ---- connection -------------------------------------------------------------------------------------
    async def _run(self) -> None:
        import aiomqtt

        backoff = Backoff()
        while True:
            try:
                async with self.config.client(identifier=f"omnivox-dev-{self.site}-{uuid.uuid4().hex[:8]}",
                                              will=self._will()) as client:
                    self._client = client
                    for session in self._sessions.values():
                        await client.subscribe(wire.session_filter(self.site, session.name, "out", self.prefix),
                                               qos=1)
                        if session.status_topic:
                            await client.subscribe(session.status_topic, qos=1)
                    self.connected.set()
                    backoff.reset()
                    async for message in client.messages:
                        self._dispatch(str(message.topic), bytes(message.payload or b""))
            except aiomqtt.MqttError as exc:
                self.refused = exc
                if refusal(exc):  # wrong credentials: retrying cannot help
                    raise
                log.info("device %s: broker connection lost (%s)", self.site, exc)
            self._client = None
            self.connected.clear()
            for session in self._sessions.values():
                session._connection_lost()
            await asyncio.sleep(backoff.next())

    def _will(self):
        """The MQTT last will: end this client's sessions when its connection dies without a goodbye."""
        import aiomqtt

        if self.will_session is None:
            return None
        return aiomqtt.Will(wire.topic(self.site, self.will_session, "in", "session-end", self.prefix),
                            wire.encode_json("session-end", reason="client-gone", client=self.client_id), qos=1)

    async def _subscribe(self, topic_filter: str) -> None:
        client = await self._connected_client()
        await client.subscribe(topic_filter, qos=1)

    async def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        import aiomqtt

        client = await self._connected_client()
        try:
            await client.publish(topic, payload, qos=qos)
        except aiomqtt.MqttError as exc:
            raise ServiceError("connection-lost", f"could not publish to {topic}: {exc}",
                               "the client reconnects by itself; ask again") from None

    async def _connected_client(self):
        try:
            await asyncio.wait_for(self.connected.wait(), self.connect_timeout)
        except asyncio.TimeoutError:
            raise ServiceError("connection-lost", f"not connected to {self.config.url}",
                               "check the broker") from None
        return self._client

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/status"):
            try:
                data = wire.decode_json(payload, "status")
            except ProtocolError:
                return
            self._statuses[topic] = data
            for session in self._sessions.values():
                if session.status_topic == topic:
                    session._status(data)
            return
        try:
            address = wire.parse_topic(topic, self.prefix)
            session = self._sessions.get(address.session)
            if session is None or address.site != self.site:
                return
            if address.event == "audio-out":
                turn, seq, pcm = wire.decode_audio(payload)
                session._receive("audio-out", {"turn": turn}, pcm, seq)
            else:
                session._receive(address.event, wire.decode_json(payload, address.event))
        except ProtocolError as exc:
            log.warning("ignored a malformed message on %s: %s", topic, exc.problem)


def read_wav_pcm(path: str | Path) -> tuple[bytes, int, int, int]:
    """(s16le PCM, rate, width=2, channels) of an audio file."""
    from omnivox.core import audio
    from omnivox.plugins.audio_files import read_audio

    pcm, rate = read_audio(path)  # (channels, samples)
    fmt = audio.AudioFormat(rate=rate, width=2, channels=pcm.shape[0])
    return audio.to_bytes(pcm, fmt), rate, 2, pcm.shape[0]
