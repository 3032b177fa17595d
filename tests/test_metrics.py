"""Turn metrics: one Metrics per finished turn, from the events the last stage sees; bounded history."""

from __future__ import annotations

from omnivox.core.runtime.events import AudioOut, TextToken, TurnEnd, TurnStart
from omnivox.core.runtime.metrics import MetricsCollector


def _turn(collector: MetricsCollector, turn_id: int, t0: float):
    ids = {"session_id": "s", "turn_id": turn_id}
    out = [collector.observe(TurnStart(timestamp=t0, **ids)),
           collector.observe(TextToken(1, "a", step=0, timestamp=t0 + 0.1, **ids)),
           collector.observe(AudioOut(audio=b"\0\0" * 1600, rate=16000, width=2, channels=1, step=3,
                                      timestamp=t0 + 0.25, **ids)),
           collector.observe(TurnEnd(timestamp=t0 + 0.3, **ids))]
    return [m for m in out if m is not None]


def test_one_metrics_per_turn_with_first_text_and_audio_times():
    collector = MetricsCollector()
    (metrics,) = _turn(collector, 1, 100.0)
    assert round(metrics.first_text_ms) == 100 and round(metrics.first_audio_ms) == 250
    assert metrics.first_audio_step == 3 and metrics.audio_s == 0.1 and metrics.text_tokens == 1


def test_history_is_bounded_for_long_running_services():
    collector = MetricsCollector(history=3)
    for turn in range(1, 11):
        _turn(collector, turn, float(turn))
    assert [m.turn_id for m in collector.turns] == [8, 9, 10]
