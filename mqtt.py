"""`omnivox.mqtt`: the device-side MQTT client (see omnivox.plugins.mqtt.client and docs/mqtt_protocol.md).

    from omnivox.mqtt import Client
    async with Client("mqtt://broker:1883", site="kitchen") as client:
        answer = await (await client.session()).ask(wav="question.wav")

A device that hears all the time cuts its questions itself with `DeviceTurns` (the VAD and end-of-turn detector
of `omnivox listen`). Importing this module needs the `mqtt` extra (aiomqtt); `import omnivox` alone never loads it.
"""

from omnivox.plugins.mqtt.client import Answer, Client, Reply, ServiceError, Session, Turn
from omnivox.plugins.mqtt.device_turns import DeviceTurns
from omnivox.plugins.mqtt.protocol import VERSION as PROTOCOL_VERSION

__all__ = ["Answer", "Client", "DeviceTurns", "PROTOCOL_VERSION", "Reply", "ServiceError", "Session", "Turn"]
