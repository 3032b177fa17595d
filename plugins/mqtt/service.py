"""The worker side of the MQTT protocol: one broker connection serving many device sessions through one
pipeline (what `omnivox serve` and the `audio_inputs/mqtt` stage run).

- Availability: `<prefix>/workers/<worker>/status` is retained; "online" after every (re)connect, "offline"
  on a clean stop, and the broker publishes "offline" (the last will) when the worker dies or goes silent
  for 1.5 x keepalive.
- Claim / affinity: session starts arrive through the MQTT 5 shared subscription
  `$share/<group>/<prefix>/<site|+>/+/in/session-start`, so the broker hands each start to ONE worker. That
  worker claims the session: it subscribes to the session's own `in/+` topics (a plain subscription, so
  later messages of the session reach it alone) and answers `session-started` naming itself. Devices send
  nothing else before `session-started`; they watch that worker's status topic to learn of its death.
- Reconnect: on a lost connection the turns in flight are interrupted; the worker reconnects with
  backoff, resubscribes (start filter and every claimed session; we use clean starts and resubscribe
  ourselves so that a dead worker's persistent session never holds session starts), republishes "online",
  and ends each interrupted turn with `error` (code connection-lost) + `turn-end` (reason error).
  Refused credentials (CONNACK not authorized, bad user name or password) stop the worker with a ConfigError:
  retrying cannot fix them.
- Limits and validation: omnivox.core.runtime.sessions; a refused message gets an `error` on its session
  and nothing else changes. Idle sessions are reaped (Cancel frees their state in every stage).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import Event, Interruption, TurnEnd
from omnivox.core.runtime.sessions import Limits, ProtocolError, Session, SessionEngine
from omnivox.plugins.mqtt import protocol as wire
from omnivox.plugins.mqtt.connection import Backoff, BrokerConfig, refusal

log = logging.getLogger(__name__)

_REMEMBER_LOST = 4096
MAX_IN_FLIGHT = 256  # published messages awaiting their broker acknowledgement


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class ServiceConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    site: str | None = None  # serve only this site (None: every site)
    worker: str = field(default_factory=default_worker_id)
    group: str = "omnivox"  # shared-subscription group: workers of one pool share it
    prefix: str = wire.PREFIX
    limits: Limits = field(default_factory=Limits)
    reap_every_s: float = 1.0

    def __post_init__(self) -> None:
        if self.site is not None:
            wire.check_name("site", self.site)
        wire.check_name("worker", self.worker)
        wire.check_name("group", self.group)


class MqttService:
    """Sessions of one worker on one broker connection. `feed(event)` receives the pipeline events the
    devices' messages become (sync, non-blocking); the output stage calls send_json/send_audio/turn_ended."""

    def __init__(self, config: ServiceConfig, feed: Callable[[Event], None]):
        self.config, self.feed = config, feed
        self.engine = SessionEngine(config.limits)
        self.client = None  # the aiomqtt.Client while connected
        self.online = asyncio.Event()  # set while connected and subscribed
        self.connections = 0  # successful connects so far
        self.turns_ended = 0
        self._lost: OrderedDict[tuple[str, int], None] = OrderedDict()  # turns cut by a connection loss
        self._to_report: list[tuple[str, int]] = []  # lost turns whose error is not sent yet
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._pending: set[asyncio.Future] = set()  # publishes awaiting their acknowledgement

    # ---- running ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; until cancelled (then announce "offline" if connected)."""
        import aiomqtt

        backoff = Backoff()
        reaper = asyncio.create_task(self._reap_forever())
        try:
            while True:
                connections = self.connections
                try:
                    await self._serve_connection()
                except aiomqtt.MqttError as exc:
                    if refusal(exc):
                        raise ConfigError(f"the broker {self.config.broker.url} refused worker {self.config.worker}: "
                                          f"{exc}", "check --username/--password and the broker's password file "
                                          "and ACL") from None
                    log.warning("worker %s: broker connection lost (%s); reconnecting", self.config.worker, exc)
                self._connection_lost()
                if self.connections > connections:  # it was up: start the backoff from the beginning
                    backoff.reset()
                await asyncio.sleep(backoff.next())
        finally:
            reaper.cancel()

    async def _serve_connection(self) -> None:
        import aiomqtt

        cfg = self.config
        status = wire.status_topic(cfg.worker, cfg.prefix)
        will = aiomqtt.Will(status, self._status("offline"), qos=1, retain=True)
        async with cfg.broker.client(identifier=f"omnivox-{cfg.worker}", will=will) as client:
            self.client = client
            await client.subscribe(wire.start_filter(cfg.site, cfg.group, cfg.prefix), qos=1)
            for session in list(self.engine.sessions.values()):
                await client.subscribe(self._session_filter(session), qos=1)
            await client.publish(status, self._status("online"), qos=1, retain=True)
            self.connections += 1
            self.online.set()
            log.info("worker %s online at %s (%d sessions)", cfg.worker, cfg.broker.url, len(self.engine.sessions))
            try:
                await self._report_lost_turns()
                async for message in client.messages:
                    await self._on_message(str(message.topic), bytes(message.payload or b""))
            except asyncio.CancelledError:  # stopped: say goodbye while still connected
                await self._announce_offline()
                raise

    def _connection_lost(self) -> None:
        """Interrupt every turn in flight: it cannot be delivered; report it once connected again."""
        self.client = None
        self.online.clear()
        for session in self.engine.sessions.values():
            turns = sorted(session.open_turns | ({session.receiving.turn} if session.receiving else set()))
            for event in session.interrupt():
                self.feed(event)
            for turn in turns:
                self._remember_lost((session.id, turn))
                self._to_report.append((session.id, turn))
                session.turn_ended(turn)

    def _remember_lost(self, key: tuple[str, int]) -> None:
        self._lost[key] = None
        if len(self._lost) > _REMEMBER_LOST:
            self._lost.popitem(last=False)

    async def _report_lost_turns(self) -> None:
        reports, self._to_report = self._to_report, []
        for session_id, turn in reports:
            if session_id in self.engine.sessions:
                await self._error(session_id, ProtocolError(
                    "connection-lost", "the broker connection was lost during this turn; its answer is incomplete",
                    "ask again", turn=turn), force=True)
                await self.send_json(session_id, "turn-end", turn=turn, reason="error", force=True)

    async def _announce_offline(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            for session_id in list(self.engine.sessions):
                await self.send_json(session_id, "session-ended", reason="worker-stopped")
            if self._pending:
                await asyncio.wait(set(self._pending), timeout=2.0)
            await asyncio.wait_for(client.publish(wire.status_topic(self.config.worker, self.config.prefix),
                                                  self._status("offline"), qos=1, retain=True), 2.0)
        except Exception as exc:  # best effort: the last will covers a failed goodbye
            log.info("worker %s: could not announce offline (%s)", self.config.worker, exc)

    def _status(self, state: str) -> bytes:
        cfg = self.config
        return wire.encode_json("status", worker=cfg.worker, state=state, site=cfg.site, group=cfg.group,
                                sessions=len(self.engine.sessions), max_sessions=cfg.limits.max_sessions,
                                keepalive=cfg.broker.keepalive)

    def _session_filter(self, session: Session) -> str:
        site, name = session.id.split("/", 1)
        return wire.session_filter(site, name, "in", self.config.prefix)

    # ---- incoming ---------------------------------------------------------------------------------------
    async def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            address = wire.parse_topic(topic, self.config.prefix)
        except ProtocolError as exc:
            parts = topic.split("/")
            if len(parts) == 5 and parts[1:3] and f"{parts[1]}/{parts[2]}" in self.engine.sessions:
                await self._error(f"{parts[1]}/{parts[2]}", exc)
            else:
                log.info("ignored message on %s: %s", topic, exc.problem)
            return
        session_id = address.session_id
        try:
            if address.event == "session-start":
                self.engine.admit(address.site)
                await self._start(address, payload)
                return
            session = self.engine.get(session_id)
            if session is None:
                raise ProtocolError("unknown-session", f"session {address.session!r} is not open on this worker",
                                    "send session-start and wait for session-started")
            self.engine.touch(session)
            self._handle(session, address.event, payload)
        except ProtocolError as exc:
            await self._error(session_id, exc)
            session = self.engine.get(session_id)
            if exc.dropped_turn:  # the turn was dropped mid-audio: stop its work, end it with reason "error"
                ids = {"session_id": session_id, "turn_id": exc.turn}
                self.feed(Interruption(**ids))
                self.feed(TurnEnd(reason="error", **ids))
            elif address.event in ("audio-start", "text") and exc.turn is not None and session is not None \
                    and exc.turn not in session.open_turns:  # a refused turn: it ends here
                await self.send_json(session_id, "turn-end", turn=exc.turn, reason="error",
                                     worker=self.config.worker)

    async def _start(self, address: wire.Address, payload: bytes) -> None:
        wire.check_name("site", address.site)
        wire.check_name("session", address.session)
        wire.decode_json(payload, "session-start")
        known = address.session_id in self.engine.sessions
        session = self.engine.open(address.session_id, address.site)
        if not known:
            await self.client.subscribe(self._session_filter(session), qos=1)
        await self.send_json(address.session_id, "session-started", worker=self.config.worker,
                             status_topic=wire.status_topic(self.config.worker, self.config.prefix),
                             limits=vars(self.config.limits))

    def _handle(self, session: Session, event: str, payload: bytes) -> None:
        if event == "audio-chunk":
            turn, seq, pcm = wire.decode_audio(payload)
            self._admit(session, turn)
            events = session.audio_chunk(turn, seq, pcm)
        else:
            data = wire.decode_json(payload, event)
            if event in ("audio-start", "text"):
                events = self._question(session, event, data)
            elif event == "audio-stop":  # audio-stop, interrupt, session-end are never rate-limited
                events = session.audio_stop()
            elif event == "interrupt":
                events = session.interrupt()
            elif event == "session-end":
                self._close(session.id, "client")
                return
            else:  # session-start on the session's own topic: already ours
                return
        for item in events:
            self.feed(item)

    def _question(self, session: Session, event: str, data: dict) -> list[Event]:
        """audio-start or text: a new turn. A refusal names the turn it would have been (so it can be ended)."""
        turn = data.get("turn")
        try:
            self._admit(session, turn if isinstance(turn, int) else None)
            if event == "text":
                return session.text(wire.field_of(data, "text", str, event), turn=turn)
            rate, width, channels = (wire.field_of(data, key, int, event, default)
                                     for key, default in (("rate", None), ("width", 2), ("channels", 1)))
            return session.audio_start(rate, width, channels, turn=turn)
        except ProtocolError as exc:
            if exc.turn is None and isinstance(turn, int) and not isinstance(turn, bool):
                exc.turn = turn
            raise

    def _admit(self, session: Session, turn: int | None) -> None:
        """Count the message against its site's rate; a refusal names the message's turn."""
        try:
            self.engine.admit(session.site)
        except ProtocolError as exc:
            exc.turn = turn
            raise

    # ---- sessions -----------------------------------------------------------------------------------------
    def _close(self, session_id: str, reason: str) -> None:
        for event in self.engine.close(session_id):
            self.feed(event)
        asyncio.get_running_loop().create_task(self._send_closed(session_id, reason))

    async def _send_closed(self, session_id: str, reason: str) -> None:
        site, name = session_id.split("/", 1)
        await self.send_json(session_id, "session-ended", reason=reason)
        client = self.client
        if client is not None:
            try:
                await client.unsubscribe(wire.session_filter(site, name, "in", self.config.prefix))
            except Exception as exc:  # a lost connection forgets subscriptions anyway
                log.debug("unsubscribe failed: %s", exc)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_every_s)
            for session_id in self.engine.idle():
                log.info("worker %s: reaping idle session %s", self.config.worker, session_id)
                self._close(session_id, "idle")

    # ---- outgoing (also used by the output stage) ----------------------------------------------------------
    def is_lost(self, session_id: str, turn: int | None) -> bool:
        return turn is not None and (session_id, turn) in self._lost

    async def send_json(self, session_id: str, event: str, *, force: bool = False, **fields) -> bool:
        """Publish a control event to the session's device; False when it could not be sent (not connected,
        or the turn was cut by a connection loss and already reported)."""
        if not force and self.is_lost(session_id, fields.get("turn")):
            return False
        site, name = session_id.split("/", 1)
        return await self._publish(wire.topic(site, name, "out", event, self.config.prefix),
                                   wire.encode_json(event, **fields), wire.QOS_CONTROL)

    async def send_audio(self, session_id: str, turn: int, seq: int, pcm: bytes) -> bool:
        if self.is_lost(session_id, turn):
            return False
        site, name = session_id.split("/", 1)
        return await self._publish(wire.topic(site, name, "out", "audio-out", self.config.prefix),
                                   wire.encode_audio(turn, seq, pcm), wire.QOS_AUDIO)

    async def _publish(self, topic: str, payload: bytes, qos: int) -> bool:
        """Hand a message to the MQTT client without waiting for its QoS 1 acknowledgement (messages leave in
        the order given; at most MAX_IN_FLIGHT wait for their PUBACK, then publishers wait: backpressure)."""
        client = self.client
        if client is None:
            return False
        await self._in_flight.acquire()
        sent = asyncio.ensure_future(client.publish(topic, payload, qos=qos))  # paho queues it in this order
        self._pending.add(sent)
        sent.add_done_callback(self._acknowledged)
        return True

    def _acknowledged(self, sent: asyncio.Future) -> None:
        self._pending.discard(sent)
        self._in_flight.release()
        if not sent.cancelled() and sent.exception() is not None:
            log.info("dropped a message: %s", sent.exception())

    async def _error(self, session_id: str, exc: ProtocolError, *, force: bool = False) -> None:
        log.info("session %s: %s: %s", session_id, exc.code, exc.problem)
        if "/" in session_id:
            await self.send_json(session_id, "error", force=force, code=exc.code, message=exc.problem,
                                 fix=exc.fix, turn=exc.turn)

    def turn_ended(self, session_id: str, turn: int) -> None:
        session = self.engine.get(session_id)
        if session is not None:
            session.turn_ended(turn)
        self.turns_ended += 1
