"""`audio_inputs/http` and `audio_outputs/http`: the HTTP server as two pipeline stages, so any middle stages
(encoder, LM + strategy, codec) sit between the clients and the server:

    stages:
      - {name: input, plugin: audio_inputs/http, params: {host: 127.0.0.1, port: 60808}}
      - ...                                      # encoder, LM + strategy, codec
      - {name: output, plugin: audio_outputs/http}

The input stage runs the server (omnivox.plugins.http.service) and turns each request into the events of one
turn (session_id "http-<hex>"); it forwards every event it receives from its inputs, so it can follow another
source (MQTT) in one pipeline. The output stage hands each HTTP session's TextToken, AudioOut, Action,
ActionWarning, TurnEnd, Error and Metrics to the waiting request (its server found by `service` name in the
pipeline's shared place) and ignores other sessions.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import Action, ActionWarning, AudioOut, Error, Event, Metrics, TextToken, TurnEnd
from omnivox.core.runtime.sessions import Limits
from omnivox.core.runtime.transport import ServeOptions, Transport, TransportInput, TransportOutput
from omnivox.plugins.http.service import (
    HttpConfig,
    HttpService,
    check_timeout,
    check_token,
    parse_address,
    tls_context,
)


class HttpAudioInput(TransportInput):
    """Source: runs the HTTP server; every request becomes the events of one turn (never ends by itself).
    `tls_cert` + `tls_key` (PEM files): HTTPS; `token`: required as `Authorization: Bearer <token>`;
    `request_timeout_s`: how long a body may take to arrive (and a stalled client to resume reading);
    `max_conversations`, `conversation_idle_s`: how many `/v1/chat` conversations are kept, and for how long
    without a request; `live_turn_end`: the end-of-turn detector of `/v1/live` sessions (a folder, "default", or
    "off" for the silence rule)."""

    transport = "http"

    def __init__(self, host: str = "127.0.0.1", port: int = 60808, max_body_bytes: int = 8 * 1024 * 1024,
                 limits: dict | None = None, request_timeout_s: float = 120.0, token: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, max_conversations: int = 256,
                 conversation_idle_s: float = 600.0, live_turn_end: str | None = "default", service: str = "http",
                 name: str | None = None):
        super().__init__(service, name)
        if max_body_bytes < 1:
            raise ConfigError(f"max_body_bytes must be >= 1, got {max_body_bytes}", "use e.g. 8388608 (8 MiB)")
        check_timeout(request_timeout_s)
        check_token(token)
        if isinstance(max_conversations, bool) or not isinstance(max_conversations, int) or max_conversations < 1:
            raise ConfigError(f"max_conversations must be a positive integer, got {max_conversations!r}",
                              "use e.g. 256")
        if isinstance(conversation_idle_s, bool) or not isinstance(conversation_idle_s, (int, float)) \
                or not conversation_idle_s > 0:
            raise ConfigError(f"conversation_idle_s must be a positive number, got {conversation_idle_s!r}",
                              "use e.g. 600 (ten minutes)")
        self.config = HttpConfig(host=host, port=port, limits=Limits.from_mapping(limits or {}),
                                 max_body_bytes=max_body_bytes, request_timeout_s=request_timeout_s, token=token,
                                 tls=tls_context(tls_cert, tls_key), max_conversations=max_conversations,
                                 conversation_idle_s=conversation_idle_s,
                                 live_turn_end=None if live_turn_end in (None, "off") else live_turn_end)

    async def open_service(self, feed) -> HttpService:
        service = HttpService(self.config, feed=feed)
        await service.start()  # listening once set up (a port 0 is bound then)
        return service

    async def close_service(self) -> None:
        await self.service.stop()

    def announcement(self) -> str:
        token = "; bearer token required" if self.config.token else ""
        return f"HTTP on {self.service.url} (POST /chat, POST /v1/chat, GET /v1/live, page at /{token})"


class HttpAudioOutput(TransportOutput):
    """Sink: hands each HTTP session's answer events, Errors and Metrics to its request as they stream."""

    consumes = (TextToken, AudioOut, TurnEnd, Action, ActionWarning)
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
# serve's key (option dest) -> the input stage's parameter, besides `http` (the address)
STAGE_PARAMS = {"http_tls_cert": "tls_cert", "http_tls_key": "tls_key", "http_token": "token",
                "http_timeout": "request_timeout_s"}


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    http = parser.add_argument_group(
        "HTTP", "An HTTP server answering upstream Mini-Omni's POST /chat (a streamed WAV), POST /v1/chat (JSON "
        "events) and a browser page at / (docs/http_api.md). Its TLS options are --http-tls-*; --tls-* are the "
        "MQTT client's.")
    http.add_argument("--http", metavar="[HOST:]PORT",
                      help="serve HTTP on this address (Mini-Omni's port is 60808; host default 127.0.0.1)")
    http.add_argument("--http-tls-cert", metavar="PEM",
                      help="serve HTTPS with this certificate (chain), e.g. for the page's microphone on another "
                           "machine; with --http-tls-key")
    http.add_argument("--http-tls-key", metavar="PEM", help="the HTTPS certificate's private key")
    http.add_argument("--http-token", "--token", metavar="TOKEN", default=os.environ.get("OMNIVOX_HTTP_TOKEN") or None,
                      help="require `Authorization: Bearer TOKEN` on every request but the page's files (the page "
                           "asks for it); or set OMNIVOX_HTTP_TOKEN, which `ps` does not show")
    http.add_argument("--http-timeout", metavar="SECONDS", type=float,
                      help="a request's body must arrive within this (else 408), and a client that stops reading "
                           "its answer this long is disconnected (default 120)")


def serve_params(values: Mapping) -> dict:
    """Parameters of the audio_inputs/http stage from serve's settings; ConfigError for a bad address, TLS file,
    token or timeout."""
    try:
        host, port = parse_address(str(values["http"]))
    except ValueError as exc:
        raise ConfigError(str(exc), "e.g. --http 60808 or --http 0.0.0.0:60808") from None
    params = {"host": host, "port": port}
    params.update({stage_key: values[key] for key, stage_key in STAGE_PARAMS.items() if values.get(key) is not None})
    tls_context(params.get("tls_cert"), params.get("tls_key"))
    check_token(params.get("token"))
    check_timeout(params.get("request_timeout_s", 120.0))
    if values.get("limits"):
        params["limits"] = values["limits"]
    return params


def http_transport() -> Transport:
    return Transport(HttpAudioInput, HttpAudioOutput,
                     ServeOptions(keys=("http", *STAGE_PARAMS), add=add_serve_options, params=serve_params,
                                  enabled=lambda values: values.get("http") is not None))


@hookimpl
def register_transports(registry):
    registry.add("http", http_transport, description="Mini-Omni-compatible HTTP server: `omnivox serve --http PORT`")
