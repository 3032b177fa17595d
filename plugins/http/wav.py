"""WAV in and out of the HTTP transport: the question a client posts (base64 of a RIFF WAV of 16-bit PCM or
32-bit float samples, its declared format within the bounds MQTT's audio-start has) and the header of the
streamed answer.

The answer header announces s16le PCM with RIFF and data sizes of 0xFFFFFFFF ("unknown length": the body is
streamed as the codec produces it); readers that honour the sizes (Python's `wave`, libsndfile, browsers) read
to the end of the body. Upstream Mini-Omni streams the same PCM (s16le, mono, 24 kHz) without a header; its
clients play every byte as PCM, so a posted `"wav_header": false` gives exactly that body.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from dataclasses import dataclass

import numpy as np

from omnivox.core.runtime.sessions import MAX_CHANNELS, MAX_RATE, MIN_RATE, ProtocolError, check_audio_format

UNKNOWN_SIZE = 0xFFFFFFFF
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
SAMPLE_FORMATS = {(1, 16): 2, (3, 32): 4}  # (WAV format tag, bits) -> the sample width MQTT's audio-start names
WAV_FIX = (f"send a WAV file (16-bit PCM or 32-bit float, {MIN_RATE}-{MAX_RATE} Hz, 1 to {MAX_CHANNELS} channels), "
           "base64-encoded")


@dataclass
class Question:
    """A decoded question: s16le mono PCM at `rate` Hz."""

    pcm: bytes
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.rate


def decode_question(value: object) -> Question:
    """The `audio` field of a request (base64 of a WAV file) as mono s16le PCM; ProtocolError naming what is
    wrong (bad-audio-field, not-base64, not-audio, bad-format)."""
    import soundfile as sf

    if not isinstance(value, str) or not value:
        raise ProtocolError("bad-audio-field", f"`audio` must be a non-empty base64 string, got {type(value).__name__}",
                            'send {"audio": base64.b64encode(wav_bytes).decode()}')
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        data_url = " (without the `data:...;base64,` prefix of a data URL)" if value.startswith("data:") else ""
        raise ProtocolError("not-base64", "`audio` is not valid base64",
                            f"encode the WAV file's bytes with standard base64 (RFC 4648){data_url}") from None
    check_declared_format(raw)
    try:
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # [frames, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ProtocolError("not-audio", f"`audio` decodes to {len(raw)} bytes that are not a readable WAV file "
                            f"({exc})", WAV_FIX) from None
    if not len(samples):
        raise ProtocolError("not-audio", "`audio` holds no samples", "record at least a few hundred milliseconds")
    mono = np.nan_to_num(samples.mean(axis=1), nan=0.0)  # [frames]
    pcm = (np.clip(mono, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
    return Question(pcm, int(rate))


def check_declared_format(raw: bytes) -> None:
    """ProtocolError unless `raw` is a RIFF WAV whose fmt chunk declares 16-bit PCM or 32-bit float samples at a
    rate and channel count within the service's bounds (read from the header, before any sample is decoded)."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ProtocolError("not-audio", f"`audio` is not a WAV file (it starts with {raw[:12]!r})", WAV_FIX)
    at = 12
    while at + 8 <= len(raw):
        chunk, size = raw[at:at + 4], struct.unpack_from("<I", raw, at + 4)[0]
        if chunk == b"fmt ":
            if size < 16 or at + 24 > len(raw):
                raise ProtocolError("not-audio", "`audio` is a WAV file whose fmt chunk is cut short", WAV_FIX)
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, at + 8)
            if tag == WAVE_FORMAT_EXTENSIBLE and size >= 40 and at + 34 <= len(raw):
                tag = struct.unpack_from("<H", raw, at + 32)[0]  # the first two bytes of its SubFormat GUID
            width = SAMPLE_FORMATS.get((tag, bits))
            if width is None:
                raise ProtocolError("bad-format", f"`audio` is a WAV of {bits}-bit samples of format {tag:#06x}",
                                    "send 16-bit PCM (format 1) or 32-bit float (format 3) samples")
            check_audio_format(rate, width, channels)
            return
        at += 8 + size + (size & 1)
    raise ProtocolError("not-audio", "`audio` is a WAV file without a fmt chunk", WAV_FIX)


def stream_header(rate: int, channels: int = 1, width: int = 2) -> bytes:
    """The 44-byte header of a streamed PCM WAV of unknown length."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * width, channels * width,
                                    8 * width)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))
