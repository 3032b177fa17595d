"""WAV in and out of the HTTP transport: the question a client posts (base64 WAV, any rate and channel count
libsndfile reads) and the header of the streamed answer.

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

from omnivox.core.runtime.sessions import ProtocolError

UNKNOWN_SIZE = 0xFFFFFFFF


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
    wrong (bad-audio-field, not-base64, not-audio)."""
    import soundfile as sf

    if not isinstance(value, str) or not value:
        raise ProtocolError("bad-audio-field", f"`audio` must be a non-empty base64 string, got {type(value).__name__}",
                            'send {"audio": base64.b64encode(wav_bytes).decode()}')
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProtocolError("not-base64", "`audio` is not valid base64",
                            "encode the WAV file's bytes with standard base64 (RFC 4648)") from None
    try:
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)  # [frames, channels]
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ProtocolError("not-audio", f"`audio` decodes to {len(raw)} bytes that are not a readable audio "
                            f"file ({exc})", "send a WAV file (16-bit PCM, any rate, mono or stereo)") from None
    if not len(samples):
        raise ProtocolError("not-audio", "`audio` holds no samples", "record at least a few hundred milliseconds")
    mono = samples.mean(axis=1)  # [frames]
    pcm = (np.clip(mono, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()
    return Question(pcm, int(rate))


def stream_header(rate: int, channels: int = 1, width: int = 2) -> bytes:
    """The 44-byte header of a streamed PCM WAV of unknown length."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * width, channels * width,
                                    8 * width)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))
