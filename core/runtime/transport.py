"""Transports: the ways into and out of a pipeline (MQTT, HTTP, microphone + speaker, files, ...), added by plugins
through the `register_transports` hook.

A transport plugin defines:
- its input stage, usually a `TransportInput`: a source that opens the transport's service (`open_service(feed)`:
  a server, a broker connection; `feed(event)` hands it the events of what clients send), runs it (`serve()`),
  publishes it in the pipeline's shared place (`Stage.shared`) under its `service` name, says where it listens
  (`announcement()`) and passes through the events of the stages before it (so several transports' sources chain);
- its output stage, usually a `TransportOutput`: a sink that finds that service in the same shared place and hands
  it each session's answer events (`process`) plus the Errors and per-turn Metrics of those sessions (`on_note`,
  in arrival order, on a second subscription);
- a `Transport` naming both stage factories and, when `omnivox serve` can serve it, its `ServeOptions`:

    @hookimpl
    def register_transports(registry):
        registry.add("line", lambda: Transport(LineInput, LineOutput, ServeOptions(...)), description="...")

`omnivox serve` adds every served transport's options, serves those the settings enable (the `default` ones when
none is), builds each one's input from `ServeOptions.params` and prints its announcement. A transport named X
that also registers `audio_inputs/X` and `audio_outputs/X` is usable in pipeline files (and `serve --pipeline`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import Error, Event, Metrics, Shutdown
from omnivox.core.runtime.stage import Stage


@dataclass(frozen=True)
class ServeOptions:
    """What a transport adds to `omnivox serve`. `keys`: its keys of the `--config` YAML, which are also the `dest`s
    of the options `add(parser)` adds (a key without an option is read from the YAML only). `params(values)`: its
    input stage's parameters from the settings (the YAML overridden by the options given; `limits`: the session
    limits), raising ConfigError on a bad value. `enabled(values)`: the settings ask for it. `default`: served
    when the settings enable no transport."""

    keys: tuple[str, ...]
    add: Callable[[argparse.ArgumentParser], None]
    params: Callable[[Mapping[str, Any]], dict]
    enabled: Callable[[Mapping[str, Any]], bool]
    default: bool = False


@dataclass(frozen=True)
class Transport:
    """A registered transport: factories of its input (source) and output (sink) stages, taking keyword params,
    and its `serve` options (None: `omnivox serve` does not offer it)."""

    input: Callable[..., Stage]
    output: Callable[..., Stage]
    serve: ServeOptions | None = None


def _service_key(transport: str, service: str) -> str:
    return f"service:{transport}/{service}"


class TransportInput(Stage):
    """Source base of a transport. Subclasses set `transport` (e.g. "mqtt") and define `open_service`; they may
    override `serve`, `close_service` and `announcement`. Never ends by itself."""

    transport: str = ""
    consumes = ()  # events from its inputs (another transport's source) pass through

    def __init__(self, service: str, name: str | None = None):
        super().__init__(name or f"{self.transport}_in")
        self.service_name = service
        self.service = None  # the running service, set once open (what the output stage finds)
        self._events: asyncio.Queue[Event] | None = None

    async def open_service(self, feed: Callable[[Event], None]) -> Any:
        """Create the service (and start it, for one that listens); `feed(event)` (sync, non-blocking) sends the
        events of what clients say into the pipeline."""
        raise NotImplementedError(f"{type(self).__name__} does not define open_service()")

    async def serve(self) -> None:
        """Run the service until cancelled; its return or exception stops the source. Default: nothing to run
        (a server runs by itself once open)."""
        await asyncio.Event().wait()

    async def close_service(self) -> None:
        """Release what open_service took."""

    def announcement(self) -> str:
        """Where the transport listens, for `omnivox serve` to print once the service is open."""
        return f"{self.transport} service {self.service_name!r}"

    async def setup(self) -> None:
        self._events = asyncio.Queue()
        self.service = await self.open_service(self._events.put_nowait)
        self.shared[_service_key(self.transport, self.service_name)] = self.service

    async def teardown(self) -> None:
        key = _service_key(self.transport, self.service_name)
        if self.shared.get(key) is self.service:
            del self.shared[key]
        await self.close_service()

    async def produce(self):
        runner = asyncio.create_task(self.serve(), name=f"{self.transport}:{self.service_name}")
        try:
            while True:
                getter = asyncio.ensure_future(self._events.get())
                done, _ = await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    runner.result()  # the service stopped: raise its error
                    return
                yield getter.result()
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


class TransportOutput(Stage):
    """Sink base of a transport. Subclasses set `transport` (as its input does) and override `process` (answer
    events) and `on_note` (Error / Metrics); `self.service` is the input's service of the same `service` name."""

    transport: str = ""

    def __init__(self, service: str, name: str | None = None):
        super().__init__(name or f"{self.transport}_out")
        self.service_name = service
        self.service = None
        self._notes: Subscription | None = None
        self._sending_note = False

    def attach(self, bus: Bus, inputs, shared: dict[str, Any] | None = None) -> Subscription:
        sub = super().attach(bus, inputs, shared)
        # Errors (system events reach every subscription) and the pipeline's per-turn Metrics
        self._notes = bus.subscribe(f"{self.name}:notes", types=(Metrics,), senders=("metrics",), maxsize=256)
        return sub

    async def setup(self) -> None:
        self.service = self.shared.get(_service_key(self.transport, self.service_name))
        if self.service is None:
            kind = self.transport
            raise ConfigError(f"audio_outputs/{kind}: no {kind.upper()} input named service {self.service_name!r} "
                              "in this pipeline", f"put an audio_inputs/{kind} stage (same `service` param) first")

    async def run(self) -> None:
        notes = asyncio.create_task(self._forward_notes())
        try:
            await super().run()
        finally:
            notes.cancel()
            await asyncio.gather(notes, return_exceptions=True)

    async def on_note(self, event: Error | Metrics) -> None:
        """Send a session's stage Error or turn Metrics to its client."""

    async def notes_sent(self) -> None:
        """Wait until every note received so far went out (e.g. before a turn's end is sent)."""
        while len(self._notes) or self._sending_note:
            await asyncio.sleep(0.001)

    async def _forward_notes(self) -> None:
        notes = self._notes
        while True:
            event: Event = await notes.get()
            self._sending_note = True
            try:
                if isinstance(event, Shutdown):
                    return
                if isinstance(event, (Error, Metrics)):
                    await self.on_note(event)
            finally:
                self._sending_note = False
                notes.task_done()
