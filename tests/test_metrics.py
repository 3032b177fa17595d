"""Turn metrics: one Metrics per finished turn, from the events the last stage sees; bounded history."""

from __future__ import annotations

from omnivox.core.runtime.events import AudioOut, Metrics, TextToken, TurnEnd, TurnStart, VoiceStopped
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


def _spoken(collector: MetricsCollector, events) -> Metrics:
    """Feed `events` (TurnStart / VoiceStopped at the given times), then first text at 1.1 s, first audio at 1.25 s,
    TurnEnd."""
    ids = {"session_id": "s", "turn_id": 0}
    for event in events:
        assert collector.observe(event) is None
    collector.observe(TextToken(1, "a", step=0, timestamp=1.1, **ids))
    collector.observe(AudioOut(audio=b"\0\0" * 1600, rate=16000, width=2, channels=1, step=3, timestamp=1.25, **ids))
    return collector.observe(TurnEnd(timestamp=1.3, **ids))


def test_a_spoken_turn_counts_from_its_voice_stopped_and_keeps_the_turn_start_figures():
    ids = {"session_id": "s", "turn_id": 0}
    metrics = _spoken(MetricsCollector(), [TurnStart(timestamp=0.0, **ids), VoiceStopped(timestamp=1.0, **ids)])
    assert (round(metrics.first_text_ms), round(metrics.first_audio_ms)) == (100, 250)
    assert (round(metrics.first_text_from_turn_start_ms), round(metrics.first_audio_from_turn_start_ms)) == (1100, 1250)
    assert round(metrics.wall_s, 3) == 0.25  # from the end of speech to the last audio


def test_a_voice_stopped_stamped_before_the_turn_start_is_the_origin_whatever_the_order_seen():
    """HTTP: the body arrived (VoiceStopped's time) before the question was decoded and its TurnStart made."""
    ids = {"session_id": "s", "turn_id": 0}
    metrics = _spoken(MetricsCollector(), [TurnStart(timestamp=1.0, **ids), VoiceStopped(timestamp=0.9, **ids)])
    assert (round(metrics.first_audio_ms), round(metrics.first_audio_from_turn_start_ms)) == (350, 250)


def test_a_turn_without_speech_counts_both_figures_from_its_turn_start():
    collector = MetricsCollector()
    (metrics,) = _turn(collector, 1, 100.0)
    assert metrics.first_text_from_turn_start_ms == metrics.first_text_ms
    assert metrics.first_audio_from_turn_start_ms == metrics.first_audio_ms
    ids = {"session_id": "s", "turn_id": 2}
    collector.observe(TurnStart(timestamp=5.0, **ids))
    silent = collector.observe(TurnEnd(timestamp=5.5, **ids))
    assert silent.first_audio_ms is None and silent.first_audio_from_turn_start_ms is None
