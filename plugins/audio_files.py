"""Audio files: read and write WAV, FLAC (and the other formats libsndfile knows) through soundfile, at any
sample rate, sample width and channel count. Audio is float32 (channels, samples) in [-1, 1]; see
core/audio.py for conversion to a stage's format (`audio.convert`) or raw PCM (`audio.to_bytes`).

No stage is registered here: the file input/output stages of the event bus build on these functions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from omnivox.core import audio
from omnivox.core.errors import InputError

DEFAULT_SUBTYPE = "PCM_16"


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode an audio file -> (float32 (channels, samples), sample rate). A missing, unreadable,
    corrupt, non-audio or empty file, or one with NaN/Inf samples, raises InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"audio file {path} does not exist", "check the path")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise InputError(
            f"cannot read audio file {path}: {exc}",
            "pass a WAV, FLAC or other libsndfile-readable file (convert MP4/M4A with ffmpeg or sox first)",
        ) from None
    pcm = np.ascontiguousarray(data.T)  # (channels, samples)
    audio.validate(pcm, f"audio file {path}")
    return pcm, int(rate)


def write_audio(path: str | os.PathLike, pcm, rate: int, *, subtype: str | None = DEFAULT_SUBTYPE) -> Path:
    """Write PCM ((samples,) or (channels, samples), float or int) to `path`; the container follows the
    suffix (.wav, .flac, ...), `subtype` is a soundfile subtype ("PCM_16", "PCM_24", "FLOAT", ...; None =
    the container's default). libsndfile clips samples to [-1, 1] for integer subtypes."""
    path = Path(path)
    container = path.suffix.lstrip(".").upper()
    formats = sf.available_formats()
    if container not in formats:
        raise InputError(
            f"cannot write {path}: unknown audio container {path.suffix!r}",
            f"use a suffix among: {', '.join('.' + f.lower() for f in sorted(formats))}",
        )
    if subtype is not None and not sf.check_format(container, subtype):
        raise InputError(
            f"cannot write {path}: {container} does not support subtype {subtype!r}",
            f"use one of: {', '.join(sf.available_subtypes(container))}",
        )
    x = audio.as_float32(pcm, what=f"audio for {path}")  # (channels, samples)
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: folder {path.parent} does not exist", "create it first")
    try:
        sf.write(str(path), x.T, int(rate), subtype=subtype, format=container)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot write audio file {path}: {exc}", "check the rate, subtype and channels") from None
    return path
