"""`audio_inputs/http` and `audio_outputs/http`: the HTTP server as two pipeline stages, so any middle stages
(encoder, LM + strategy, codec) sit between the clients and the server:

    stages:
      - {name: input, plugin: audio_inputs/http, params: {host: 127.0.0.1, port: 60808}}
      - ...                                      # encoder, LM + strategy, codec
      - {name: output, plugin: audio_outputs/http}

The input stage runs the server (omnivox.plugins.http.service) and turns each request into the events of one
turn (session_id "http-<hex>"); it forwards every event it receives from its inputs, so it can follow another
source (MQTT) in one pipeline. The output stage hands each HTTP session's TextToken, AudioOut, TurnEnd, Error
and Metrics to the waiting request (its server found by `service` name in the pipeline's shared place) and
ignores other sessions.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import AudioOut, Error, Event, Metrics, TextToken, TurnEnd
from omnivox.core.runtime.sessions import Limits
from omnivox.core.runtime.transport import ServeOptions, Transport, TransportInput, TransportOutput
from omnivox.plugins.http.service import HttpConfig, HttpService, parse_address


class HttpAudioInput(TransportInput):
    """Source: runs the HTTP server; every request becomes the events of one turn (never ends by itself)."""

    transport = "http"

    def __init__(self, host: str = "127.0.0.1", port: int = 60808, max_body_bytes: int = 8 * 1024 * 1024,
                 limits: dict | None = None, service: str = "http", name: str | None = None):
        super().__init__(service, name)
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be >= 1, got {max_body_bytes}", "use e.g. 8388608 (8 MiB)")
        self.config = HttpConfig(host=host, port=port, limits=Limits.from_mapping(limits or {}),
                                 max_body_bytes=max_body_bytes)

    async def open_service(self, feed) -> HttpService:
        service = HttpService(self.config, feed=feed)
        await service.start()  # listening once set up (a port 0 is bound then)
        return service

    async def close_service(self) -> None:
        await self.service.stop()

    def announcement(self) -> str:
        return f"HTTP on {self.service.url} (POST /chat, POST /v1/chat, page at /)"


class HttpAudioOutput(TransportOutput):
    """Sink: hands each HTTP session's answer events, Errors and Metrics to its request as they stream."""

    consumes = (TextToken, AudioOut, TurnEnd)
    transport = "http"

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


# ---- `omnivox serve --http [HOST:]PORT` ------------------------------------------------------------------------
def add_serve_options(parser: argparse.ArgumentParser) -> None:
    http = parser.add_argument_group(
        "HTTP", "An HTTP server answering upstream Mini-Omni's POST /chat (a streamed WAV), POST /v1/chat (JSON "
        "events) and a browser page at /.")
    http.add_argument("--http", metavar="[HOST:]PORT",
                      help="serve HTTP on this address (Mini-Omni's port is 60808; host default 127.0.0.1)")


def serve_params(values: Mapping) -> dict:
    """Parameters of the audio_inputs/http stage from serve's settings; ConfigError for a bad address."""
    try:
        host, port = parse_address(str(values["http"]))
    except ValueError as exc:
        raise ConfigError(str(exc), "e.g. --http 60808 or --http 0.0.0.0:60808") from None
    params = {"host": host, "port": port}
    if values.get("limits"):
        params["limits"] = values["limits"]
    return params


def http_transport() -> Transport:
    return Transport(HttpAudioInput, HttpAudioOutput,
                     ServeOptions(keys=("http",), add=add_serve_options, params=serve_params,
                                  enabled=lambda values: values.get("http") is not None))


@hookimpl
def register_transports(registry):
    registry.add("http", http_transport, description="Mini-Omni-compatible HTTP server: `omnivox serve --http PORT`")
