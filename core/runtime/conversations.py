"""The LM stage's session memory: one kernel `Conversation` per session (core/kernel/conversation.py), continued
turn after turn through the stage's BatchEngine.

    turn of session s ──► `begin`: wait until s's previous turn ended in the engine ──► s's Conversation
                          (made on demand: memory on, or s has context) ──► engine.submit(conversation=...)
    turn cut (its consumer left before Done) ──► `cut`: the history keeps the answer columns the stage produced
    Cancel(s) (the session ended) ──► `free`
    what a transport calls (through LMStage): reset(s), set_context(s, text), played(s, turn, columns),
    withdrawn(s, turn)

Opt-in: `memory=True` keeps every session's history; `memory=None` follows the model's declared format
(ConversationFormat.memory, off for Mini-Omni checkpoints); without memory a session with context text still gets a
Conversation that keeps only its context. Everything here runs on the stage's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from omnivox.core.kernel.conversation import Conversation
from omnivox.core.kernel.conversation_format import ConversationFormat


class SessionConversations:
    """The conversations of an LMStage's sessions, keyed by session id."""

    def __init__(self, memory: bool | None = False, context: str | None = None):
        self.memory, self.context = memory, context  # context: every new conversation's starting context text
        self.sessions: dict[str, Conversation] = {}
        self._ended: dict[str, asyncio.Event] = {}  # set when a session's turn ends in the engine

    def get(self, session_id: str, model, strategy, create: bool = False) -> Conversation | None:
        """The session's conversation; made when `create`, or when memory is on or a context is set."""
        conversation = self.sessions.get(session_id)
        if conversation is None:
            memory = ConversationFormat.of(model).memory if self.memory is None else self.memory
            if create or memory or self.context:
                conversation = Conversation(model, strategy=strategy, context=self.context, memory=memory)
                self.sessions[session_id] = conversation
        return conversation

    async def begin(self, session_id: str, model, strategy) -> Conversation | None:
        """The conversation the session's next turn continues (None: no memory, no context), once its previous
        turn has ended in the engine (a cut turn leaves the batch at the engine's next step)."""
        conversation = self.get(session_id, model, strategy)
        if conversation is None:
            return None
        ended = self._ended.setdefault(session_id, asyncio.Event())
        while conversation.decoding:
            ended.clear()
            if conversation.decoding:  # the decoder's end is set before its Done is emitted, so `ended` follows
                await ended.wait()
        return conversation

    def watch(self, session_id: str, deliver: Callable, loop: asyncio.AbstractEventLoop) -> Callable:
        """`deliver` (the engine's callback of a turn) that also marks the session's turn as ended."""
        from omnivox.core.kernel.generation import Done

        ended = self._ended.setdefault(session_id, asyncio.Event())

        def watched(piece) -> None:  # called in the engine's thread
            deliver(piece)
            if isinstance(piece, Done | Exception):
                try:
                    loop.call_soon_threadsafe(ended.set)
                except RuntimeError:  # the event loop closed
                    pass

        return watched

    def cut(self, session_id: str, turn_id, columns: int) -> None:
        """The turn was cut after the stage produced its first `columns` answer columns: keep only those."""
        conversation = self.sessions.get(session_id)
        if conversation is not None and conversation.last_turn_id == turn_id:
            conversation.truncate(columns)

    def forget(self, session_id: str, turn_id) -> None:
        """The session's turn `turn_id` was taken back: it leaves the history (when it is the last turn)."""
        conversation = self.sessions.get(session_id)
        if conversation is not None:
            conversation.forget(turn_id)

    def free(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self._ended.pop(session_id, None)
