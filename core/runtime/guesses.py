"""Answers begun on a guess, held unplayed until the guess stands (speculative start in a pipeline).

A VAD that speculates (plugins/silero_vad.py `speculate`) ends a turn's audio at a pause it finds probably
complete, before its end-of-turn detector has decided. The encoder and the LM start answering at once; nothing of
the answer may reach the user before the decision. The VAD records each guess in the pipeline's `Guesses`
(shared like the PlaybackState, `shared_guesses(stage.shared)`), and `HoldGuesses`, a stage right after the LM,
holds the guessed turn's events until then:

    VAD: EndLikely, VoiceStopped, AudioStop(T)   -> Guesses: T guessed        HoldGuesses: T's events wait
    VAD: TurnEnd(T) (the turn ended there)       -> Guesses: T stands         HoldGuesses: they go on, restamped
    VAD: Interruption + Withdrawn(T), then T+1   -> Guesses: T withdrawn      HoldGuesses: they are dropped

The answer's first audio then leaves at the later of the decision and the answer's own time, instead of their sum.
A VAD that speculates in a pipeline without HoldGuesses refuses to start (its guesses would be heard). The VAD
decides every guess as audio comes; a stream that stops inside a guessed pause ends it with AudioStop or TurnEnd (as
transports do), which ends the turn there: the guess stands.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import Action, AudioOut, CodecFrame, Event, TextToken
from omnivox.core.runtime.playback import Turn
from omnivox.core.runtime.stage import Stage

KEEP_GUESSES = 256  # decided guesses remembered (their late events are still released or dropped)


class Guesses:
    """Turns asked on a guess: pending, standing (with the decision's time) or withdrawn. Event loop only."""

    def __init__(self) -> None:
        self._turns: collections.OrderedDict[Turn, asyncio.Future] = collections.OrderedDict()
        self.held = False  # a HoldGuesses stage is in the pipeline

    def guessed(self, turn: Turn) -> None:
        self._turns[turn] = asyncio.get_running_loop().create_future()
        while len(self._turns) > KEEP_GUESSES:
            self._turns.popitem(last=False)

    def decide(self, turn: Turn, stands: bool) -> None:
        """The VAD's decision on a guessed turn (a turn never guessed is left alone)."""
        future = self._turns.get(turn)
        if future is not None and not future.done():
            future.set_result(time.monotonic() if stands else None)

    def withdrawn(self, turn: Turn) -> bool:
        """Was `turn` asked on a guess and taken back?"""
        future = self._turns.get(turn)
        return future is not None and future.done() and future.result() is None

    def decision(self, turn: Turn) -> asyncio.Future | None:
        """None for a turn not asked on a guess; else a future of the time the guess stood (None: withdrawn)."""
        return self._turns.get(turn)


def shared_guesses(shared: dict[str, Any]) -> Guesses:
    """The pipeline's Guesses (`Stage.shared`), created on first use (as core/runtime/playback.py's PlaybackState)."""
    guesses = shared.get("guesses")
    if guesses is None:
        guesses = shared["guesses"] = Guesses()
    return guesses


class HoldGuesses(Stage):
    """Holds a guessed turn's answer (text, actions, codec frames, audio) until the guess stands, then passes them on
    (those made before the decision stamped with the time they go on); drops them if the guess was withdrawn.
    Other turns pass at once."""

    consumes = (TextToken, Action, CodecFrame, AudioOut)  # what an answer is made of

    def __init__(self, name: str | None = None):
        super().__init__(name or "hold_guesses")
        self.guesses: Guesses | None = None  # the pipeline's, once attached

    def attach(self, bus: Bus, inputs, shared: dict | None = None) -> Subscription:
        sub = super().attach(bus, inputs, shared)
        self.guesses = shared_guesses(self.shared)
        self.guesses.held = True
        return sub

    async def process(self, event: Event) -> AsyncIterator[Event]:
        decision = self.guesses.decision(event.turn)
        if decision is not None:
            stood_at = await asyncio.shield(decision)  # (an Interruption of the turn cancels the wait, not it)
            if stood_at is None:
                return
            if event.timestamp < stood_at:  # made before the decision: it goes on now
                event = replace(event, timestamp=time.monotonic())
        yield event
