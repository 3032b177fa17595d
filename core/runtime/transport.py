"""The stage pair of a network transport (MQTT, HTTP): the input stage runs the transport's service and
registers it by name in the transport's `services` dict; the output stage finds it there and hands it each
session's answer events, plus the Errors and the pipeline's per-turn Metrics of those sessions ("notes"),
which reach it on a second subscription and go to `on_note` in arrival order."""

from __future__ import annotations

import asyncio

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import Error, Event, Metrics, Shutdown
from omnivox.core.runtime.stage import Stage


class TransportOutput(Stage):
    """Sink base of a transport. Subclasses set `transport` (e.g. "mqtt") and `services` (name -> service, filled
    by the input stage), and override `process` (answer events) and `on_note` (Error / Metrics)."""

    transport: str = ""
    services: dict = {}

    def __init__(self, service: str, name: str | None = None):
        super().__init__(name or f"{self.transport}_out")
        self.service_name = service
        self.service = None
        self._notes: Subscription | None = None
        self._sending_note = False

    def attach(self, bus: Bus, inputs) -> Subscription:
        sub = super().attach(bus, inputs)
        # Errors (system events reach every subscription) and the pipeline's per-turn Metrics
        self._notes = bus.subscribe(f"{self.name}:notes", types=(Metrics,), senders=("metrics",), maxsize=256)
        return sub

    async def setup(self) -> None:
        self.service = self.services.get(self.service_name)
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
