"""PCM helpers: conversion between raw bytes and float32 arrays, validation, mixdown, resampling.

Audio inside omnivox is a float32 array shaped (channels, samples) in [-1, 1] plus its sample rate. On the
wire (events, MQTT) it is raw little-endian PCM described by Wyoming's three fields, `AudioFormat(rate,
width, channels)`: width 2 = s16le, width 4 = float32le; channels interleaved."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from omnivox.core.errors import InputError

# width (bytes per sample) -> little-endian numpy dtype on the wire
_WIRE_DTYPES = {2: np.dtype("<i2"), 4: np.dtype("<f4")}
_INT_SCALE = {np.dtype("int16"): 32768.0, np.dtype("int32"): 2147483648.0, np.dtype("uint8"): 128.0}


@dataclass(frozen=True)
class AudioFormat:
    """Raw PCM layout, as in Wyoming's audio events: `rate` Hz, `width` bytes per sample, `channels`."""

    rate: int
    width: int = 2
    channels: int = 1

    def __post_init__(self) -> None:
        if self.width not in _WIRE_DTYPES:
            raise InputError(f"unsupported PCM width {self.width} bytes", "use width 2 (s16le) or 4 (float32le)")
        if self.rate <= 0 or self.channels <= 0:
            raise InputError(
                f"bad PCM format: rate {self.rate}, channels {self.channels}",
                "give a positive sample rate and channel count",
            )

    @property
    def bytes_per_frame(self) -> int:
        return self.width * self.channels


def from_bytes(raw: bytes, fmt: AudioFormat) -> np.ndarray:
    """Interleaved raw PCM -> float32 (channels, samples)."""
    if len(raw) % fmt.bytes_per_frame:
        raise InputError(
            f"{len(raw)} bytes of PCM is not a whole number of {fmt.bytes_per_frame}-byte frames "
            f"(width {fmt.width} x {fmt.channels} channels)",
            "send whole sample frames, or fix the declared width/channels",
        )
    flat = np.frombuffer(raw, dtype=_WIRE_DTYPES[fmt.width])
    return as_float32(flat.reshape(-1, fmt.channels).T, check=False)


def to_bytes(pcm: np.ndarray, fmt: AudioFormat) -> bytes:
    """float32 (channels, samples) or (samples,) -> interleaved raw PCM; s16le is clipped to [-1, 1]."""
    x = as_float32(pcm, check=False)
    if x.shape[0] != fmt.channels:
        raise InputError(
            f"audio has {x.shape[0]} channels but the format says {fmt.channels}",
            "mix down with to_mono() or declare the right channel count",
        )
    if fmt.width == 2:
        ints = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
        return ints.T.tobytes()
    return x.T.astype("<f4").tobytes()


def as_float32(pcm, *, check: bool = True, what: str = "audio") -> np.ndarray:
    """Any PCM array (numpy or torch; float, int16, int32 or uint8; (samples,) or (channels, samples))
    -> float32 (channels, samples). With `check`, empty or non-finite audio is an InputError."""
    if hasattr(pcm, "detach"):  # torch tensor
        pcm = pcm.detach().cpu().numpy()
    x = np.asarray(pcm)
    if x.dtype in _INT_SCALE:
        offset = 128.0 if x.dtype == np.uint8 else 0.0
        x = (x.astype(np.float32) - offset) / _INT_SCALE[x.dtype]
    elif x.dtype.kind != "f":
        raise InputError(f"{what} has dtype {x.dtype}", "pass float, int16, int32 or uint8 PCM samples")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"{what} has shape {x.shape}", "pass (samples,) or (channels, samples)")
    if x.shape[0] > 64 and x.shape[1] <= 64:
        raise InputError(
            f"{what} has shape {x.shape}, which looks like (samples, channels)",
            "transpose it to (channels, samples)",
        )
    if check:
        validate(x, what)
    return x


def validate(pcm: np.ndarray, what: str = "audio") -> None:
    """Raise InputError for empty audio or NaN/Inf samples."""
    if pcm.size == 0:
        raise InputError(f"{what} is empty (0 samples)", "pass at least one sample of audio")
    if not np.isfinite(pcm).all():
        bad = int((~np.isfinite(pcm)).sum())
        raise InputError(f"{what} has {bad} NaN/Inf samples", "clean the signal (e.g. np.nan_to_num) first")


def to_mono(pcm: np.ndarray) -> np.ndarray:
    """(channels, samples) -> (samples,), the mean of the channels."""
    return pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]


def resampled_length(num_samples: int, rate_in: int, rate_out: int) -> int:
    """Length of `resample()`'s output for `num_samples` input samples: ceil(n * out / in)."""
    _check_rates(rate_in, rate_out)
    g = math.gcd(rate_in, rate_out)
    return -(-num_samples * (rate_out // g) // (rate_in // g))


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy.signal.resample_poly, Kaiser window)."""
    _check_rates(rate_in, rate_out)
    if rate_in == rate_out:
        return pcm
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(pcm, rate_out // g, rate_in // g, axis=-1).astype(np.float32)


def _check_rates(rate_in: int, rate_out: int) -> None:
    if not all(isinstance(r, numbers.Integral) and r > 0 for r in (rate_in, rate_out)):
        raise InputError(f"bad sample rate {rate_in!r} -> {rate_out!r}", "give positive integer sample rates in Hz")


def convert(pcm, rate: int, *, to_rate: int, mono: bool, what: str = "audio") -> np.ndarray:
    """Bring any PCM to a stage's format: validated float32 at `to_rate`, (samples,) if `mono`
    else (channels, samples)."""
    x = as_float32(pcm, what=what)
    if mono:
        x = to_mono(x)
    return resample(x, rate, to_rate)
