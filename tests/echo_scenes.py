"""Echo scenes for the full-duplex echo gate, without devices: the assistant "speaks" a sentence (the speaker's
played blocks go into a PlaybackState with their times), the microphone hears it back delayed and attenuated,
optionally with the user talking over it; the Silero VAD stage runs on the microphone chunks with the same
clock. Used by tests/test_listen.py and benchmarks/bench_listen.py. `stream_turns` streams a recording through
the VAD the same way (tests/test_turn_end.py, benchmarks/bench_turn_end.py)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from omnivox.core import audio
from omnivox.core.runtime.events import AudioChunk, Interruption, TurnEnd, VoiceStopped
from omnivox.core.runtime.playback import PlaybackState
from omnivox.plugins.audio_files import read_audio
from omnivox.plugins.silero_vad import SileroVAD
from omnivox.plugins.sounddevice_io import StreamResampler

SPEAKER_RATE, MIC_RATE, BLOCK_S = 24000, 16000, 0.02


def espeak(text: str, rate: int, voice: str = "en-us") -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "say.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        pcm, native = read_audio(path)
    return audio.resample(pcm[0], native, rate)


def run_scene(vad: SileroVAD, assistant: np.ndarray, *, echo_db: float = -6.0, delay_s: float = 0.08,
              user: np.ndarray | None = None, user_at_s: float = 1.0, seed: int = 0) -> dict:
    """Play `assistant` (24 kHz) while the microphone hears it `delay_s` later at `echo_db` (+ a -60 dBFS noise
    floor, + `user` (16 kHz) from `user_at_s`); returns the times of the VAD's barge-ins (s into the scene) and
    its count of onsets rejected as echo."""
    state = vad.playback = PlaybackState()
    state.has_sink, state.rate = True, SPEAKER_RATE
    state.open_turn(("default", 99))  # the answer being played
    t0 = 1000.0
    block = int(SPEAKER_RATE * BLOCK_S)
    for i in range(0, len(assistant), block):
        state.advance(block, True, assistant[i:i + block], at=t0 + i / SPEAKER_RATE)
    mic = np.zeros(int((len(assistant) / SPEAKER_RATE + 1.0) * MIC_RATE), dtype=np.float32)
    # the room hands the microphone a 44.1 kHz copy; the microphone stage's own resampler brings it to 16 kHz
    room = audio.resample(assistant, SPEAKER_RATE, 44100)
    echo = StreamResampler(44100, MIC_RATE)(room) * 10 ** (echo_db / 20)
    start = int(delay_s * MIC_RATE)
    mic[start:start + len(echo)] += echo[:len(mic) - start]
    if user is not None:
        at = int(user_at_s * MIC_RATE)
        mic[at:at + len(user)] += user[:len(mic) - at]
    mic += np.random.default_rng(seed).standard_normal(len(mic)).astype(np.float32) * 1e-3
    fmt = audio.AudioFormat(MIC_RATE, 2, 1)
    step = int(MIC_RATE * BLOCK_S)
    barge_ins = []  # seconds into the scene
    for i in range(0, len(mic) - step + 1, step):
        chunk = AudioChunk(audio=audio.to_bytes(mic[None, i:i + step], fmt), rate=MIC_RATE,
                           timestamp=t0 + (i + step) / MIC_RATE)
        barge_ins += [(i + step) / MIC_RATE for e in vad.push(chunk) if isinstance(e, Interruption)]
    return {"barge_ins": barge_ins, "echoes": vad.echoes}


def stream_events(vad: SileroVAD, pcm: np.ndarray, rate: int, chunk_s: float, early=None) -> list:
    """What the VAD emits for the mono `pcm` streamed in `chunk_s` chunks stamped with their audio time (as a
    microphone's capture times); `early` goes to each push (SileroVAD.push)."""
    fmt, step, events = audio.AudioFormat(rate, 2, 1), int(chunk_s * rate), []
    for start in range(0, len(pcm), step):
        piece = pcm[start:start + step]
        events += vad.push(AudioChunk(audio=audio.to_bytes(piece[None, :], fmt), rate=rate,
                                       timestamp=(start + len(piece)) / rate), early)
    return events


def stream_turns(vad: SileroVAD, pcm: np.ndarray, rate: int, chunk_s: float) -> list[tuple[float, float]]:
    """(VoiceStopped time, TurnEnd time) in seconds per turn the VAD cut from the streamed `pcm` (stream_events)."""
    events = stream_events(vad, pcm, rate, chunk_s)
    stops = [e.timestamp for e in events if isinstance(e, VoiceStopped)]
    ends = [e.timestamp for e in events if isinstance(e, TurnEnd)]
    return list(zip(stops, ends, strict=True))


def make_vad(echo_gate: bool) -> SileroVAD:
    vad = SileroVAD(duplex="full", echo_gate=echo_gate)
    asyncio.run(vad.setup())
    return vad
