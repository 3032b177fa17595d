"""Events: the three classes, the common fields, PCM formats."""

import struct
import time

import numpy as np
import pytest

from omnivox.core.errors import InputError
from omnivox.core.runtime.events import (
    AudioChunk,
    AudioOut,
    AudioStart,
    Cancel,
    CodecFrame,
    ControlEvent,
    DataEvent,
    Error,
    Features,
    Interruption,
    Metrics,
    Shutdown,
    SystemEvent,
    TextToken,
    TurnEnd,
    TurnStart,
    VoiceStarted,
    VoiceStopped,
    same_turn,
)


def test_each_event_is_in_the_class_that_decides_its_fate():
    assert all(issubclass(c, SystemEvent) for c in (Interruption, Error, Cancel, Shutdown))
    assert all(issubclass(c, DataEvent) for c in (AudioChunk, Features, TextToken, CodecFrame, AudioOut))
    assert all(
        issubclass(c, ControlEvent) for c in (AudioStart, VoiceStarted, VoiceStopped, TurnStart, TurnEnd, Metrics)
    )
    assert not issubclass(TextToken, (SystemEvent, ControlEvent))


def test_common_fields_and_monotonic_timestamp():
    before = time.monotonic()
    token = TextToken(42, "hi", step=3, session_id="s1", turn_id=7)
    after = time.monotonic()
    assert (token.session_id, token.turn_id, token.source) == ("s1", 7, "")
    assert before <= token.timestamp <= after
    assert token.turn == ("s1", 7)
    follow = CodecFrame((1, 2, 3, 4, 5, 6, 7), step=4, **same_turn(token))
    assert follow.turn == ("s1", 7) and follow.timestamp >= token.timestamp


def test_error_names_the_stage_and_message():
    err = Error("codec", "RuntimeError: boom", turn_id=2)
    assert (err.stage, err.message, err.fix, err.turn_id) == ("codec", "RuntimeError: boom", None, 2)


def test_s16le_audio_decodes_to_float_frames():
    pcm = struct.pack("<4h", 0, 16384, -32768, 32767)  # 2 stereo frames
    chunk = AudioChunk(pcm, rate=16000, width=2, channels=2)
    assert chunk.frames == 2
    assert chunk.duration_s == pytest.approx(2 / 16000)
    samples = chunk.to_float32()
    assert samples.shape == (2, 2) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, [[0.0, 0.5], [-1.0, 32767 / 32768]])


def test_float32_audio_round_trips():
    values = np.array([0.25, -0.5, 1.0], dtype="<f4")
    out = AudioOut(values.tobytes(), rate=24000, width=4, step=11)
    assert out.frames == 3 and out.step == 11
    np.testing.assert_array_equal(out.to_float32()[:, 0], values)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"audio": b"\0\0", "rate": 16000, "width": 3}, "width 3"),
        ({"audio": b"\0\0\0", "rate": 16000, "width": 2}, "3 bytes"),
        ({"audio": b"\0\0", "rate": 0}, "rate 0"),
        ({"audio": b"\0\0", "rate": 16000, "channels": 0}, "channels 0"),
    ],
)
def test_bad_audio_format_is_an_input_error(kwargs, words):
    with pytest.raises(InputError, match=words) as info:
        AudioChunk(**kwargs)
    assert info.value.fix


def test_audio_start_checks_its_format():
    assert AudioStart(rate=24000, width=4).width == 4
    with pytest.raises(InputError, match="width"):
        AudioStart(rate=24000, width=1)
