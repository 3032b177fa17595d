"""Turn latency metrics from the events a sink sees: time to first text token and to first audio sample
(ms and LM steps), real-time factor, per-stage busy time. One Metrics event per finished turn, and a
printable summary.

Times are taken from event timestamps (set when the producing stage created the event). `first_text_ms`,
`first_audio_ms` and `wall_s` count from the end of the user's speech: the turn's VoiceStopped (a VAD's end of
speech; a transport's end of the received audio), else, for a turn without speech (typed), its TurnStart, else
its first event. `first_text_from_turn_start_ms` and `first_audio_from_turn_start_ms` count from the TurnStart
(else the first event) whatever the input. RTF = wall_s / audio_s, wall_s running to the turn's last data event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omnivox.core.runtime.events import (
    AudioOut,
    DataEvent,
    Event,
    Metrics,
    SystemEvent,
    TextToken,
    TurnEnd,
    TurnStart,
    VoiceStopped,
)


@dataclass
class _Turn:
    opened: float  # its TurnStart, else its first event
    speech_end: float | None = None  # its VoiceStopped
    first_text: TextToken | None = None
    first_audio: AudioOut | None = None
    last_data: float | None = None
    audio_s: float = 0.0
    text_tokens: int = 0

    @property
    def start(self) -> float:
        """The reference of first_*_ms and wall_s: the end of speech, else the turn's start."""
        return self.opened if self.speech_end is None else self.speech_end


class MetricsCollector:
    """Feed it every event the last stage takes from its queue (`observe`); it returns a Metrics event when a
    turn ends (by then every stage has finished that turn, so busy times are complete).
    `stages` (objects with `name` and `busy_s`, i.e. Stage) supply per-stage busy time. `turns` keeps the
    Metrics of the last `history` turns, so a long-running service does not grow with every turn."""

    def __init__(self, stages: Sequence = (), history: int = 10_000):
        self.stages = list(stages)
        self.turns: deque[Metrics] = deque(maxlen=history)
        self._open: dict[tuple[str, int], _Turn] = {}

    def observe(self, event: Event) -> Metrics | None:
        key = (event.session_id, event.turn_id)
        if isinstance(event, (Metrics, SystemEvent)):
            return None
        turn = self._open.get(key)
        if turn is None:
            turn = self._open[key] = _Turn(opened=event.timestamp)
        if isinstance(event, TurnStart):
            turn.opened = event.timestamp
        elif isinstance(event, VoiceStopped):
            turn.speech_end = event.timestamp
        elif isinstance(event, DataEvent):
            turn.last_data = event.timestamp
            if isinstance(event, TextToken):
                turn.text_tokens += 1
                if turn.first_text is None:
                    turn.first_text = event
            elif isinstance(event, AudioOut):
                turn.audio_s += event.duration_s
                if turn.first_audio is None:
                    turn.first_audio = event
        elif isinstance(event, TurnEnd):
            metrics = self._finish(key, self._open.pop(key), event.reason)
            self.turns.append(metrics)
            return metrics
        return None

    def _finish(self, key: tuple[str, int], turn: _Turn, reason: str) -> Metrics:
        def ms(event: Event | None, since: float) -> float | None:
            return None if event is None else max(0.0, (event.timestamp - since) * 1000.0)

        wall_s = 0.0 if turn.last_data is None else max(0.0, turn.last_data - turn.start)
        busy = {s.name: s.busy_s.pop(key, 0.0) * 1000.0 for s in self.stages}
        return Metrics(
            session_id=key[0],
            turn_id=key[1],
            source="metrics",
            first_text_ms=ms(turn.first_text, turn.start),
            first_text_step=None if turn.first_text is None else turn.first_text.step,
            first_audio_ms=ms(turn.first_audio, turn.start),
            first_audio_step=None if turn.first_audio is None else turn.first_audio.step,
            audio_s=turn.audio_s,
            wall_s=wall_s,
            rtf=wall_s / turn.audio_s if turn.audio_s > 0 else None,
            text_tokens=turn.text_tokens,
            stage_busy_ms=busy,
            reason=reason,
            first_text_from_turn_start_ms=ms(turn.first_text, turn.opened),
            first_audio_from_turn_start_ms=ms(turn.first_audio, turn.opened),
        )

    def summary(self) -> str:
        return format_summary(self.turns)


def format_summary(turns: Iterable[Metrics]) -> str:
    """A small table: one line per turn, then busy time per stage summed over the turns."""
    turns = list(turns)
    if not turns:
        return "metrics: no finished turn"

    def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}{unit}"

    def step(value: int | None) -> str:
        return "" if value is None else f" @step {value}"

    lines = [f"{'turn':<16} {'reason':<12} {'first text':<19} {'first audio':<19} {'audio':<8} RTF"]
    for m in turns:
        lines.append(
            f"{f'{m.session_id}:{m.turn_id}':<16} {m.reason:<12} "
            f"{(fmt(m.first_text_ms, ' ms') + step(m.first_text_step)):<19} "
            f"{(fmt(m.first_audio_ms, ' ms') + step(m.first_audio_step)):<19} "
            f"{fmt(m.audio_s, ' s', 2):<8} {fmt(m.rtf, '', 2)}"
        )
    busy: dict[str, float] = {}
    for m in turns:
        for stage, value in m.stage_busy_ms.items():
            busy[stage] = busy.get(stage, 0.0) + value
    if busy:
        lines.append("busy time per stage: " + ", ".join(f"{k} {v:.1f} ms" for k, v in busy.items()))
    return "\n".join(lines)
