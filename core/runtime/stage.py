"""The stage protocol: a stage overrides ONE method and the base runs everything else.

    class Upper(Stage):
        consumes = (TextToken,)

        async def process(self, event):            # async generator: yield 0..n events per input
            yield TextToken(event.token_id, event.text.upper(), step=event.step, **same_turn(event))

`process` may also be a plain coroutine returning None, one event or a list; `Stage.from_function(fn)`
wraps a function from events to events (sync or async) without writing a class. A source (audio input)
overrides `produce()` instead and yields the events it creates on its own.

What the base does:
- runs sessions concurrently: a dispatcher reads the stage's bounded queue (see omnivox.core.runtime.bus) and
  hands each data/control event to its session's worker task (created on the session's first event, reaped
  after WORKER_IDLE_S idle). Events of one session are handled strictly in order, one at a time; different
  sessions overlap (an LM turn of session B does not wait for session A's). Per-session state in a stage
  must therefore be keyed by session (or turn), as the model stages do;
- in each worker, events of `consumes` go to `process`, every other
  data/control event is forwarded unchanged, control events are forwarded after `process` too unless their
  type is listed in `replaces`;
- runs `process` in the session's worker task: an Interruption of that turn cancels the task at its next await
  inside `process` (the cancellation is absorbed and the stage goes on); the base awaits once after every
  yielded event, so a generator yielding one event per decode step stops within one step. Work done in a
  thread (asyncio.to_thread) should check `self.interrupted(event)` per step;
- measures busy time (time spent inside `process`, not waiting for downstream room) per turn;
- turns an exception in `process` into Error(stage=name) + TurnEnd(reason="error") for that turn, skips
  the rest of that turn and keeps running for the next one;
- stops on Shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace
from typing import Any

from omnivox.core.errors import OmnivoxError
from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import (
    Cancel,
    ControlEvent,
    DataEvent,
    Error,
    Event,
    Interruption,
    Shutdown,
    SystemEvent,
    TurnEnd,
    same_turn,
)

log = logging.getLogger(__name__)

_REMEMBER_TURNS = 1024
WORKER_IDLE_S = 2.0  # a session's worker task ends after this long without events


class Stage:
    """Base class of every pipeline stage. Override `process` (or `produce` for a source)."""

    consumes: tuple[type[Event], ...] = (DataEvent,)
    replaces: tuple[type[ControlEvent], ...] = ()  # consumed control events NOT forwarded after process
    queue_size: int = 64
    overflow: str = "block"  # policy of this stage's input queue: "block" or "drop_oldest"

    def __init__(self, name: str | None = None):
        self.name = name or _snake(type(self).__name__)
        self.bus: Bus | None = None
        # (session, turn) -> seconds inside process; the pipeline's metrics pop a turn's entry at its TurnEnd
        # (a sink's own TurnEnd work comes after that: bounded, like _failed)
        self.busy_s: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.busy_total_s = 0.0
        self._sub: Subscription | None = None
        self._workers: dict[str, _SessionWorker] = {}  # session -> the task running its events
        self._dispatcher: asyncio.Task | None = None
        self._crash: BaseException | None = None  # a worker's unexpected exception (a bug): stops the stage
        self._failed: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._source_done: asyncio.Event | None = None
        # What the stages of one pipeline share by key (a transport's service, a PlaybackState): the pipeline's
        # `shared` once attached; a stage on its own has its own.
        self.shared: dict[str, Any] = {}
        # Called with every event this stage takes from its queue; an event it returns is published as
        # sender "metrics". The pipeline sets it on its last stage to compute turn metrics.
        self.observer: Callable[[Event], Event | None] | None = None

    # ---- the method to override -------------------------------------------------------------------
    async def process(self, event: Event) -> AsyncIterator[Event]:
        """Handle one event of `consumes`; yield (or return) the events it produces."""
        raise NotImplementedError(f"{type(self).__name__} consumes {self.consumes} but does not define process()")
        yield  # pragma: no cover  (makes this an async generator, like the overrides)

    async def produce(self) -> AsyncIterator[Event]:
        """Sources only: yield events created by the stage itself (audio read from a file or device)."""
        return
        yield  # pragma: no cover

    # ---- optional hooks ---------------------------------------------------------------------------
    async def setup(self) -> None:
        """Open devices, load models; called once before any event."""

    async def teardown(self) -> None:
        """Release what setup took; called once after the stage stopped."""

    async def on_interrupt(self, event: Interruption | Cancel) -> None:
        """React to an interruption after its work was cancelled (e.g. flush a speaker)."""

    # ---- helpers for process ----------------------------------------------------------------------
    def interrupted(self, event: Event) -> bool:
        """The cancellation flag for `event`'s turn: check it per step in long loops that do not await."""
        return self.bus is not None and self.bus.is_interrupted(event.session_id, event.turn_id)

    async def emit(self, event: Event) -> None:
        """Publish `event` as this stage (sets `source` when empty); waits when downstream is full."""
        if not event.source:
            event.source = self.name
        await self.bus.publish(event, sender=self.name)

    @property
    def is_source(self) -> bool:
        return type(self).produce is not Stage.produce

    @staticmethod
    def from_function(
        fn: Callable[[Event], Any],
        *,
        consumes: Iterable[type[Event]] = (DataEvent,),
        name: str | None = None,
    ) -> Stage:
        """A stage calling `fn(event)` for each consumed event. `fn` may be sync or async and return None,
        an event or an iterable of events, or be an async generator function."""
        return FunctionStage(fn, consumes=consumes, name=name)

    # ---- runtime (used by Pipeline and omnivox.core.runtime.testing) --------------------------------------
    def attach(self, bus: Bus, inputs: Iterable[str], shared: dict[str, Any] | None = None) -> Subscription:
        """Subscribe to every data/control event sent by the stages named in `inputs`; `shared`: the pipeline's
        shared place (kept as `self.shared`). A stage that looks something up there overrides this."""
        self.bus = bus
        if shared is not None:
            self.shared = shared
        self._sub = bus.subscribe(
            self.name,
            types=(Event,),
            senders=tuple(inputs),
            maxsize=self.queue_size,
            overflow=self.overflow,
            on_interrupt=self._cancel_turn,
        )
        self._source_done = asyncio.Event()
        return self._sub

    async def wait_source_done(self) -> None:
        """Return when `produce` has finished (at once for a stage that is not a source)."""
        await self._source_done.wait()

    async def run(self) -> None:
        """Handle events until Shutdown (the pipeline calls setup/teardown around this)."""
        producer = asyncio.create_task(self._produce()) if self.is_source else None
        if producer is None:
            self._source_done.set()
        self._dispatcher = asyncio.current_task()
        try:
            await self._dispatch()
        except asyncio.CancelledError:
            if self._crash is None:
                raise
            raise RuntimeError(f"stage {self.name!r} failed outside process()") from self._crash
        finally:
            workers = [w.task for w in self._workers.values()]
            for task in workers:
                task.cancel()
            if producer is not None and not producer.done():
                producer.cancel()
                workers.append(producer)
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers.clear()
            self._source_done.set()

    async def _dispatch(self) -> None:
        """Read the stage's queue: system events are handled here at once; every other event goes to its
        session's worker (created on demand), so sessions run concurrently and each stays in order."""
        sub = self._sub
        while True:
            event = await sub.get()
            if not isinstance(event, SystemEvent):
                worker = self._workers.get(event.session_id)
                if worker is None:
                    worker = self._workers[event.session_id] = _SessionWorker(self, event.session_id)
                await worker.put(event)  # waits while that session's backlog is full (backpressure)
                continue
            try:
                if self.observer is not None:
                    self.observer(event)  # errors are observed; metrics notes come from data/control events
                if isinstance(event, Shutdown):
                    return
                if isinstance(event, (Interruption, Cancel)):
                    try:
                        await self.on_interrupt(event)
                    except Exception as exc:
                        await self._report(exc, same_turn(event))
            finally:
                sub.task_done()

    async def _handle(self, event: Event) -> None:
        """One data/control event, inside its session's worker task."""
        if self.observer is not None:
            note = self.observer(event)
            if note is not None:
                await self.bus.publish(note, sender="metrics")
        key = (event.session_id, event.turn_id)
        if isinstance(event, self.consumes) and key not in self._failed:
            if isinstance(event, DataEvent) and self.bus.is_interrupted(*key):
                return
            await self._process(event, key)
            if isinstance(event, DataEvent) or isinstance(event, self.replaces):
                return
        elif isinstance(event, DataEvent):
            if key in self._failed or self.bus.is_interrupted(*key):
                return
        await self._forward(event, key)

    async def _forward(self, event: Event, key: tuple[str, int]) -> None:
        if isinstance(event, TurnEnd):
            if key in self._failed:
                return  # this stage already ended the turn with reason "error"
            if event.reason == "done" and self.bus.is_interrupted(*key):
                event = replace(event, reason="interrupted")
        await self.bus.publish(event, sender=self.name)

    async def _process(self, event: Event, key: tuple[str, int]) -> None:
        """Run process() inside the session's worker task; an interruption of `key` cancels that task while
        it is parked inside this call, and the CancelledError is absorbed here (the turn's work is over)."""
        worker = self._workers[event.session_id]
        worker.current, worker.cancel_requested = key, False
        failure = None
        try:
            await self._drive(event, key)
        except asyncio.CancelledError:
            if not worker.cancel_requested:
                raise  # the stage itself is being cancelled
            uncancel = getattr(worker.task, "uncancel", None)  # Python >= 3.11 counts cancel requests
            if uncancel is not None and uncancel() > 0:
                raise
        except Exception as exc:
            failure = exc
        finally:
            worker.current, worker.cancel_requested = None, False
        if failure is not None:  # reported outside the cancellable region
            await self._fail(event, key, failure)

    async def _drive(self, event: Event, key: tuple[str, int]) -> None:
        busy = 0.0
        try:
            start = time.perf_counter()
            result = self.process(event)
            if inspect.isasyncgen(result):
                try:
                    while True:
                        start = time.perf_counter()
                        try:
                            out = await result.__anext__()
                        except StopAsyncIteration:
                            break
                        finally:
                            busy += time.perf_counter() - start
                        await self.emit(out)
                        await asyncio.sleep(0)  # a cancellation point after every produced event
                except BaseException:
                    await result.aclose()
                    raise
            else:
                out = await result if inspect.isawaitable(result) else result
                busy += time.perf_counter() - start
                for item in _as_events(out, self.name):
                    await self.emit(item)
        finally:
            self.busy_s[key] = self.busy_s.get(key, 0.0) + busy
            self.busy_total_s += busy
            if len(self.busy_s) > _REMEMBER_TURNS:
                self.busy_s.popitem(last=False)

    async def _fail(self, event: Event, key: tuple[str, int], exc: BaseException) -> None:
        log.warning("stage %r failed on %s of turn %s", self.name, type(event).__name__, key, exc_info=exc)
        self._failed[key] = None
        if len(self._failed) > _REMEMBER_TURNS:
            self._failed.popitem(last=False)
        await self._report(exc, same_turn(event))
        await self.emit(TurnEnd(reason="error", **same_turn(event)))

    async def _report(self, exc: Exception, turn: dict[str, Any]) -> None:
        """Publish an Error naming this stage (an OmnivoxError keeps its problem and fix)."""
        if isinstance(exc, OmnivoxError):
            message, fix = exc.problem, exc.fix
        else:
            message, fix = f"{type(exc).__name__}: {exc}", None
        await self.emit(Error(self.name, message, fix, **turn))

    async def _produce(self) -> None:
        try:
            async for out in self.produce():
                if self.bus.closed:
                    return
                await self.emit(out)
                await asyncio.sleep(0)  # let the stages downstream (and a Shutdown) run
        except Exception as exc:  # a source that fails stops; the pipeline drains and reports the Error
            log.warning("source stage %r failed", self.name, exc_info=exc)
            await self._report(exc, {})
        finally:
            self._source_done.set()

    def _worker_done(self, task: asyncio.Task) -> None:
        """A session worker ended: an exception escaping it is a bug in the stage machinery; stop the stage."""
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()
            self._dispatcher.cancel()

    def _cancel_turn(self, session_id: str | None, turn_id: int | None) -> None:
        """Bus callback for Interruption/Cancel/Shutdown: cancel the running process() of that turn (every
        turn of the session when turn_id is None; of every session when session_id is None)."""
        workers = self._workers.values() if session_id is None else [self._workers.get(session_id)]
        for worker in workers:
            if worker is None or worker.current is None or worker.cancel_requested:
                continue
            if session_id is None or turn_id is None or worker.current[1] == turn_id:
                worker.cancel_requested = True
                worker.task.cancel()


class _SessionWorker:
    """The task running one session's events through a stage, in order. Its backlog is bounded by the
    stage's queue_size; it ends itself after WORKER_IDLE_S without events (reaped: a new one starts on the
    session's next event) and when the bus closes."""

    def __init__(self, stage: Stage, session_id: str):
        self.stage, self.session_id = stage, session_id
        self.backlog: deque[Event] = deque()
        self.current: tuple[str, int] | None = None  # the turn whose process() is running
        self.cancel_requested = False
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"stage:{stage.name}:{session_id}")
        self.task.add_done_callback(stage._worker_done)

    async def put(self, event: Event) -> None:
        while len(self.backlog) >= self.stage.queue_size and not self.task.done():
            self._room.clear()
            await self._room.wait()
        self.backlog.append(event)
        self._arrived.set()

    async def _run(self) -> None:
        stage, sub = self.stage, self.stage._sub
        try:
            while not stage.bus.closed:
                if not self.backlog:
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), WORKER_IDLE_S)
                    except asyncio.TimeoutError:
                        if not self.backlog:  # nothing arrived: reap this worker (no await before the del)
                            del stage._workers[self.session_id]
                            return
                    continue
                event = self.backlog.popleft()
                self._room.set()
                try:
                    await stage._handle(event)
                finally:
                    sub.task_done()
        finally:
            self._room.set()  # a dispatcher waiting for room must not wait for a worker that ended


class FunctionStage(Stage):
    """A stage around a function from events to events (see Stage.from_function)."""

    def __init__(self, fn: Callable[[Event], Any], *, consumes: Iterable[type[Event]], name: str | None):
        super().__init__(name or _snake(getattr(fn, "__name__", "function")))
        self.fn = fn
        self.consumes = tuple(consumes)

    def process(self, event: Event):
        return self.fn(event)


def _as_events(out: Any, stage: str) -> list[Event]:
    if out is None:
        return []
    if isinstance(out, Event):
        return [out]
    items = list(out)
    for item in items:
        if not isinstance(item, Event):
            raise TypeError(f"stage {stage!r} returned {type(item).__name__}, not an Event")
    return items


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
