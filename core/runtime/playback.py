"""What the assistant is saying right now, shared between an audio sink and turn detection.

A live sink (speaker) and a turn detector (VAD) run as separate stages and never talk to each other through
the bus: events only flow downstream. Yet the detector must know whether the assistant is speaking (half
duplex ignores the microphone then; full duplex turns speech into a barge-in). Both stages look up the same
`PlaybackState` by name in their pipeline's shared place when attached (`shared_playback(stage.shared,
"default")`): the detector opens a turn when it hands an utterance to the model, the sink closes it when that
turn's answer has finished playing (or was dropped), and counts the frames it handed to the device, so every
party can say where in the output stream something happened. Each pipeline has its own.

Thread-safe: the sink's device callback runs in a PortAudio thread.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

Turn = tuple[str, int]  # (session_id, turn_id)


class PlaybackState:
    """Open turns (handed to the model, answer not finished playing) and the output stream position."""

    def __init__(self, tail_s: float = 0.3, keep_blocks: int = 400):
        self.tail_s = tail_s  # after the last audible sample the room still echoes for about this long
        self.rate = 0  # output stream rate (Hz); 0 until a sink opened one
        self.frames = 0  # frames handed to the output device so far (the recorded output's sample index)
        self.has_sink = False  # set by a live sink; without one nothing is ever "speaking"
        self._open: dict[Turn, None] = {}  # insertion-ordered set
        self._audible_until = 0.0  # monotonic time of the last block with answer audio, + tail
        # the far-end reference for echo checks: (monotonic time handed to the device, float32 block)
        self._played: collections.deque = collections.deque(maxlen=keep_blocks)
        self._lock = threading.Lock()

    # ---- turn detection side ----
    def open_turn(self, turn: Turn) -> None:
        """A turn was handed to the model; it stays open until a live sink has played (or dropped) it."""
        with self._lock:
            if self.has_sink:
                self._open[turn] = None

    def open_turns(self) -> list[Turn]:
        with self._lock:
            return list(self._open)

    def busy(self) -> bool:
        """True while a turn is open (the assistant thinks or speaks) or its last sound may still echo."""
        with self._lock:
            return bool(self._open) or time.monotonic() < self._audible_until

    # ---- sink side ----
    def speaking_until(self, until: float) -> None:
        """A remote sink's estimate: its answer audio plays until monotonic time `until` (then the tail echoes)."""
        with self._lock:
            self._audible_until = max(self._audible_until, until + self.tail_s)

    def close_turn(self, turn: Turn) -> None:
        with self._lock:
            self._open.pop(turn, None)

    def advance(self, frames: int, audible: bool, block: np.ndarray | None = None, at: float | None = None) -> None:
        """The sink handed `frames` more frames to the device at monotonic time `at` (default now); `audible`:
        some of them were answer audio; `block`: those frames, mono, kept as the echo reference."""
        now = time.monotonic() if at is None else at
        with self._lock:
            self.frames += frames
            if audible:
                self._audible_until = now + self.tail_s
            if block is not None:
                self._played.append((now, np.array(block, dtype=np.float32)))

    def played_between(self, start: float, end: float) -> np.ndarray:
        """The samples handed to the device between monotonic times `start` and `end` (float32, at `rate`)."""
        with self._lock:
            blocks = [b for t, b in self._played if start <= t <= end]
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    def position(self) -> int:
        """The output stream position in frames (index into the recorded output)."""
        with self._lock:
            return self.frames


def shared_playback(shared: dict[str, Any], name: str = "default") -> PlaybackState:
    """The PlaybackState called `name` in a pipeline's shared place (`Stage.shared`), created on first use."""
    key = f"playback:{name}"
    state = shared.get(key)
    if state is None:
        state = shared[key] = PlaybackState()
    return state
