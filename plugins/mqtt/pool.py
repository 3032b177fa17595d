"""What a worker knows of the other workers on its broker: which are online and which sessions each holds, from
their retained `<prefix>/workers/<worker>/status` and `<prefix>/workers/<worker>/sessions` messages.

A worker publishes its session list before it answers `session-started`, so by the time a device sends its
next message every other worker has seen the claim (one broker delivers one connection's messages in order).
That is how the worker that gets a message to a session it does not hold (through the shared "orphan"
subscriptions) tells "held by another worker: not mine to answer" from "held by nobody: `unknown-session`",
and how a `session-start` for a session held elsewhere is left to its owner.
"""

from __future__ import annotations

from omnivox.core.runtime.sessions import ProtocolError
from omnivox.plugins.mqtt import protocol as wire


class Pool:
    """The other workers (never this one, `me`) and their sessions."""

    def __init__(self, me: str, prefix: str = wire.PREFIX):
        self.me, self.prefix = me, prefix
        self.offline: set[str] = set()  # workers whose status says offline (their session lists are void)
        self.sessions: dict[str, frozenset[str]] = {}  # online worker -> its sessions ("<site>/<session>")

    def observe(self, topic: str, payload: bytes) -> None:
        """A message on `<prefix>/workers/<worker>/<status|sessions>` (an empty payload clears it)."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[2] == self.me:
            return
        worker, kind = parts[2], parts[3]
        try:
            data = wire.decode_json(payload, kind) if payload else {}
        except ProtocolError:
            return
        if kind == "status":
            if data.get("state") == "online":
                self.offline.discard(worker)
            else:
                self.offline.add(worker)
                self.sessions.pop(worker, None)
        elif kind == "sessions" and worker not in self.offline:
            held = data.get("sessions")
            if isinstance(held, list) and held:
                self.sessions[worker] = frozenset(s for s in held if isinstance(s, str))
            else:
                self.sessions.pop(worker, None)

    def holder(self, session_id: str) -> str | None:
        """The other online worker holding `session_id`, if any."""
        return next((worker for worker, held in self.sessions.items() if session_id in held), None)
