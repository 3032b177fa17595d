"""The omnivox MQTT wire protocol, version 1 (docs/mqtt_protocol.md is the reference for other languages).

Topics (`prefix` defaults to "omnivox"; `site` = one device, `session` = one conversation, both
[A-Za-z0-9_-]{1,64}):

    <prefix>/<site>/<session>/in/<event>     device -> service   (session-start goes through a shared
                                                                 subscription; everything else to the owner)
    <prefix>/<site>/<session>/out/<event>    service -> device
    <prefix>/workers/<worker>/status         retained JSON {"version", "worker", "state": online|offline, ...}
                                             (the worker's last will sets "offline")
    <prefix>/workers/<worker>/sessions       retained JSON {"version", "worker", "sessions": [...]}: the sessions
                                             a worker holds, for the other workers only

Payloads: control events are UTF-8 JSON objects with "version": 1 (QoS 1). Audio (`in/audio-chunk`,
`out/audio-out`; QoS 0 allowed) is binary: a 12-byte header, then raw little-endian PCM in the format given by
that turn's `audio-start`:

    bytes 0..3   magic b"OVA" + protocol version byte (b"OVA\\x01")
    bytes 4..7   turn, unsigned 32-bit big-endian (the turn's id, as in its audio-start)
    bytes 8..11  seq, unsigned 32-bit big-endian: 0, 1, 2, ... from each audio-start
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from omnivox.core.runtime.sessions import AUDIO_HEADER as HEADER  # noqa: F401 (the audio frame, as the live API's)
from omnivox.core.runtime.sessions import (
    AUDIO_MAGIC,  # noqa: F401
    ProtocolError,
    check_action_result,
    check_context,
    decode_audio,  # noqa: F401
    encode_audio,  # noqa: F401
    json_object,
    shown,
)

VERSION = 1
PREFIX = "omnivox"

# device -> service
IN_EVENTS = ("session-start", "audio-start", "audio-chunk", "audio-stop", "text", "interrupt", "session-end",
             "context", "reset", "action-result")
# service -> device
OUT_EVENTS = ("session-started", "turn-start", "transcript-chunk", "audio-start", "audio-out", "audio-stop",
              "voice-started", "turn-end", "error", "metrics", "session-ended", "action", "action-warning")
BINARY_EVENTS = ("audio-chunk", "audio-out")
# device -> service control events answered with `unknown-session` when no worker holds their session
ORPHAN_EVENTS = ("audio-start", "audio-stop", "text", "interrupt", "session-end", "context", "reset",
                 "action-result")
# device -> service events never rate-limited, still read while a session is muted
PASS_EVENTS = ("audio-stop", "interrupt", "session-end")
QOS_CONTROL, QOS_AUDIO = 1, 0

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Address:
    """Where a message belongs: site, session, direction ("in" / "out") and event name."""

    site: str
    session: str
    direction: str
    event: str

    @property
    def session_id(self) -> str:
        """The pipeline's session_id: "<site>/<session>"."""
        return f"{self.site}/{self.session}"


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProtocolError(f"bad-{kind}", f"{kind} {shown(value)} is not 1-64 characters of A-Z a-z 0-9 _ -",
                            f"choose a {kind} id made of letters, digits, '_' and '-'")
    return value


def topic(site: str, session: str, direction: str, event: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{site}/{session}/{direction}/{event}"


def session_filter(site: str, session: str, direction: str, prefix: str = PREFIX) -> str:
    """Every event of one session in one direction: `<prefix>/<site>/<session>/<direction>/+`."""
    return f"{prefix}/{site}/{session}/{direction}/+"


def start_filter(site: str | None, group: str, prefix: str = PREFIX) -> str:
    """The shared subscription workers take session starts from (`site` None = every site)."""
    return f"$share/{group}/{prefix}/{site or '+'}/+/in/session-start"


def orphan_filters(site: str | None, group: str, prefix: str = PREFIX) -> list[str]:
    """The shared subscriptions that bring a worker the control messages of any session (every session's owner
    gets them on its own subscription too): how a message to a session no worker holds is answered."""
    return [f"$share/{group}/{prefix}/{site or '+'}/+/in/{event}" for event in ORPHAN_EVENTS]


def muted_filters(site: str, session: str, prefix: str = PREFIX) -> list[str]:
    """What the owner of a muted session still reads of it: its PASS_EVENTS (the broker drops the rest)."""
    return [topic(site, session, "in", event, prefix) for event in PASS_EVENTS]


def status_topic(worker: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/workers/{worker}/status"


def sessions_topic(worker: str, prefix: str = PREFIX) -> str:
    """Where a worker keeps the list of the sessions it holds (retained), for the other workers."""
    return f"{prefix}/workers/{worker}/sessions"


def pool_filter(prefix: str = PREFIX) -> str:
    """Every worker's status and session list."""
    return f"{prefix}/workers/+/+"


def parse_topic(name: str, prefix: str = PREFIX) -> Address:
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != prefix or parts[3] not in ("in", "out"):
        raise ProtocolError("bad-topic", f"topic {name!r} is not {prefix}/<site>/<session>/<in|out>/<event>")
    site, session, direction, event = parts[1:]
    events = IN_EVENTS if direction == "in" else OUT_EVENTS
    address = Address(site, session, direction, event)
    if event not in events:
        raise ProtocolError("unknown-event", f"unknown {direction} event {event!r}",
                            f"valid events: {', '.join(events)}")
    return address


def encode_json(event: str, **fields: Any) -> bytes:
    return json.dumps({"version": VERSION, "event": event, **fields}, separators=(",", ":")).encode()


def decode_json(payload: bytes, event: str, max_bytes: int | None = None) -> dict[str, Any]:
    """The JSON object of a control message (at most `max_bytes`); ProtocolError naming what is wrong."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise ProtocolError("payload-too-large", f"{event}: the payload has {len(payload)} bytes, the limit is "
                            f"{max_bytes}", "send control messages as small JSON objects (long text: shorten it)")
    data = json_object(payload, code="bad-json", subject=f"{event}: payload",
                       fix='send a JSON object such as {"version": 1}')
    version = data.get("version")
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError("unsupported-version", f"{event}: protocol version {shown(version)}, this service "
                            f"speaks {VERSION}", f'put "version": {VERSION} in every JSON payload')
    return data


def field_of(data: dict[str, Any], name: str, kind: type, event: str, default: Any = None) -> Any:
    value = data.get(name, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        what = "an integer" if kind is int else "a string"
        raise ProtocolError("bad-field", f"{event}: field {name!r} must be {what}, got {shown(value)}",
                            f"send {name!r} as {what}")
    return value


def optional_name(data: dict[str, Any], name: str, event: str) -> str | None:
    """An optional id field (e.g. `client`): None when absent, else 1-64 characters of A-Z a-z 0-9 _ -."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProtocolError("bad-field", f"{event}: field {name!r} is {shown(value)}, not 1-64 characters of "
                            "A-Z a-z 0-9 _ -", f"send {name!r} as an id made of letters, digits, '_' and '-'")
    return value


def context_of(data: dict[str, Any], event: str, max_chars: int, required: bool = True) -> str | None:
    """The `context` field (session-start, context): text of at most `max_chars` characters ("" or null: none)."""
    if "context" not in data and required:
        raise ProtocolError("bad-field", f"{event}: field 'context' is missing",
                            'send {"context": "battery forty percent"} ("" or null clears it)')
    return check_context(data.get("context"), f"{event}: field 'context'", max_chars)


def action_result_of(data: dict[str, Any], event: str, next_turn: int) -> tuple[int, str, Any, int | None]:
    """(turn, name, result, index) of an action-result (sessions.check_action_result)."""
    return check_action_result(data, event, next_turn)


