"""Audio files: read and write WAV, FLAC (and the other formats libsndfile knows) through soundfile, at any
sample rate, sample width and channel count. Audio is float32 (channels, samples) in [-1, 1]; see
core/audio.py for conversion to a stage's format (`audio.convert`) or raw PCM (`audio.to_bytes`).

Stages: `audio_inputs/file` (one turn from a file) and `audio_outputs/file` (each turn's speech to a file); the
`file` transport pairs them (`omnivox chat --input`; not one `omnivox serve` serves)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from omnivox.core import audio
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import InputError
from omnivox.core.runtime.events import AudioChunk, AudioOut, AudioStart, AudioStop, Event, TurnEnd, TurnStart
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.transport import Transport

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


# ---- stages -------------------------------------------------------------------------------------------
class FileAudioInput(Stage):
    """Source: one turn from an audio file: TurnStart, AudioStart, s16le AudioChunks of `chunk_ms`,
    AudioStop, TurnEnd. The file is read (and checked) at setup, so a bad path fails before any work."""

    def __init__(self, path: str, chunk_ms: int = 100, session_id: str = "default", turn_id: int = 0,
                 name: str | None = None):
        super().__init__(name or "file_in")
        if chunk_ms <= 0:
            raise InputError(f"chunk_ms must be positive, got {chunk_ms}", "use e.g. 100")
        self.path, self.chunk_ms, self.session_id, self.turn_id = Path(path), chunk_ms, session_id, turn_id
        self._pcm: np.ndarray | None = None
        self._rate = 0

    async def setup(self) -> None:
        self._pcm, self._rate = read_audio(self.path)

    async def produce(self):
        turn = {"session_id": self.session_id, "turn_id": self.turn_id}
        channels = self._pcm.shape[0]
        fmt = audio.AudioFormat(rate=self._rate, width=2, channels=channels)
        step = max(1, self._rate * self.chunk_ms // 1000)
        yield TurnStart(**turn)
        yield AudioStart(rate=self._rate, width=2, channels=channels, **turn)
        for start in range(0, self._pcm.shape[1], step):
            yield AudioChunk(audio=audio.to_bytes(self._pcm[:, start:start + step], fmt), rate=self._rate,
                             width=2, channels=channels, **turn)
        yield AudioStop(**turn)
        yield TurnEnd(reason="done", **turn)


class FileAudioOutput(Stage):
    """Sink: collects a turn's AudioOut and writes it when the turn ends. `path` may hold `{session}` and
    `{turn}` placeholders (otherwise each turn overwrites the file)."""

    consumes = (AudioOut, TurnEnd)

    def __init__(self, path: str, subtype: str = DEFAULT_SUBTYPE, name: str | None = None):
        super().__init__(name or "file_out")
        self.path, self.subtype = path, subtype
        self._audio: dict[tuple[str, int], list[bytes]] = {}
        self._format: dict[tuple[str, int], AudioOut] = {}
        self.written: list[Path] = []

    async def setup(self) -> None:
        folder = Path(self.path.format(session="x", turn=0)).parent
        if not folder.is_dir():
            raise InputError(f"cannot write {self.path}: folder {folder} does not exist", "create it first")

    async def process(self, event: Event):
        key = event.turn
        if isinstance(event, AudioOut):
            self._audio.setdefault(key, []).append(event.audio)
            self._format.setdefault(key, event)
            return
        chunks, first = self._audio.pop(key, []), self._format.pop(key, None)
        if first is None or event.reason != "done":
            return
        fmt = audio.AudioFormat(rate=first.rate, width=first.width, channels=first.channels)
        pcm = audio.from_bytes(b"".join(chunks), fmt)
        path = Path(self.path.format(session=event.session_id, turn=event.turn_id))
        self.written.append(write_audio(path, pcm, first.rate, subtype=self.subtype))


@hookimpl
def register_audio_inputs(registry):
    registry.add("file", FileAudioInput, description="one turn read from an audio file (WAV, FLAC, ...)")


@hookimpl
def register_audio_outputs(registry):
    registry.add("file", FileAudioOutput, description="write each turn's speech to an audio file")


@hookimpl
def register_transports(registry):
    registry.add("file", lambda: Transport(FileAudioInput, FileAudioOutput),
                 description="a question from an audio file in, each turn's speech to a file out")
