"""The worker side of the MQTT protocol: one broker connection serving many device sessions through one
pipeline (what `omnivox serve` and the `audio_inputs/mqtt` stage run).

- Availability: `<prefix>/workers/<worker>/status` is retained; "online" after every (re)connect and whenever
  the session count changed (at most every `tick_s`), "offline" on a clean stop, and the broker publishes
  "offline" (the last will) when the worker dies or goes silent for 1.5 x keepalive.
- Claim / affinity: session starts arrive through the MQTT 5 shared subscription
  `$share/<group>/<prefix>/<site|+>/+/in/session-start`, so the broker hands each start to ONE worker. That
  worker claims the session: it subscribes to the session's own `in/+` topics (a plain subscription, so
  later messages of the session reach it alone), publishes its session list (retained, for the other
  workers: pool.py) and answers `session-started` naming itself. A start for a session held elsewhere is left
  to its owner, which answers `session-started` again to the client that opened it and `session-taken` to
  any other. Devices send nothing else before `session-started`; they watch that worker's status topic.
- Orphans: shared subscriptions on the control events of every session bring one worker of the group each
  message, whoever holds its session; when nobody does it answers `unknown-session`. Which subscription
  brought a message is told by its MQTT 5 subscription identifier (SUB_*).
- Reconnect: on a lost connection the turns in flight are interrupted; the worker reconnects with
  backoff, resubscribes (start filter and every claimed session; we use clean starts and resubscribe
  ourselves so that a dead worker's persistent session never holds session starts), republishes "online",
  and ends each interrupted turn with `error` (code connection-lost) + `turn-end` (reason error).
  Refused credentials (CONNACK not authorized, bad user name or password) stop the worker with a ConfigError:
  retrying cannot fix them.
- Limits and validation: omnivox.core.runtime.sessions; a refused message gets an `error` on its session
  (at most Limits.max_errors_per_s per site, then one `errors-suppressed` summary) and nothing else changes.
  Every turn the device numbered ends with exactly one `turn-end`. A session ends by its device
  (`session-end`; `reason: client-gone` from a device's last will), by idling, or by the worker's stop: its
  open turns end first (Cancel frees their state in every stage), then `session-ended`.
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
from omnivox.core.runtime.sessions import (
    MAX_TURN_ID,
    Limits,
    ProtocolError,
    Session,
    SessionEngine,
    Suppressed,
    shown,
)
from omnivox.plugins.mqtt import protocol as wire
from omnivox.plugins.mqtt.connection import Backoff, BrokerConfig, refusal
from omnivox.plugins.mqtt.pool import Pool

log = logging.getLogger(__name__)

_REMEMBER_LOST = 4096
MAX_IN_FLIGHT = 256  # published messages awaiting their broker acknowledgement
# MQTT 5 subscription identifiers: which of the worker's subscriptions brought a message
SUB_START, SUB_SESSION, SUB_ORPHAN, SUB_POOL = 1, 2, 3, 4
# session-ended reason -> the turn-end reason of the turns it cuts
TURN_REASON = {"client": "interrupted", "client-gone": "client-gone", "idle": "idle",
               "worker-stopped": "worker-stopped"}


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
    tick_s: float = 0.5  # housekeeping period: idle reaping, the status's session count, error summaries

    def __post_init__(self) -> None:
        if self.site is not None:
            wire.check_name("site", self.site)
        wire.check_name("worker", self.worker)
        wire.check_name("group", self.group)


class MqttService:
    """Sessions of one worker on one broker connection. `feed(event)` receives the pipeline events the
    devices' messages become (sync, non-blocking); the output stage calls deliver/send_audio/end_turn."""

    def __init__(self, config: ServiceConfig, feed: Callable[[Event], None]):
        self.config, self.feed = config, feed
        self.engine = SessionEngine(config.limits)
        self.pool = Pool(config.worker, config.prefix)
        self.client = None  # the aiomqtt.Client while connected
        self.online = asyncio.Event()  # set while connected and subscribed
        self.connections = 0  # successful connects so far
        self.turns_ended = 0  # turns whose end the pipeline delivered
        self._lost: OrderedDict[tuple[str, int], None] = OrderedDict()  # turns cut by a connection loss
        self._to_report: list[tuple[str, int]] = []  # lost turns whose error is not sent yet
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._pending: set[asyncio.Future] = set()  # publishes awaiting their acknowledgement
        self._tasks: set[asyncio.Task] = set()  # session endings being sent
        self._status_count: int | None = None  # the session count of the last published status
        self._max_control = config.limits.max_control_bytes

    # ---- running ----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; until cancelled (then announce "offline" if connected)."""
        import aiomqtt

        backoff = Backoff()
        housekeeping = asyncio.create_task(self._housekeeping())
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
            housekeeping.cancel()

    async def _serve_connection(self) -> None:
        import aiomqtt

        cfg = self.config
        status = wire.status_topic(cfg.worker, cfg.prefix)
        will = aiomqtt.Will(status, self._status("offline"), qos=1, retain=True)
        async with cfg.broker.client(identifier=f"omnivox-{cfg.worker}", will=will) as client:
            client.pending_calls_threshold = MAX_IN_FLIGHT + 64  # our own backpressure bounds them: no warnings
            self.client = client
            await self._subscribe(wire.pool_filter(cfg.prefix), SUB_POOL)  # the other workers' claims first
            await self._subscribe(wire.start_filter(cfg.site, cfg.group, cfg.prefix), SUB_START)
            for orphans in wire.orphan_filters(cfg.site, cfg.group, cfg.prefix):
                await self._subscribe(orphans, SUB_ORPHAN)
            for session_id in list(self.engine.sessions):
                await self._subscribe(self._session_filter(session_id), SUB_SESSION)
            await self._publish_sessions()
            self._status_count = len(self.engine.sessions)
            await client.publish(status, self._status("online"), qos=1, retain=True)
            self.connections += 1
            self.online.set()
            log.info("worker %s online at %s (%d sessions)", cfg.worker, cfg.broker.url, len(self.engine.sessions))
            try:
                await self._report_lost_turns()
                async for message in client.messages:
                    ids = getattr(message.properties, "SubscriptionIdentifier", None) or ()
                    await self._on_message(str(message.topic), bytes(message.payload or b""), tuple(ids))
            except asyncio.CancelledError:  # stopped: say goodbye while still connected
                await self._announce_offline()
                raise

    async def _subscribe(self, topic_filter: str, sub: int) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = sub
        await self.client.subscribe(topic_filter, qos=1, properties=properties)

    def _connection_lost(self) -> None:
        """Interrupt every turn in flight: it cannot be delivered; report it once connected again."""
        self.client = None
        self.online.clear()
        for session in self.engine.sessions.values():
            turns = sorted(session.open_turns)
            for event in session.interrupt():
                self.feed(event)
            for turn in turns:
                self._remember_lost((session.id, turn))
                self._to_report.append((session.id, turn))
                session.end_turn(turn)

    def _remember_lost(self, key: tuple[str, int]) -> None:
        self._lost[key] = None
        if len(self._lost) > _REMEMBER_LOST:
            self._lost.popitem(last=False)

    async def _report_lost_turns(self) -> None:
        reports, self._to_report = self._to_report, []
        for session_id, turn in reports:
            if session_id in self.engine.sessions:
                await self._refuse(session_id, ProtocolError(
                    "connection-lost", "the broker connection was lost during this turn; its answer is incomplete",
                    "ask again", turn=turn), limited=False)
                await self.send_json(session_id, "turn-end", turn=turn, reason="error", worker=self.config.worker)

    async def _announce_offline(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            for session_id in list(self.engine.sessions):
                session = self.engine.get(session_id)
                await self._send_ended(session_id, sorted(session.open_turns), "worker-stopped")
            await self._publish(wire.sessions_topic(self.config.worker, self.config.prefix), b"", wire.QOS_CONTROL,
                                retain=True)
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
                                max_sessions_per_site=cfg.limits.max_sessions_per_site, keepalive=cfg.broker.keepalive)

    async def _publish_sessions(self) -> None:
        """The sessions this worker holds, retained, for the other workers (pool.py)."""
        cfg = self.config
        await self._publish(wire.sessions_topic(cfg.worker, cfg.prefix), wire.encode_json(
            "sessions", worker=cfg.worker, sessions=sorted(self.engine.sessions)), wire.QOS_CONTROL, retain=True)

    def _session_filter(self, session_id: str) -> str:
        site, name = session_id.split("/", 1)
        return wire.session_filter(site, name, "in", self.config.prefix)

    async def _housekeeping(self) -> None:
        """Every tick_s: reap idle sessions, send due error summaries, republish the status if the count changed."""
        while True:
            await asyncio.sleep(self.config.tick_s)
            for session_id in self.engine.idle():
                log.info("worker %s: reaping idle session %s", self.config.worker, session_id)
                self._close(session_id, "idle")
            if self.client is None:
                continue
            for held in self.engine.summaries():
                await self._summarise(held)
            if len(self.engine.sessions) != self._status_count:
                self._status_count = len(self.engine.sessions)
                await self._publish(wire.status_topic(self.config.worker, self.config.prefix), self._status("online"),
                                    wire.QOS_CONTROL, retain=True)

    # ---- incoming ---------------------------------------------------------------------------------------
    async def _on_message(self, topic: str, payload: bytes, subs: tuple[int, ...]) -> None:
        if not subs:
            raise ConfigError(f"the broker {self.config.broker.url} sent a message without MQTT 5 subscription "
                              "identifiers, so the worker cannot tell a session's own messages from copies",
                              "use a broker that supports them (mosquitto >= 1.6, EMQX, HiveMQ)")
        for sub in subs:
            if sub == SUB_POOL:
                self.pool.observe(topic, payload)
                continue
            try:
                address = wire.parse_topic(topic, self.config.prefix)
            except ProtocolError as exc:  # an unknown event: answered on a held session's own topic only
                parts = topic.split("/")
                if sub == SUB_SESSION and len(parts) == 5 and f"{parts[1]}/{parts[2]}" in self.engine.sessions:
                    await self._refuse(f"{parts[1]}/{parts[2]}", exc)
                continue
            session = self.engine.get(address.session_id)
            if sub == SUB_SESSION and session is not None:
                await self._session_message(session, address, payload)
            elif sub == SUB_START and session is None and self.pool.holder(address.session_id) is None:
                await self._start(address, payload)
            elif sub == SUB_ORPHAN and session is None:
                await self._orphan(address, payload)
            # else: a copy of a message another subscription (or worker) handles

    async def _start(self, address: wire.Address, payload: bytes) -> None:
        """A session-start (shared subscription) for a session nobody holds: claim it."""
        session_id = address.session_id
        try:
            wire.check_name("site", address.site)
            wire.check_name("session", address.session)
            self.engine.admit(address.site)
            data = wire.decode_json(payload, "session-start", self._max_control)
            self.engine.open(session_id, address.site, wire.optional_name(data, "client", "session-start"))
        except ProtocolError as exc:
            await self._refuse(session_id, exc)
            return
        await self._subscribe(self._session_filter(session_id), SUB_SESSION)
        await self._publish_sessions()  # before session-started: the other workers know the claim first
        await self._started(session_id)

    async def _started(self, session_id: str) -> None:
        await self.send_json(session_id, "session-started", worker=self.config.worker,
                             status_topic=wire.status_topic(self.config.worker, self.config.prefix),
                             limits=vars(self.config.limits))

    async def _orphan(self, address: wire.Address, payload: bytes) -> None:
        """A control message to a session this worker does not hold (shared subscription)."""
        if address.event == "session-end":  # over already (or a copy of the one its owner just handled)
            will = self._will(payload)
            if will is not None:
                self._client_gone(address.site, will)
            return
        if self.pool.holder(address.session_id) is not None:
            return  # its owner answers
        try:
            wire.check_name("site", address.site)
            wire.check_name("session", address.session)
            error = ProtocolError("unknown-session", f"session {address.session!r} is not open: it ended, was "
                                  "reaped or never started", "send session-start and wait for session-started "
                                  "(a new session id is best)")
        except ProtocolError as exc:
            error = exc
        await self._refuse(address.session_id, error)

    def _will(self, payload: bytes) -> str | None:
        """The client id of a session-end that is a device's last will (reason client-gone), else None."""
        try:
            data = wire.decode_json(payload, "session-end", self._max_control)
            client = wire.optional_name(data, "client", "session-end")
        except ProtocolError:
            return None
        return client if data.get("reason") == "client-gone" and client is not None else None

    async def _session_message(self, session: Session, address: wire.Address, payload: bytes) -> None:
        """A message on a held session's own topics."""
        event = address.event
        try:
            if event == "session-start":
                self.engine.admit(session.site)
                data = wire.decode_json(payload, event, self._max_control)
                self.engine.open(session.id, session.site, wire.optional_name(data, "client", event))
                await self._started(session.id)  # its own client again: nothing else changes
                return
            self.engine.touch(session)
            events = self._events(session, event, payload)
        except ProtocolError as exc:
            await self._refused(session, event, exc)
            return
        for item in events:
            self.feed(item)

    def _events(self, session: Session, event: str, payload: bytes) -> list[Event]:
        """The pipeline events of one message (ProtocolError when refused)."""
        if event == "audio-chunk":
            turn, seq, pcm = wire.decode_audio(payload)
            self._admit(session, turn)
            return session.audio_chunk(turn, seq, pcm)
        data = wire.decode_json(payload, event, self._max_control)
        if event in ("audio-start", "text"):
            return self._question(session, event, data)
        if event == "audio-stop":  # audio-stop, interrupt, session-end are never rate-limited
            return session.audio_stop(data.get("turn"))
        if event == "interrupt":
            return session.interrupt()
        reason = data.get("reason", "client")  # session-end
        if reason not in ("client", "client-gone"):
            raise ProtocolError("bad-field", f"session-end: reason {shown(reason)} is not client or "
                                "client-gone", 'leave "reason" out (or send "client-gone" in a last will)')
        client = wire.optional_name(data, "client", event)
        self._close(session.id, reason)
        if reason == "client-gone" and client is not None:
            self._client_gone(session.site, client)
        return []

    def _question(self, session: Session, event: str, data: dict) -> list[Event]:
        """audio-start or text: a new turn. A refusal names the turn it would have been (so it can be ended)."""
        turn = data.get("turn")
        if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool)):
            raise ProtocolError("bad-turn", f"{event}: turn {shown(turn)} is not an integer",
                                f"send turn ids as integers 0..{MAX_TURN_ID}, counting up")
        try:
            self._admit(session, turn)
            if event == "text":
                return session.text(wire.field_of(data, "text", str, event), turn=turn)
            rate, width, channels = (wire.field_of(data, key, int, event, default)
                                     for key, default in (("rate", None), ("width", 2), ("channels", 1)))
            return session.audio_start(rate, width, channels, turn=turn)
        except ProtocolError as exc:
            if exc.turn is None:
                exc.turn = turn
            raise

    def _admit(self, session: Session, turn: int | None) -> None:
        """Count the message against its site's rate; a refusal names the message's turn."""
        try:
            self.engine.admit(session.site)
        except ProtocolError as exc:
            exc.turn = turn
            raise

    async def _refused(self, session: Session, event: str, exc: ProtocolError) -> None:
        """Answer a refused message of a held session; end the turn it cut or would have been."""
        await self._refuse(session.id, exc)
        if exc.dropped_turn:  # dropped mid-audio: its work stops (the pipeline's own end of it is not sent)
            ids = {"session_id": session.id, "turn_id": exc.turn}
            self.feed(Interruption(**ids))
            self.feed(TurnEnd(reason="error", **ids))
            ended = session.end_turn(exc.turn)
        else:  # a refused question whose id is new: that turn ended
            ended = event in ("audio-start", "text") and session.use_up(exc.turn)
        if ended:
            await self.send_json(session.id, "turn-end", turn=exc.turn, reason="error", worker=self.config.worker)

    # ---- sessions ---------------------------------------------------------------------------------------
    def _close(self, session_id: str, reason: str) -> None:
        """End a held session now (its state goes at once); its open turns' ends and session-ended follow."""
        session = self.engine.get(session_id)
        if session is None:
            return
        turns = sorted(session.open_turns)
        session.open_turns.clear()
        for event in self.engine.close(session_id):
            self.feed(event)
        task = asyncio.get_running_loop().create_task(self._send_closed(session_id, turns, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client_gone(self, site: str, client: str) -> None:
        """A device's last will: end every session of `client` (on `site`) this worker holds."""
        for session in [s for s in self.engine.sessions.values() if s.site == site and s.client == client]:
            log.info("worker %s: client %s of session %s is gone", self.config.worker, client, session.id)
            self._close(session.id, "client-gone")

    async def _send_closed(self, session_id: str, turns: list[int], reason: str) -> None:
        await self._send_ended(session_id, turns, reason)
        await self._publish_sessions()
        client = self.client
        if client is not None and session_id not in self.engine.sessions:  # not claimed again meanwhile
            try:
                await client.unsubscribe(self._session_filter(session_id))
            except Exception as exc:  # a lost connection forgets subscriptions anyway
                log.debug("unsubscribe failed: %s", exc)

    async def _send_ended(self, session_id: str, turns: list[int], reason: str) -> None:
        """The ends of a closing session's open turns, then its session-ended."""
        for turn in turns:
            await self.send_json(session_id, "turn-end", turn=turn, reason=TURN_REASON[reason],
                                 worker=self.config.worker)
        await self.send_json(session_id, "session-ended", reason=reason)

    # ---- outgoing (also used by the output stage) ----------------------------------------------------------
    def is_lost(self, session_id: str, turn: int | None) -> bool:
        return turn is not None and (session_id, turn) in self._lost

    def _deliverable(self, session_id: str, turn: int | None) -> bool:
        """Does an answer event still go out: the session is held and the turn neither ended nor lost."""
        session = self.engine.get(session_id)
        if session is None or self.is_lost(session_id, turn) or (turn is not None and turn not in session.open_turns):
            return False
        self.engine.touch(session)  # an answer streaming out keeps its session alive
        return True

    async def deliver(self, session_id: str, event: str, **fields) -> bool:
        """An answer event of a turn (`turn` in fields) or of the session; False when it no longer goes out."""
        if not self._deliverable(session_id, fields.get("turn")):
            return False
        return await self.send_json(session_id, event, **fields)

    async def send_audio(self, session_id: str, turn: int, seq: int, pcm: bytes) -> bool:
        if not self._deliverable(session_id, turn):
            return False
        site, name = session_id.split("/", 1)
        return await self._publish(wire.topic(site, name, "out", "audio-out", self.config.prefix),
                                   wire.encode_audio(turn, seq, pcm), wire.QOS_AUDIO)

    async def end_turn(self, session_id: str, turn: int, reason: str) -> bool:
        """The pipeline ended `turn`: its turn-end, unless the turn already ended (closed, lost, dropped)."""
        session = self.engine.get(session_id)
        if session is None or not session.end_turn(turn):
            return False
        self.turns_ended += 1
        self.engine.touch(session)
        return await self.send_json(session_id, "turn-end", turn=turn, reason=reason, worker=self.config.worker)

    async def send_json(self, session_id: str, event: str, **fields) -> bool:
        """Publish a control event to the session's device; False when not connected."""
        site, name = session_id.split("/", 1)
        return await self._publish(wire.topic(site, name, "out", event, self.config.prefix),
                                   wire.encode_json(event, **fields), wire.QOS_CONTROL)

    async def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> bool:
        """Hand a message to the MQTT client without waiting for its QoS 1 acknowledgement (messages leave in
        the order given; at most MAX_IN_FLIGHT wait for their PUBACK, then publishers wait: backpressure)."""
        client = self.client
        if client is None:
            return False
        await self._in_flight.acquire()
        sent = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain))  # paho keeps the order
        self._pending.add(sent)
        sent.add_done_callback(self._acknowledged)
        return True

    def _acknowledged(self, sent: asyncio.Future) -> None:
        self._pending.discard(sent)
        self._in_flight.release()
        if not sent.cancelled() and sent.exception() is not None:
            log.info("dropped a message: %s", sent.exception())

    async def _refuse(self, session_id: str, exc: ProtocolError, *, limited: bool = True) -> None:
        """The `error` for a refused message; `limited`: counted against the site's Limits.max_errors_per_s."""
        site = session_id.split("/", 1)[0]
        if limited and not self.engine.allow_error(site, exc.code, session_id):
            log.debug("session %s: %s (reply suppressed): %s", session_id, exc.code, exc.problem)
            return
        log.info("session %s: %s: %s", session_id, exc.code, exc.problem)
        await self.send_json(session_id, "error", code=exc.code, message=exc.problem, fix=exc.fix, turn=exc.turn)

    async def _summarise(self, held: Suppressed) -> None:
        total = sum(held.counts.values())
        codes = ", ".join(f"{code} x{count}" for code, count in held.counts.most_common())
        log.info("site %s: %d error replies suppressed (%s)", held.site, total, codes)
        message = (f"{total} more error replies to site {held.site!r} were suppressed (over "
                   f"{self.config.limits.max_errors_per_s:g} per second): {codes}")
        await self.send_json(held.session_id, "error", code="errors-suppressed", turn=None, message=message,
                             fix="fix the messages these codes name; while errors come faster, only summaries "
                                 "like this one are sent", suppressed=dict(held.counts))
