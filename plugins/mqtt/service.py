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
  Every turn the device numbered ends with exactly one `turn-end`.
- Muting: a session refused as rate-limited is muted for Limits.mute_s (doubling, up to 16 x, while it floods
  again right after each mute): its owner swaps the session's `in/+` subscription for its PASS_EVENTS topics
  (wire.muted_filters: audio-stop, interrupt, session-end), so the broker drops everything else the session
  sends, questions included; one `muted` error (with `seconds`) announces it and ends a turn that was receiving
  audio. Then it swaps back. Copies of its flood on control topics still come through the shared orphan
  subscriptions: the worker then drops those for mute_s (as it does when a site floods sessions nobody holds).
  The new subscription comes before the old one goes, so a message published meanwhile arrives twice, back to
  back: mosquitto sends the exact topic's copy (SUB_MUTED) before the wildcard's (SUB_SESSION), which is dropped
  (a broker that sends them the other way round would deliver such a message twice).
- Conversation: the session is the conversation (docs/conversations.md). `session-start` may carry `context`;
  `context` (at any time), `reset` and `action-result` become the pipeline's SetContext, ResetConversation and
  ActionResult (turn_id NO_TURN but for a result: its action's turn), which the LM stage applies between turns.
  They count against the site's message rate like questions.
- A session ends by its device (`session-end`; `reason: client-gone` from a device's last will), by idling, or
  by the worker's stop: its open turns end first (Cancel frees their state in every stage), then
  `session-ended`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import (
    ActionResult,
    Event,
    Interruption,
    ResetConversation,
    SetContext,
    TurnEnd,
)
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
MAX_MUTE_DOUBLINGS = 4  # a session flooding again right after its mute: muted twice as long, up to 16 x mute_s
SWITCH_WINDOW_S = 1.0  # how long after a session's subscriptions changed a copy may still be read
# MQTT 5 subscription identifiers: which of the worker's subscriptions brought a message
SUB_START, SUB_SESSION, SUB_ORPHAN, SUB_POOL, SUB_MUTED = 1, 2, 3, 4, 5  # SUB_MUTED: wire.muted_filters
NO_TURN = -1  # the turn_id of a session's controls that belong to no turn (SetContext, ResetConversation)
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
        self.messages_read = 0  # messages the broker delivered (copies included)
        self._lost: OrderedDict[tuple[str, int], None] = OrderedDict()  # turns cut by a connection loss
        self._to_report: list[tuple[str, int]] = []  # lost turns whose error is not sent yet
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._pending: set[asyncio.Future] = set()  # publishes awaiting their acknowledgement
        self._tasks: set[asyncio.Task] = set()  # session endings being sent
        self._status_count: int | None = None  # the session count of the last published status
        self._muted: set[str] = set()  # muted sessions
        self._unmuted: dict[str, tuple[float, float]] = {}  # session -> (when its last mute ended, its seconds)
        self._orphans_paused = False  # the orphan subscriptions are dropped during a flood (_pause_orphans)
        self._subscribing = asyncio.Lock()  # one change of a session's subscriptions at a time
        # sessions whose subscriptions are changing -> (until when copies may come, the last message read)
        self._switching: dict[str, tuple[float, tuple | None]] = {}
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
        self._muted.clear()  # a new connection subscribes every session's in/+ again
        self._unmuted.clear()
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
                await self._send_turn_end(session_id, turn, "error")

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
        self.messages_read += 1
        if not subs:
            raise ConfigError(f"the broker {self.config.broker.url} sent a message without MQTT 5 subscription "
                              "identifiers, so the worker cannot tell a session's own messages from copies",
                              "use a broker that supports them (mosquitto >= 1.6, EMQX, HiveMQ)")
        own = frozenset(subs) & {SUB_SESSION, SUB_MUTED}  # which own subscription(s) brought it
        for sub in dict.fromkeys(SUB_SESSION if sub == SUB_MUTED else sub for sub in subs):
            if sub == SUB_POOL:
                self.pool.observe(topic, payload)
                continue
            try:
                address = wire.parse_topic(topic, self.config.prefix)
            except ProtocolError as unknown:  # an unknown event: answered on a held session's own topic only
                parts = topic.split("/")
                session = self.engine.get("/".join(parts[1:3])) if len(parts) == 5 else None
                if sub == SUB_SESSION and session is not None:
                    await self._refused(session, parts[4], self._counted(session, unknown))
                continue
            session = self.engine.get(address.session_id)
            if sub == SUB_SESSION and session is not None:
                if not self._copy(session.id, topic, payload, own):
                    await self._session_message(session, address, payload)
            elif sub == SUB_START and session is None and self.pool.holder(address.session_id) is None:
                await self._start(address, payload)
            elif sub == SUB_ORPHAN and session is None:
                await self._orphan(address, payload)
            elif sub == SUB_ORPHAN and session.id in self._muted and address.event not in wire.PASS_EVENTS:
                self._pause_orphans(session.site)  # a muted session floods its control topics
            # else: a copy of a message another subscription (or worker) handles

    def _copy(self, session_id: str, topic: str, payload: bytes, own: frozenset[int]) -> bool:
        """Is this message the wildcard subscription's copy (`own`: the identifiers that brought it) of the one
        the exact topic's subscription delivered just before? Only while the session's subscriptions change."""
        switching = self._switching.get(session_id)
        if switching is None:
            return False
        until, last = switching
        if time.monotonic() > until:
            del self._switching[session_id]
            return False
        copy = own == {SUB_SESSION} and last == (topic, payload, {SUB_MUTED})
        self._switching[session_id] = (until, None if copy else (topic, payload, own))  # a pair ends at its copy
        return copy

    async def _start(self, address: wire.Address, payload: bytes) -> None:
        """A session-start (shared subscription) for a session nobody holds: claim it."""
        session_id = address.session_id
        try:
            wire.check_name("site", address.site)
            wire.check_name("session", address.session)
            self.engine.admit(address.site)
            data = wire.decode_json(payload, "session-start", self._max_control)
            context = wire.context_of(data, "session-start", self.config.limits.max_text_chars, required=False)
            self.engine.open(session_id, address.site, wire.optional_name(data, "client", "session-start"))
        except ProtocolError as exc:
            await self._refuse(session_id, exc)
            return
        if context is not None:
            self.feed(SetContext(context, session_id=session_id, turn_id=NO_TURN))
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
        except ProtocolError as exc:
            await self._refuse(address.session_id, exc)
            return
        try:
            self.engine.admit(address.site)
        except ProtocolError:  # a flood to sessions nobody holds
            self._pause_orphans(address.site)
            return
        await self._refuse(address.session_id, ProtocolError(
            "unknown-session", f"session {address.session!r} is not open: it ended, was reaped or never started",
            "send session-start and wait for session-started (a new session id is best)"))

    def _pause_orphans(self, site: str) -> None:
        """A flood on the control topics of sessions that are muted or held by nobody reaches the worker through the
        shared orphan subscriptions, which cannot leave one session out: drop them for Limits.mute_s (no
        `unknown-session` replies meanwhile; in a pool the other workers take them)."""
        if self._orphans_paused or self.client is None:
            return
        self._orphans_paused = True
        log.info("worker %s: orphan subscriptions paused for %g s (a flood of control messages from site %s)",
                 self.config.worker, self.config.limits.mute_s, site)
        self._spawn(self._orphans_pause())

    async def _orphans_pause(self) -> None:
        filters = wire.orphan_filters(self.config.site, self.config.group, self.config.prefix)
        try:
            async with self._subscribing:
                if self.client is not None:
                    await self.client.unsubscribe(filters)
            await asyncio.sleep(self.config.limits.mute_s)
            async with self._subscribing:
                if self.client is not None:
                    for orphans in filters:
                        await self._subscribe(orphans, SUB_ORPHAN)
        except Exception as exc:  # a lost connection subscribes them again when it is back
            log.debug("pausing the orphan subscriptions failed: %s", exc)
        finally:
            self._orphans_paused = False

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
                context = wire.context_of(data, event, self.config.limits.max_text_chars, required=False)
                self.engine.open(session.id, session.site, wire.optional_name(data, "client", event))
                if context is not None:  # its own client again: only a context it carries changes
                    self.feed(SetContext(context, session_id=session.id, turn_id=NO_TURN))
                await self._started(session.id)
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
        try:
            data = wire.decode_json(payload, event, self._max_control)
        except ProtocolError as unreadable:
            raise self._counted(session, unreadable) if event in ("audio-start", "text") else unreadable from None
        if event in ("audio-start", "text"):
            return self._question(session, event, data)
        if event == "audio-stop":  # audio-stop, interrupt, session-end are never rate-limited
            return session.audio_stop(data.get("turn"))  # VoiceStopped now: the end of speech metrics count from
        if event == "interrupt":  # optional: the turn to interrupt (else all), and whether it is taken back
            withdraw = data.get("withdraw", False)
            if not isinstance(withdraw, bool):
                raise ProtocolError("bad-field", f"interrupt: withdraw {shown(withdraw)} is not true or false",
                                    'send "withdraw": true, or leave it out')
            return session.interrupt(data.get("turn"), withdraw)
        if event in ("context", "reset", "action-result"):
            return self._conversation(session, event, data)
        reason = data.get("reason", "client")  # session-end
        if reason not in ("client", "client-gone"):
            raise ProtocolError("bad-field", f"session-end: reason {shown(reason)} is not client or "
                                "client-gone", 'leave "reason" out (or send "client-gone" in a last will)')
        client = wire.optional_name(data, "client", event)
        self._close(session.id, reason)
        if reason == "client-gone" and client is not None:
            self._client_gone(session.site, client)
        return []

    def _conversation(self, session: Session, event: str, data: dict) -> list[Event]:
        """context, reset or action-result: the conversation control to feed (counted like a question, refused
        or not)."""
        try:
            if event == "context":
                context = wire.context_of(data, event, self.config.limits.max_text_chars)
            elif event == "action-result":
                turn, name, result, index = wire.action_result_of(data, event, session.next_turn)
        except ProtocolError as refused:
            raise self._counted(session, refused) from None
        self._admit(session, None)
        if event == "context":
            return [SetContext(context, session_id=session.id, turn_id=NO_TURN)]
        if event == "reset":
            return [ResetConversation(session_id=session.id, turn_id=NO_TURN)]
        return [ActionResult(name, result, index=index, session_id=session.id, turn_id=turn)]

    def _question(self, session: Session, event: str, data: dict) -> list[Event]:
        """audio-start or text: a new turn. A refusal names the turn it would have been (so it can be ended)."""
        turn = data.get("turn")
        if turn is not None and (not isinstance(turn, int) or isinstance(turn, bool)):
            raise ProtocolError("bad-turn", f"{event}: turn {shown(turn)} is not an integer",
                                f"send turn ids as integers 0..{MAX_TURN_ID}, counting up")
        try:
            self._admit(session, turn)
            self.engine.admit_question(session.site)
            if event == "text":
                return session.text(wire.field_of(data, "text", str, event), turn=turn)
            rate, width, channels = (wire.field_of(data, key, int, event, default)
                                     for key, default in (("rate", None), ("width", 2), ("channels", 1)))
            return session.audio_start(rate, width, channels, turn=turn)
        except ProtocolError as exc:
            if exc.turn is None:
                exc.turn = turn
            raise

    def _counted(self, session: Session, error: ProtocolError) -> ProtocolError:
        """`error`, or rate-limited when the refused message is over its site's rate (a flood of any refused
        message mutes its session like a flood of good ones)."""
        try:
            self._admit(session, error.turn)
        except ProtocolError as limited:
            return limited
        return error

    def _admit(self, session: Session, turn: int | None) -> None:
        """Count the message against its site's rate; a refusal names the message's turn."""
        try:
            self.engine.admit(session.site)
        except ProtocolError as exc:
            exc.turn = turn
            raise

    async def _refused(self, session: Session, event: str, exc: ProtocolError) -> None:
        """Answer a refused message of a held session; end the turn it cut or would have been. A rate-limited
        message mutes the session."""
        await self._refuse(session.id, exc)
        if exc.code == "rate-limited":
            await self._mute(session)
        if exc.dropped_turn:  # dropped mid-audio
            ended = self._stop_dropped(session, exc.turn)
        else:  # a refused question whose id is new: that turn ended
            ended = event in ("audio-start", "text") and session.use_up(exc.turn)
        if ended:
            await self._send_turn_end(session.id, exc.turn, "error")

    def _stop_dropped(self, session: Session, turn: int) -> bool:
        """A turn dropped while its audio arrived: its work stops in every stage (the pipeline's own end of it is
        not sent); True when its turn-end is still due to the device."""
        ids = {"session_id": session.id, "turn_id": turn}
        self.feed(Interruption(**ids))
        self.feed(TurnEnd(reason="error", **ids))
        return session.end_turn(turn)

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
        self._spawn(self._send_closed(session_id, turns, reason))

    def _client_gone(self, site: str, client: str) -> None:
        """A device's last will: end every session of `client` (on `site`) this worker holds."""
        for session in [s for s in self.engine.sessions.values() if s.site == site and s.client == client]:
            log.info("worker %s: client %s of session %s is gone", self.config.worker, client, session.id)
            self._close(session.id, "client-gone")

    async def _send_closed(self, session_id: str, turns: list[int], reason: str) -> None:
        await self._send_ended(session_id, turns, reason)
        await self._publish_sessions()
        self._muted.discard(session_id)
        self._unmuted.pop(session_id, None)
        async with self._subscribing:
            client = self.client
            if client is not None and session_id not in self.engine.sessions:  # not claimed again meanwhile
                site, name = session_id.split("/", 1)
                try:
                    await client.unsubscribe([self._session_filter(session_id),
                                              *wire.muted_filters(site, name, self.config.prefix)])
                except Exception as exc:  # a lost connection forgets subscriptions anyway
                    log.debug("unsubscribe failed: %s", exc)

    def _spawn(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mute(self, session: Session) -> None:
        """Mute `session` (read only its wire.muted_filters) for Limits.mute_s, or twice its last mute when it floods
        again within 2 x mute_s of that one's end (at most MAX_MUTE_DOUBLINGS times); one `muted` error tells its
        device. A turn still receiving audio is dropped (its chunks will not arrive): it ends with an error."""
        if session.id in self._muted or self.client is None:
            return
        seconds = base = self.config.limits.mute_s
        last = self._unmuted.pop(session.id, None)
        if last is not None and time.monotonic() - last[0] < 2 * base:
            seconds = min(2 * last[1], base * 2**MAX_MUTE_DOUBLINGS)
        self._muted.add(session.id)
        turn = session.drop_receiving()
        ended = turn is not None and self._stop_dropped(session, turn)
        rate = self.config.limits.max_messages_per_s
        log.info("session %s: muted for %g s (site %s over %g messages per second)", session.id, seconds,
                 session.site, rate)
        await self.send_json(session.id, "error", code="muted", turn=turn, seconds=seconds, message=(
            f"site {session.site!r} sent more than {rate:g} messages per second: for {seconds:g} s this worker reads "
            "only the session's audio-stop, interrupt and session-end; the broker drops the rest, questions "
            "included (they get no reply)"), fix=f"stay under max_messages_per_s; ask again after {seconds:g} s")
        if ended:
            await self._send_turn_end(session.id, turn, "error")
        self._spawn(self._listen(session.id, muted=True))
        self._spawn(self._unmute(session.id, seconds))

    async def _unmute(self, session_id: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if session_id in self._muted:  # (a lost connection unmuted it already)
            self._muted.discard(session_id)
            self._unmuted[session_id] = (time.monotonic(), seconds)
            await self._listen(session_id, muted=False)

    async def _listen(self, session_id: str, *, muted: bool) -> None:
        """Swap a held session's subscription: its wire.muted_filters (`muted`) or all its in/ events. The new
        subscription comes first, so nothing published meanwhile is missed (the overlap may deliver it twice)."""
        site, name = session_id.split("/", 1)
        every, heard = [self._session_filter(session_id)], wire.muted_filters(site, name, self.config.prefix)
        (new, sub), old = ((heard, SUB_MUTED), every) if muted else ((every, SUB_SESSION), heard)
        async with self._subscribing:
            if self.client is None or session_id not in self.engine.sessions:
                return
            self._switching[session_id] = (float("inf"), None)
            try:
                for topic_filter in new:
                    await self._subscribe(topic_filter, sub)
                await self.client.unsubscribe(old)
            except Exception as exc:  # a lost connection resubscribes every session's in/+ when it is back
                log.debug("resubscribing session %s failed: %s", session_id, exc)
            finally:  # copies are in the message queue by now; give its reader a moment to meet them
                self._switching[session_id] = (time.monotonic() + SWITCH_WINDOW_S, self._switching[session_id][1])

    async def _send_ended(self, session_id: str, turns: list[int], reason: str) -> None:
        """The ends of a closing session's open turns, then its session-ended."""
        for turn in turns:
            await self._send_turn_end(session_id, turn, TURN_REASON[reason])
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
        return await self._send_turn_end(session_id, turn, reason)

    async def _send_turn_end(self, session_id: str, turn: int, reason: str) -> bool:
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
