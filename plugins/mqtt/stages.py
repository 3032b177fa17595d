"""`audio_inputs/mqtt` and `audio_outputs/mqtt`: the MQTT service as two pipeline stages, so any middle
stages (VAD, encoder, LM, another codec) sit between the devices and the broker:

    stages:
      - {name: input, plugin: audio_inputs/mqtt, params: {broker: "mqtt://127.0.0.1:1883"}}
      - ...                                      # encoder, LM + strategy, codec
      - {name: output, plugin: audio_outputs/mqtt}

The input stage runs the worker (omnivox.plugins.mqtt.service) and turns device messages into pipeline
events (session_id "<site>/<session>"; a turn's audio-stop becomes VoiceStopped, the end of speech its Metrics
count from, then AudioStop, TurnEnd); the output stage publishes the answer on the same connection (found
by `service` name in the pipeline's shared place): turn-start, transcript-chunk per text token, audio-start +
audio-out per PCM chunk, audio-stop, action / action-warning per Action / ActionWarning, each stage Error and the
turn's Metrics, turn-end (nothing for a session or turn the service already ended). An interrupted turn's
history keeps what was sent: the output feeds Played (the last step it published + 1) back to the LM stage.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.runtime.events import (
    Action,
    ActionWarning,
    AudioOut,
    Error,
    Event,
    Metrics,
    Played,
    TextToken,
    TurnEnd,
    TurnStart,
    VoiceStarted,
)
from omnivox.core.runtime.sessions import Limits
from omnivox.core.runtime.transport import ServeOptions, Transport, TransportInput, TransportOutput
from omnivox.plugins.mqtt.connection import BrokerConfig
from omnivox.plugins.mqtt.service import MqttService, ServiceConfig, default_worker_id


class MqttAudioInput(TransportInput):
    """Source: runs an MQTT worker; every device message becomes pipeline events (never ends by itself)."""

    transport = "mqtt"

    def __init__(self, broker: str = "mqtt://127.0.0.1:1883", site: str | None = None, worker: str | None = None,
                 group: str = "omnivox", prefix: str = "omnivox", username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, keepalive: int = 5, limits: dict | None = None,
                 service: str = "mqtt", name: str | None = None):
        super().__init__(service, name)
        broker_config = BrokerConfig(broker, username=username, password=password, ca_file=ca_file,
                                     cert_file=cert_file, key_file=key_file, keepalive=keepalive)
        self.config = ServiceConfig(broker=broker_config, site=site, worker=worker or default_worker_id(),
                                    group=group, prefix=prefix, limits=Limits.from_mapping(limits or {}))

    async def open_service(self, feed) -> MqttService:
        return MqttService(self.config, feed=feed)

    async def serve(self) -> None:
        await self.service.run()

    def announcement(self) -> str:
        return f"worker {self.config.worker} on {self.config.broker.url}"


class MqttAudioOutput(TransportOutput):
    """Sink: publishes each session's answer to its device as it streams (see the module docstring)."""

    consumes = (TextToken, AudioOut, TurnStart, TurnEnd, VoiceStarted, Action, ActionWarning)
    transport = "mqtt"

    def __init__(self, service: str = "mqtt", name: str | None = None):
        super().__init__(service, name)
        self._audio_seq: dict[tuple[str, int], int] = {}  # turns whose audio-start was sent -> next seq
        self._sent: dict[tuple[str, int], int] = {}  # turn -> the last LM step it published (text or audio)

    async def process(self, event: Event) -> None:
        service, sid, turn = self.service, event.session_id, event.turn_id
        if "/" not in sid:
            return  # not a device session (e.g. an event fed by a test)
        if isinstance(event, TextToken):
            if await service.deliver(sid, "transcript-chunk", turn=turn, text=event.text, token=event.token_id,
                                     step=event.step):
                self._published(event.turn, event.step)
        elif isinstance(event, AudioOut):
            seq = self._audio_seq.get(event.turn)
            if seq is None:
                seq = 0
                await service.deliver(sid, "audio-start", turn=turn, rate=event.rate, width=event.width,
                                      channels=event.channels)
            self._audio_seq[event.turn] = seq + 1
            if await service.send_audio(sid, turn, seq, event.audio) and event.step is not None:
                self._published(event.turn, event.step)
        elif isinstance(event, Action):
            await service.deliver(sid, "action", turn=turn, index=event.index, name=event.name,
                                  arguments=dict(event.arguments), step=event.step)
        elif isinstance(event, ActionWarning):
            await service.deliver(sid, "action-warning", turn=turn, code=event.code, message=event.message,
                                  step=event.step)
        elif isinstance(event, TurnStart):
            await service.deliver(sid, "turn-start", turn=turn)
        elif isinstance(event, VoiceStarted):
            await service.deliver(sid, "voice-started", turn=turn)
        else:  # TurnEnd: audio-stop, the turn's Error / Metrics, then turn-end
            await self._audio_stop(event)
            await self.notes_sent()
            sent = self._sent.pop(event.turn, None)
            if event.reason == "interrupted":  # the history keeps only what reached the device
                service.feed(Played(0 if sent is None else sent + 1, session_id=sid, turn_id=turn))
            await service.end_turn(sid, turn, event.reason)

    def _published(self, turn: tuple[str, int], step: int) -> None:
        self._sent[turn] = max(step, self._sent.get(turn, -1))

    async def _audio_stop(self, event: Event) -> None:
        """The turn's audio-stop, once, if its audio started (at its Metrics or its TurnEnd, whichever is first:
        both come after its last audio)."""
        if self._audio_seq.pop(event.turn, None) is not None:
            await self.service.deliver(event.session_id, "audio-stop", turn=event.turn_id)

    async def on_note(self, event: Error | Metrics) -> None:
        if "/" not in event.session_id:
            return  # not a device session
        if isinstance(event, Error):
            await self.service.deliver(event.session_id, "error", turn=event.turn_id, code="stage-failed",
                                       stage=event.stage, message=event.message, fix=event.fix)
        else:
            await self._audio_stop(event)
            await self.service.deliver(
                event.session_id, "metrics", turn=event.turn_id, worker=self.service.config.worker,
                reason=event.reason, first_text_ms=event.first_text_ms, first_audio_ms=event.first_audio_ms,
                first_audio_step=event.first_audio_step, audio_s=event.audio_s, wall_s=event.wall_s,
                rtf=event.rtf, text_tokens=event.text_tokens, stage_busy_ms=dict(event.stage_busy_ms),
                first_text_from_turn_start_ms=event.first_text_from_turn_start_ms,
                first_audio_from_turn_start_ms=event.first_audio_from_turn_start_ms)


@hookimpl
def register_audio_inputs(registry):
    registry.add("mqtt", MqttAudioInput, description="devices over an MQTT 5 broker (omnivox wire protocol v1)")


@hookimpl
def register_audio_outputs(registry):
    registry.add("mqtt", MqttAudioOutput, description="stream answers back to MQTT devices")


# ---- `omnivox serve`: the MQTT worker's options ---------------------------------------------------------------
# serve's key (option dest) -> the input stage's parameter
STAGE_PARAMS = {"broker": "broker", "site": "site", "worker": "worker", "group": "group", "prefix": "prefix",
                "keepalive": "keepalive", "username": "username", "password": "password", "tls_ca": "ca_file",
                "tls_cert": "cert_file", "tls_key": "key_file"}


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    mqtt = parser.add_argument_group(
        "MQTT (the default transport)", "Devices start sessions through an MQTT 5 broker, speak (or type) questions "
        "and get streamed text and speech back (protocol: docs/mqtt_protocol.md). Workers with the same --group "
        "share the load.")
    mqtt.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default mqtt://127.0.0.1:1883; "
                                       "with another transport: MQTT only when given)")
    mqtt.add_argument("--site", help="serve only this site (device id); default: every site")
    mqtt.add_argument("--worker", help="this worker's id (default: host-pid-random)")
    mqtt.add_argument("--group", help="shared-subscription group of the worker pool (default omnivox)")
    auth = parser.add_argument_group("authentication and TLS (passed to the MQTT client)")
    auth.add_argument("--username")
    auth.add_argument("--password", default=os.environ.get("OMNIVOX_MQTT_PASSWORD"),
                      help="or set OMNIVOX_MQTT_PASSWORD")
    auth.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signed the broker's certificate")
    auth.add_argument("--tls-cert", metavar="PEM", help="client certificate")
    auth.add_argument("--tls-key", metavar="PEM", help="client certificate's key")


def serve_params(values: Mapping) -> dict:
    """Parameters of the audio_inputs/mqtt stage from serve's settings."""
    params = {stage_key: values[key] for key, stage_key in STAGE_PARAMS.items() if values.get(key) is not None}
    params.setdefault("broker", "mqtt://127.0.0.1:1883")
    if values.get("limits"):
        params["limits"] = values["limits"]
    return params


def mqtt_transport() -> Transport:
    return Transport(MqttAudioInput, MqttAudioOutput,
                     ServeOptions(keys=tuple(STAGE_PARAMS), add=add_serve_options, params=serve_params,
                                  enabled=lambda values: bool(values.get("broker")), default=True))


@hookimpl
def register_transports(registry):
    registry.add("mqtt", mqtt_transport, description="devices over an MQTT 5 broker: `omnivox serve [--broker URL]`")
