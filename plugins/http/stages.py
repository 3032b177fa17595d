"""`audio_inputs/http` and `audio_outputs/http`: the HTTP server as two pipeline stages, so any middle stages
(encoder, LM + strategy, codec) sit between the clients and the server:

    stages:
      - {name: input, plugin: audio_inputs/http, params: {host: 127.0.0.1, port: 60808}}
      - ...                                      # encoder, LM + strategy, codec
      - {name: output, plugin: audio_outputs/http}

The input stage runs the server (omnivox.plugins.http.service) and turns each request into the events of one
turn (session_id "http-<hex>"); it forwards every event it receives from its inputs, so it can follow another
source (MQTT) in one pipeline. The output stage hands each HTTP session's TextToken, AudioOut, TurnEnd, Error
and Metrics to the waiting request (found by `service` name) and ignores other sessions.
"""

from __future__ import annotations

import asyncio

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import AudioOut, Error, Event, Metrics, TextToken, TurnEnd
from omnivox.core.runtime.sessions import Limits
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.transport import TransportOutput
from omnivox.plugins.http.service import SERVICES, HttpConfig, HttpService


class HttpAudioInput(Stage):
    """Source: runs the HTTP server; every request becomes the events of one turn (never ends by itself)."""

    consumes = ()  # events from its inputs (another transport's source) pass through

    def __init__(self, host: str = "127.0.0.1", port: int = 60808, max_body_bytes: int = 8 * 1024 * 1024,
                 limits: dict | None = None, service: str = "http", name: str | None = None):
        super().__init__(name or "http_in")
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be >= 1, got {max_body_bytes}", "use e.g. 8388608 (8 MiB)")
        self.config = HttpConfig(host=host, port=port, limits=Limits.from_mapping(limits or {}),
                                 max_body_bytes=max_body_bytes)
        self.service_name = service
        self.service: HttpService | None = None
        self._events: asyncio.Queue[Event] | None = None

    async def setup(self) -> None:
        self._events = asyncio.Queue()
        service = HttpService(self.config, feed=self._events.put_nowait)
        await service.start()
        self.service = SERVICES[self.service_name] = service  # set once listening

    async def teardown(self) -> None:
        if SERVICES.get(self.service_name) is self.service:
            del SERVICES[self.service_name]
        await self.service.stop()

    async def produce(self):
        while True:
            yield await self._events.get()


class HttpAudioOutput(TransportOutput):
    """Sink: hands each HTTP session's answer events, Errors and Metrics to its request as they stream."""

    consumes = (TextToken, AudioOut, TurnEnd)
    transport, services = "http", SERVICES

    def __init__(self, service: str = "http", name: str | None = None):
        super().__init__(service, name)

    async def process(self, event: Event) -> None:
        self.service.deliver(event)

    async def on_note(self, event: Error | Metrics) -> None:
        self.service.deliver(event)


@hookimpl
def register_audio_inputs(registry):
    registry.add("http", HttpAudioInput, description="Mini-Omni-compatible HTTP server (POST /chat) and web page")


@hookimpl
def register_audio_outputs(registry):
    registry.add("http", HttpAudioOutput, description="stream answers back to HTTP clients")
