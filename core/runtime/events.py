"""Every event that travels on the bus: plain dataclasses in three classes (as in Pipecat).

- SystemEvent: urgent, jumps every queue, never dropped (Interruption, Error, Cancel, Shutdown).
- DataEvent: ordered, dropped when its turn is interrupted (AudioChunk, Features, TextIn, TextToken,
  CodecFrame, AudioOut, Action).
- ControlEvent: ordered, never dropped by an interruption (AudioStart/AudioStop, VoiceStarted/VoiceStopped,
  EndLikely/VoiceResumed, TurnStart/TurnEnd, Metrics, ActionWarning, ActionResult, and the conversation controls
  SetContext, ResetConversation, Played, Withdrawn that a transport feeds and the LM stage consumes:
  docs/conversations.md).

Every event carries `session_id`, `turn_id`, a monotonic `timestamp` (time.monotonic() at creation) and
`source`, the stage that produced it (filled in by the stage runtime when left empty). Events are shared
between subscribers: treat an event as read-only once published (use dataclasses.replace to derive one).
Audio is PCM with Wyoming's fields: `rate` (Hz), `width` (bytes per sample: 2 = s16le, 4 = float32 little
endian), `channels` (interleaved).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnivox.core.errors import InputError

SAMPLE_WIDTHS = {2: "s16le", 4: "float32"}


@dataclass(kw_only=True, slots=True)
class Event:
    session_id: str = "default"
    turn_id: int = 0
    timestamp: float = field(default_factory=time.monotonic)
    source: str = ""

    @property
    def turn(self) -> tuple[str, int]:
        """(session_id, turn_id): the key interruptions and metrics use."""
        return (self.session_id, self.turn_id)


def same_turn(event: Event) -> dict[str, Any]:
    """Keyword arguments that put a new event in `event`'s turn: `TextToken(..., **same_turn(event))`."""
    return {"session_id": event.session_id, "turn_id": event.turn_id}


# ---------------------------------------------------------------------------------------------- system
@dataclass(kw_only=True, slots=True)
class SystemEvent(Event):
    """Urgent: delivered to every subscriber ahead of its queue, never dropped."""


@dataclass(slots=True)
class Interruption(SystemEvent):
    """Stop turn (session_id, turn_id) now: its queued data events are dropped and its work is cancelled."""

    reason: str = "interrupted"


@dataclass(slots=True)
class Cancel(SystemEvent):
    """Stop every turn of `session_id` (the client went away): like an Interruption of all its turns."""

    reason: str = "cancelled"


@dataclass(slots=True)
class Shutdown(SystemEvent):
    """Stop the stages: the pipeline has drained, or the user asked to stop."""

    reason: str = "shutdown"


@dataclass(slots=True)
class Error(SystemEvent):
    """A stage failed while handling turn (session_id, turn_id); the turn was ended with TurnEnd('error')."""

    stage: str
    message: str
    fix: str | None = None


# ------------------------------------------------------------------------------------------------ data
@dataclass(kw_only=True, slots=True)
class DataEvent(Event):
    """Ordered payload; dropped when its turn is interrupted."""


@dataclass(slots=True)
class AudioData(DataEvent):
    """Interleaved PCM: `audio` holds frames x channels samples of `width` bytes each."""

    audio: bytes
    rate: int
    width: int = 2
    channels: int = 1

    def __post_init__(self) -> None:
        check_audio_format(self.rate, self.width, self.channels)
        if len(self.audio) % (self.width * self.channels):
            raise InputError(
                f"{type(self).__name__}: {len(self.audio)} bytes is not a whole number of "
                f"{self.channels}-channel frames of {self.width}-byte samples",
                "send whole frames (len(audio) divisible by width * channels)",
            )

    @property
    def frames(self) -> int:
        return len(self.audio) // (self.width * self.channels)

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    def to_float32(self):
        """The samples as a float32 numpy array in [-1, 1], shape [frames, channels]."""
        import numpy as np

        if self.width == 2:
            samples = np.frombuffer(self.audio, dtype="<i2").astype(np.float32) / 32768.0
        else:
            samples = np.frombuffer(self.audio, dtype="<f4").astype(np.float32)
        return samples.reshape(-1, self.channels)  # [frames, channels]


@dataclass(slots=True)
class AudioChunk(AudioData):
    """Audio coming in (microphone, file, network)."""


@dataclass(slots=True)
class AudioOut(AudioData):
    """Synthesised audio going out; `step` is the LM step whose codes completed it (None if unknown)."""

    step: int | None = None


@dataclass(slots=True)
class Features(DataEvent):
    """Encoder output for one utterance or window: `features` is [frames, dim] (numpy array or tensor)."""

    features: Any
    frames_per_second: float = 50.0


@dataclass(slots=True)
class FeaturesPart(DataEvent):
    """Features of a turn whose audio still arrives (streaming input, core/chunked_encoder.py): frames
    `start`..`start + len(features)` of the Features the turn will end with, final already; the LM may prefill them."""

    features: Any
    start: int = 0


@dataclass(slots=True)
class TextToken(DataEvent):
    """One generated text token; `step` is the LM decode step (0 = first step after the prompt)."""

    token_id: int
    text: str = ""
    step: int = 0


@dataclass(slots=True)
class TextIn(DataEvent):
    """User text for the LM (text-in tasks T1A2 / T1T2)."""

    text: str


@dataclass(slots=True)
class CodecFrame(DataEvent):
    """Codec ids of one LM step or frame: `codes[i]` is the id of audio stream i (slot order of the codec)."""

    codes: tuple[int, ...]
    step: int = 0


@dataclass(slots=True)
class Action(DataEvent):
    """An action the model emitted in its text (docs/actions.md): `name` and its JSON `arguments` (an object);
    `index` numbers the turn's actions from 0, `step` is the LM step whose text closed it. Part of the answer:
    dropped, like its text, when the turn is interrupted before it is delivered."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0
    step: int = 0


# --------------------------------------------------------------------------------------------- control
@dataclass(kw_only=True, slots=True)
class ControlEvent(Event):
    """Ordered markers; they flow through every stage and survive interruptions."""


@dataclass(slots=True)
class AudioStart(ControlEvent):
    rate: int
    width: int = 2
    channels: int = 1

    def __post_init__(self) -> None:
        check_audio_format(self.rate, self.width, self.channels)


@dataclass(slots=True)
class AudioStop(ControlEvent):
    pass


@dataclass(slots=True)
class VoiceStarted(ControlEvent):
    pass


@dataclass(slots=True)
class VoiceStopped(ControlEvent):
    pass


@dataclass(slots=True)
class EndLikely(ControlEvent):
    """A VAD's end-of-turn detector, asked in a pause, found the utterance probably complete (P(complete) =
    `probability`, at least the VAD's `speculate` bar) but not surely enough to end the turn: a client may ask the
    utterance so far on this guess, keep the answer unplayed, and take the question back if VoiceResumed follows
    (plugins/mqtt/device_turns.py). `timestamp`: the end of speech."""

    probability: float = 0.0


@dataclass(slots=True)
class VoiceResumed(ControlEvent):
    """The speaker went on after an EndLikely: the utterance, and its turn, continue."""


@dataclass(slots=True)
class TurnStart(ControlEvent):
    pass


@dataclass(slots=True)
class TurnEnd(ControlEvent):
    """The end of a turn; `reason` is "done", "interrupted" or "error"."""

    reason: str = "done"


@dataclass(slots=True)
class Metrics(ControlEvent):
    """Latency figures of one finished turn (built by omnivox.core.runtime.metrics); steps are LM decode steps;
    None = never happened. first_text_ms, first_audio_ms and wall_s count from the end of the user's speech (the
    turn's VoiceStopped: a VAD's end of speech, a transport's end of the received audio), or from the TurnStart of
    a turn without speech (typed); the *_from_turn_start_ms figures count from the TurnStart whatever the input."""

    first_text_ms: float | None = None
    first_text_step: int | None = None
    first_audio_ms: float | None = None
    first_audio_step: int | None = None
    audio_s: float = 0.0
    wall_s: float = 0.0
    rtf: float | None = None  # wall_s / audio_s
    text_tokens: int = 0
    stage_busy_ms: Mapping[str, float] = field(default_factory=dict)
    reason: str = "done"
    first_text_from_turn_start_ms: float | None = None
    first_audio_from_turn_start_ms: float | None = None


@dataclass(slots=True)
class ActionWarning(ControlEvent):
    """A malformed or unknown action in the model's text was dropped and the turn went on: `code` (kebab-case,
    core/kernel/actions.py ISSUE_CODES: bad-action-json, unknown-action, unclosed-action, ...), `message`,
    `markup` (the start of the dropped action, for diagnosis), `step` (the LM step that revealed it)."""

    code: str
    message: str
    markup: str = ""
    step: int = 0


@dataclass(slots=True)
class ActionResult(ControlEvent):
    """A device's answer to Action `index` of turn (session_id, turn_id): the action's `name` and its JSON
    `result` (e.g. {"ok": true} or {"error": "no such room"}); it enters the session's conversation
    (docs/actions.md). A control event: it outlives an interruption of the turn that asked for it."""

    name: str
    result: Any = None
    index: int | None = None


@dataclass(slots=True)
class SetContext(ControlEvent):
    """The session's context text from now on (None or "": none); its next turn sees it (the LM stage)."""

    text: str | None = None


@dataclass(slots=True)
class ResetConversation(ControlEvent):
    """Drop the session's conversation history (its context stays); the next turn starts afresh."""


@dataclass(slots=True)
class Withdrawn(ControlEvent):
    """The client took turn (session_id, turn_id) back: it asked an utterance on a guess that the speaker had
    finished (EndLikely), the speaker went on, and the whole utterance comes again as a later turn. The turn leaves
    the session's history (the LM stage)."""


@dataclass(slots=True)
class Played(ControlEvent):
    """Turn (session_id, turn_id) was cut after its first `columns` answer columns reached the client (the last
    delivered TextToken/AudioOut step + 1): the session's history keeps only those."""

    columns: int = 0


def check_audio_format(rate: int, width: int, channels: int) -> None:
    """Raise InputError unless (rate, width, channels) describe PCM omnivox can carry."""
    if width not in SAMPLE_WIDTHS:
        raise InputError(
            f"audio sample width {width!r} is not supported",
            "use width=2 (s16le) or width=4 (float32)",
        )
    if not isinstance(rate, int) or rate <= 0:
        raise InputError(f"audio rate {rate!r} must be a positive integer (Hz)", "pass e.g. rate=16000")
    if not isinstance(channels, int) or channels <= 0:
        raise InputError(f"audio channels {channels!r} must be a positive integer", "pass e.g. channels=1")
