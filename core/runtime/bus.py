"""The asyncio event bus: publish/subscribe by event type and by sender, one bounded queue per subscriber.

Delivery rules:
- A subscription receives the data and control events whose type is one of its `types` and whose sender
  (the stage that published them, which is not always the producer: stages forward control events) is one
  of its `senders` (None = any sender).
- System events reach EVERY subscription, ahead of anything queued, and are never dropped.
- Overflow policy, stated per subscription:
  `block`       the publisher waits for room (backpressure; for generated output),
  `drop_oldest` the oldest queued data event is dropped and counted in `dropped` (for live audio input).
- Interruption(session, turn): the turn is remembered as interrupted, its queued data events are removed
  from every queue, each subscription's `on_interrupt` callback cancels that turn's in-flight work, and any
  data event of the turn published later is discarded at the door (counted in `Bus.discarded`).
  Cancel(session) does the same for every turn of the session.
- Shutdown closes the bus: in-flight work is cancelled (on_interrupt(None, None)), publishers blocked on a
  full queue are released and later data/control events are refused, so every stage stops promptly.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import Cancel, DataEvent, Event, Interruption, Shutdown, SystemEvent

OVERFLOW_POLICIES = ("block", "drop_oldest")

# on_interrupt(session_id, turn_id): cancel in-flight work of that turn; turn_id None = every turn of the
# session (Cancel); session_id None = all work (Shutdown).
InterruptCallback = Callable[["str | None", "int | None"], None]


class Subscription:
    """One subscriber's bounded queue. Consume it with `get()` and call `task_done()` per event."""

    def __init__(
        self,
        bus: Bus,
        name: str,
        types: tuple[type[Event], ...],
        senders: frozenset[str] | None,
        maxsize: int,
        overflow: str,
        on_interrupt: InterruptCallback | None,
    ):
        self.bus = bus
        self.name = name
        self.types = types
        self.senders = senders
        self.maxsize = maxsize
        self.overflow = overflow
        self.on_interrupt = on_interrupt
        self.high_water = 0  # the most data/control events ever queued at once
        self.dropped = 0  # data events dropped by drop_oldest
        self.purged = 0  # data events removed by interruptions
        self._system: deque[Event] = deque()  # unbounded: system events are never dropped
        self._items: deque[Event] = deque()  # bounded by maxsize
        self._getter: asyncio.Future | None = None
        self._putters: deque[asyncio.Future] = deque()

    def __len__(self) -> int:
        return len(self._items) + len(self._system)

    async def get(self) -> Event:
        """The next event: system events first, then the rest in order."""
        while not self._system and not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        if self._system:
            return self._system.popleft()
        event = self._items.popleft()
        self._wake_putter()
        return event

    def task_done(self) -> None:
        """Mark one event returned by get() as handled (Bus.join waits for this)."""
        self.bus._finished(1)

    # -- delivery (called by Bus) --
    def _put_system(self, event: Event) -> None:
        self._system.append(event)
        self.bus._unfinished += 1
        self._wake_getter()

    def _put_nowait(self, event: Event) -> None:
        if len(self._items) >= self.maxsize:
            self._drop_one()
        self._append(event)

    async def _put(self, event: Event) -> None:
        while len(self._items) >= self.maxsize:
            putter = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except asyncio.CancelledError:
                if putter.done() and not putter.cancelled():
                    self._wake_putter()  # pass the room we were given to the next waiting publisher
                raise
            finally:
                if putter in self._putters:
                    self._putters.remove(putter)
            if self.bus.closed or (
                isinstance(event, DataEvent) and self.bus.is_interrupted(event.session_id, event.turn_id)
            ):
                self.bus.discarded += 1
                self._wake_putter()  # interrupted or shut down while we waited: leave the room to others
                return
        self._append(event)

    def _append(self, event: Event) -> None:
        self._items.append(event)
        self.bus._unfinished += 1
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        self._wake_getter()

    def _drop_one(self) -> None:
        """Drop the oldest data event (the oldest event of any kind if only control events are queued)."""
        for i, queued in enumerate(self._items):
            if isinstance(queued, DataEvent):
                del self._items[i]
                break
        else:
            self._items.popleft()
        self.dropped += 1
        self.bus._finished(1)

    def _purge(self, session_id: str, turn_id: int | None) -> None:
        kept = deque(
            e
            for e in self._items
            if not (
                isinstance(e, DataEvent) and e.session_id == session_id and (turn_id is None or e.turn_id == turn_id)
            )
        )
        removed = len(self._items) - len(kept)
        if removed:
            self._items = kept
            self.purged += removed
            self.bus._finished(removed)
            for _ in range(removed):
                self._wake_putter()

    def _wake_getter(self) -> None:
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)

    def _wake_putter(self) -> None:
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
                return


class Bus:
    """Publish/subscribe hub for one pipeline (one event loop)."""

    def __init__(self, *, remember_turns: int = 4096):
        self.subscriptions: list[Subscription] = []
        self.discarded = 0  # events refused: data of interrupted turns, anything after Shutdown
        self.closed = False  # set by Shutdown: blocked publishers are released, later events refused
        self._interrupted: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._cancelled_sessions: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_turns
        self._routes: dict[str | None, list[Subscription]] = {}
        self._unfinished = 0
        self._idle: asyncio.Event | None = None

    def subscribe(
        self,
        name: str,
        *,
        types: Iterable[type[Event]] = (Event,),
        senders: Iterable[str] | None = None,
        maxsize: int = 64,
        overflow: str = "block",
        on_interrupt: InterruptCallback | None = None,
    ) -> Subscription:
        """A new queue receiving `types` sent by `senders` (None = anyone), plus every system event."""
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(
                f"subscription {name!r}: unknown overflow policy {overflow!r}",
                f"use one of: {', '.join(OVERFLOW_POLICIES)}",
            )
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigError(f"subscription {name!r}: queue size {maxsize!r} must be an integer >= 1")
        sub = Subscription(
            self,
            name,
            tuple(types),
            None if senders is None else frozenset(senders),
            maxsize,
            overflow,
            on_interrupt,
        )
        self.subscriptions.append(sub)
        self._routes.clear()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)
        self._routes.clear()
        self._finished(len(sub))

    def is_interrupted(self, session_id: str, turn_id: int) -> bool:
        """True once an Interruption for this turn (or a Cancel for its session) was published."""
        return (session_id, turn_id) in self._interrupted or session_id in self._cancelled_sessions

    async def publish(self, event: Event, *, sender: str | None = None) -> None:
        """Deliver `event` to its subscribers; may wait for room in `block` queues (backpressure)."""
        if isinstance(event, SystemEvent):
            self._publish_system(event)
            return
        if self.closed or (isinstance(event, DataEvent) and self.is_interrupted(event.session_id, event.turn_id)):
            self.discarded += 1
            return
        route = self._routes.get(sender)
        if route is None:
            route = self._routes[sender] = [s for s in self.subscriptions if s.senders is None or sender in s.senders]
        for sub in route:
            if isinstance(event, sub.types):
                if sub.overflow == "block":
                    await sub._put(event)
                else:
                    sub._put_nowait(event)

    def _publish_system(self, event: SystemEvent) -> None:
        if isinstance(event, Interruption):
            self._remember_interrupt(self._interrupted, (event.session_id, event.turn_id))
            self._interrupt(event.session_id, event.turn_id)
        elif isinstance(event, Cancel):
            self._remember_interrupt(self._cancelled_sessions, event.session_id)
            self._interrupt(event.session_id, None)
        elif isinstance(event, Shutdown):
            self.closed = True
            self._interrupt(None, None)
        for sub in list(self.subscriptions):
            sub._put_system(event)
            if self.closed:
                for putter in sub._putters:
                    if not putter.done():
                        putter.set_result(None)

    def _remember_interrupt(self, table: OrderedDict, key) -> None:
        table[key] = None
        if len(table) > self._remember:
            table.popitem(last=False)

    def _interrupt(self, session_id: str | None, turn_id: int | None) -> None:
        if session_id is not None:
            for sub in list(self.subscriptions):
                sub._purge(session_id, turn_id)
        for sub in list(self.subscriptions):
            if sub.on_interrupt is not None:
                sub.on_interrupt(session_id, turn_id)

    async def join(self) -> None:
        """Wait until every delivered event has been handled (task_done) by its subscriber; so every
        subscription must be read (or unsubscribed) for a join to return."""
        while self._unfinished > 0:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def _finished(self, count: int) -> None:
        self._unfinished -= count
        if self._unfinished <= 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    def stats(self) -> dict[str, dict[str, int]]:
        """Per subscription: queue bound, high-water mark, drops by overflow, drops by interruption."""
        return {
            s.name: {"maxsize": s.maxsize, "high_water": s.high_water, "dropped": s.dropped, "purged": s.purged}
            for s in self.subscriptions
        }
