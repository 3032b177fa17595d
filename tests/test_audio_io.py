"""Audio files (WAV/FLAC at any rate, width, channel count) and the PCM helpers of core/audio.py."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from omnivox.core import audio
from omnivox.core.audio import AudioFormat
from omnivox.core.errors import InputError
from omnivox.plugins.audio_files import read_audio, write_audio


def tone(rate: int, channels: int, seconds: float = 0.25) -> np.ndarray:
    """(channels, samples) float32: a different sine per channel."""
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 220 * (c + 1) * t) for c in range(channels)]).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, subtype, tol",
    [(".wav", "PCM_16", 1 / 32768), (".wav", "PCM_24", 1e-6), (".wav", "FLOAT", 0), (".wav", "PCM_U8", 1 / 128),
     (".flac", "PCM_16", 1 / 32768), (".flac", "PCM_24", 1e-6)],
)  # fmt: skip
@pytest.mark.parametrize("rate, channels", [(8000, 1), (22050, 2), (48000, 6)])
def test_round_trip(tmp_path, suffix, subtype, tol, rate, channels):
    pcm = tone(rate, channels)
    path = write_audio(tmp_path / f"x{suffix}", pcm, rate, subtype=subtype)
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.dtype == np.float32 and back.shape == pcm.shape
    np.testing.assert_allclose(back, pcm, rtol=0, atol=tol)


def test_write_clips_integer_subtypes(tmp_path):
    loud = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]], np.float32)
    back, _ = read_audio(write_audio(tmp_path / "loud.wav", loud, 16000))
    np.testing.assert_allclose(back[0], [-1, -1, 0, 32767 / 32768, 32767 / 32768], atol=1 / 32768)
    back, _ = read_audio(write_audio(tmp_path / "loud_float.wav", loud, 16000, subtype="FLOAT"))
    np.testing.assert_array_equal(back, loud)  # float files keep out-of-range samples


def test_write_accepts_int16_mono(tmp_path):
    ints = np.array([-32768, 0, 16384, 32767], np.int16)
    back, _ = read_audio(write_audio(tmp_path / "i.flac", ints, 11025))
    np.testing.assert_array_equal(back, [ints / 32768.0])


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_reads_a_file_made_by_another_tool(tmp_path):
    path = tmp_path / "sox.wav"
    subprocess.run(["sox", "-n", "-r", "11025", "-b", "24", "-c", "3", str(path), "synth", "0.5", "sine", "440"],
                   check=True)  # fmt: skip
    pcm, rate = read_audio(path)
    assert rate == 11025 and pcm.shape == (3, 5512)
    spectrum = np.abs(np.fft.rfft(pcm[0]))
    assert abs(np.argmax(spectrum) * rate / pcm.shape[1] - 440) < 3


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=f"audio file {tmp_path / 'nope.wav'} does not exist"):
        read_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize(
    "name, content",
    [("corrupt.wav", b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 3), ("notes.txt", b"hello, not audio\n" * 50),
     ("fake.flac", bytes(range(256)) * 8)],
)  # fmt: skip
def test_corrupt_or_non_audio_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"cannot read audio file {path}"):
        read_audio(path)


def test_truncated_file_still_reads_or_fails_clearly(tmp_path):
    path = write_audio(tmp_path / "t.wav", tone(16000, 1), 16000)
    path.write_bytes(path.read_bytes()[:30])  # header cut inside the fmt chunk
    with pytest.raises(InputError, match=str(path)):
        read_audio(path)


def test_empty_and_non_finite_files(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(InputError, match=f"audio file {empty} is empty"):
        read_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([[0.1], [np.nan]], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=f"audio file {nan} has 1 NaN/Inf"):
        read_audio(nan)


def test_write_errors(tmp_path):
    pcm = tone(16000, 1)
    with pytest.raises(InputError, match="unknown audio container '.mp4'") as err:
        write_audio(tmp_path / "x.mp4", pcm, 16000)
    assert ".wav" in err.value.fix and ".flac" in err.value.fix
    with pytest.raises(InputError, match="FLAC does not support subtype 'FLOAT'"):
        write_audio(tmp_path / "x.flac", pcm, 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN/Inf"):
        write_audio(tmp_path / "x.wav", np.array([0.0, np.nan]), 16000)
    with pytest.raises(InputError, match="is empty"):
        write_audio(tmp_path / "x.wav", np.zeros(0), 16000)
    with pytest.raises(InputError, match="does not exist"):
        write_audio(tmp_path / "no" / "x.wav", pcm, 16000)
    assert not list(tmp_path.iterdir())


# --- core/audio.py ---------------------------------------------------------------------------------------


def test_s16le_bytes_are_interleaved():
    pcm = np.array([[0.5, -0.5], [0.25, -1.0]], np.float32)  # (channels=2, samples=2)
    raw = audio.to_bytes(pcm, AudioFormat(16000, 2, 2))
    assert np.frombuffer(raw, "<i2").tolist() == [16384, 8192, -16384, -32768]  # L0 R0 L1 R1
    np.testing.assert_array_equal(audio.from_bytes(raw, AudioFormat(16000, 2, 2)), pcm)


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 4),
    samples=st.integers(0, 50),
    width=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
)
def test_bytes_round_trip(channels, samples, width, seed):
    pcm = np.random.default_rng(seed).uniform(-1, 1, (channels, samples)).astype(np.float32)
    fmt = AudioFormat(24000, width, channels)
    raw = audio.to_bytes(pcm, fmt)
    assert len(raw) == channels * samples * width
    back = audio.from_bytes(raw, fmt)
    np.testing.assert_allclose(back, pcm, atol=1 / 32768 if width == 2 else 0)


def test_bad_formats_and_partial_frames():
    with pytest.raises(InputError, match="unsupported PCM width 3"):
        AudioFormat(16000, 3, 1)
    with pytest.raises(InputError, match="rate 0"):
        AudioFormat(0, 2, 1)
    with pytest.raises(InputError, match="5 bytes of PCM is not a whole number of 4-byte frames"):
        audio.from_bytes(b"\x00" * 5, AudioFormat(16000, 2, 2))
    with pytest.raises(InputError, match="audio has 1 channels but the format says 2"):
        audio.to_bytes(np.zeros(4, np.float32), AudioFormat(16000, 2, 2))


def test_as_float32_scales_integers():
    np.testing.assert_array_equal(audio.as_float32(np.array([-32768, 16384], np.int16)), [[-1.0, 0.5]])
    np.testing.assert_array_equal(audio.as_float32(np.array([0, 128, 255], np.uint8)), [[-1.0, 0.0, 127 / 128]])
    np.testing.assert_array_equal(audio.as_float32(np.array([-(2**31)], np.int32)), [[-1.0]])


def test_mono_and_resample():
    stereo = np.array([[1.0, 0.0], [0.0, -1.0]], np.float32)
    np.testing.assert_array_equal(audio.to_mono(stereo), [0.5, -0.5])
    x = tone(44100, 1, seconds=0.5)[0]
    y = audio.resample(x, 44100, 16000)
    assert y.dtype == np.float32 and len(y) == audio.resampled_length(len(x), 44100, 16000) == 8000
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y)
    assert abs(peak_hz - 220) < 3
    assert audio.resampled_length(7, 44100, 16000) == len(audio.resample(np.ones(7, np.float32), 44100, 16000))


def test_convert_to_a_stage_format():
    stereo = tone(48000, 2)
    out = audio.convert(stereo, 48000, to_rate=24000, mono=True)
    assert out.shape == (6000,)
    kept = audio.convert(stereo, 48000, to_rate=24000, mono=False)
    assert kept.shape == (2, 6000)
    with pytest.raises(InputError, match="empty"):
        audio.convert(np.zeros((1, 0)), 48000, to_rate=24000, mono=True)
