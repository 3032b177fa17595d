"""The MQTT transport: omnivox as a service robots and edge devices reach through an MQTT 5 broker.

protocol.py (the wire format, v1; docs/mqtt_protocol.md), connection.py (broker URL, auth, TLS),
service.py (the worker: sessions, claims, limits, reconnect), stages.py (`audio_inputs/mqtt`,
`audio_outputs/mqtt`, the `mqtt` transport and its `omnivox serve` options), client.py (the device side;
`omnivox.mqtt` re-exports it), device_turns.py (turn taking on the device: VAD and end-of-turn detector).
"""

import aiomqtt  # noqa: F401  (the `mqtt` extra: without it this plugin is skipped, naming the extra)

from omnivox.plugins.mqtt.stages import register_audio_inputs, register_audio_outputs, register_transports

__all__ = ["register_audio_inputs", "register_audio_outputs", "register_transports"]
