"""Broker settings shared by the service and the device client: `mqtt://host:port` / `mqtts://host:port`,
username/password, TLS (CA, client certificate and key) passed through to aiomqtt, MQTT 5 always."""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import urlsplit

from omnivox.core.errors import ConfigError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass
class BrokerConfig:
    """Where and how to connect. `url`: mqtt://host[:port] (TLS: mqtts://, or any ca_file/cert_file)."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # CA bundle to verify the broker (TLS)
    cert_file: str | None = None  # client certificate (TLS client auth)
    key_file: str | None = None  # its private key
    tls_insecure: bool = False  # skip the broker hostname check (self-signed test setups only)
    keepalive: int = 5  # seconds; a silent peer is declared dead after 1.5x this (its last will fires)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(f"broker {self.url!r} is not mqtt://host[:port] or mqtts://host[:port]",
                              "pass e.g. --broker mqtt://127.0.0.1:1883")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"broker {self.url!r}: bad port", "use a port between 1 and 65535")
        self.host = parts.hostname
        self.port = port or DEFAULT_PORTS[parts.scheme]
        self.tls = parts.scheme == "mqtts" or bool(self.ca_file or self.cert_file)
        if parts.username and self.username is None:
            self.username, self.password = parts.username, parts.password
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a TLS client certificate needs both cert_file and key_file",
                              "pass --tls-cert and --tls-key together")

    def client(self, *, identifier: str | None = None, will=None, timeout: float = 5.0):
        """An aiomqtt.Client (MQTT 5, clean start) for these settings; use as `async with`."""
        import aiomqtt

        tls = aiomqtt.TLSParameters(ca_certs=self.ca_file, certfile=self.cert_file,
                                    keyfile=self.key_file) if self.tls else None
        return aiomqtt.Client(self.host, self.port, username=self.username, password=self.password,
                              identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5, will=will,
                              keepalive=self.keepalive, timeout=timeout, tls_params=tls,
                              tls_insecure=self.tls_insecure if self.tls else None)


# CONNACK reason codes that retrying cannot fix: bad user name or password, not authorized, banned, bad auth method
REFUSALS = (134, 135, 138, 140)


def refusal(exc: Exception) -> int | None:
    """The CONNACK reason code when `exc` says the broker refused these credentials, else None."""
    import aiomqtt

    code = getattr(getattr(exc, "rc", None), "value", getattr(exc, "rc", None))
    return code if isinstance(exc, aiomqtt.MqttCodeError) and code in REFUSALS else None


class Backoff:
    """Reconnect delays: doubling from `first` to `cap` seconds, with +-20% jitter; reset() after success."""

    def __init__(self, first: float = 0.2, cap: float = 5.0):
        self.first, self.cap, self._next = first, cap, first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        delay, self._next = self._next, min(self.cap, self._next * 2)
        return delay * random.uniform(0.8, 1.2)
