"""Live audio through PortAudio (`sounddevice`, extra `omnivox[audio]`): a microphone source and a speaker sink.

- `audio_inputs/microphone`: opens the device at its native rate and up to 2 channels, down-mixes and
  resamples each block to the pipeline's rate (16 kHz mono by default) and emits AudioChunks of turn 0 (the
  raw stream; a VAD stage cuts it into turns). The PortAudio callback only copies the block into a bounded
  queue; when the pipeline falls behind the oldest block is dropped and counted (`dropped`).
- `audio_outputs/speaker`: plays each turn's AudioOut through a jitter buffer (playback of a turn starts once
  `jitter_ms` are buffered or the turn has ended; a buffer that runs dry mid-turn is an underrun, counted
  and re-buffered). Between answers it plays silence, so the output is one continuous stream whose frame
  index is shared with the turn detector through the `PlaybackState` named `playback` in the pipeline's shared
  place. An Interruption drops the turn's buffered audio: sound stops within one block. `record=FILE` keeps
  exactly what was handed to the device.

The `audio_device` transport pairs them (what `omnivox listen` runs; not one `omnivox serve` serves).
sounddevice is imported when a stage is set up, never at import time.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnivox.core import audio
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import InputError
from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import AudioChunk, AudioOut, Cancel, Event, Interruption, TurnEnd
from omnivox.core.runtime.playback import PlaybackState, Turn, shared_playback
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.transport import Transport

JITTER_MS = 40  # audio buffered before an answer plays (the default model makes it 2x faster than real time)

RAW_STREAM_TURN = 0  # turn id of the microphone's raw stream; turn detection numbers utterances from 1


# ---- devices ------------------------------------------------------------------------------------------
def _sounddevice():
    try:
        import sounddevice
    except ImportError:
        raise InputError("the audio device stages need the sounddevice package",
                         'pip install "omnivox[audio]" (and the PortAudio library: apt-get install libportaudio2)') \
            from None
    except OSError as exc:  # the package is there but libportaudio is not
        raise InputError(f"PortAudio cannot be loaded: {exc}", "apt-get install libportaudio2") from None
    return sounddevice


def list_devices(kind: str) -> list[dict]:
    """The PortAudio devices usable as `kind` ("input" or "output"), each a dict with index, name, channels
    (max for that direction), rate (default sample rate) and default (the system default for that kind)."""
    sd = _sounddevice()
    key = "max_input_channels" if kind == "input" else "max_output_channels"
    default = sd.default.device[0 if kind == "input" else 1]
    return [dict(index=d["index"], name=d["name"], channels=d[key], rate=int(d["default_samplerate"]),
                 default=d["index"] == default) for d in sd.query_devices() if d[key] > 0]


def describe_devices(kind: str) -> str:
    """One line: the available `kind` devices as `index name`, the default marked with *."""
    found = list_devices(kind)
    if not found:
        return f"no {kind} devices"
    return f"available {kind} devices: " + ", ".join(
        f"{d['index']}{'*' if d['default'] else ''} {d['name']!r}" for d in found)


def resolve_device(spec: str | int | None, kind: str) -> dict:
    """A device by index, exact name or unique case-insensitive name fragment (None = the system default).
    InputError (one line, listing the devices) when there is no such device."""
    devices = list_devices(kind)
    flag = f"--{kind}-device"
    if spec is None or spec == "":
        chosen = [d for d in devices if d["default"]] or devices[:1]
    elif isinstance(spec, int) or str(spec).isdigit():
        chosen = [d for d in devices if d["index"] == int(spec)]
    else:
        chosen = [d for d in devices if d["name"] == spec] or \
                 [d for d in devices if str(spec).lower() in d["name"].lower()]
    if len(chosen) != 1:
        what = "no" if not chosen else f"{len(chosen)} matching"
        wanted = "default" if spec in (None, "") else repr(spec)
        raise InputError(f"{what} {kind} device {wanted}; {describe_devices(kind)}; pass {flag} with one of them")
    return chosen[0]


def _open_error(kind: str, device: dict, exc: Exception) -> InputError:
    return InputError(f"cannot open {kind} device {device['index']} {device['name']!r} ({exc}); it may be busy "
                      f"or not support the format; {describe_devices(kind)}")


# ---- streaming rate conversion ------------------------------------------------------------------------
class StreamResampler:
    """Rate conversion of a live stream block by block, continuous across blocks: an anti-alias low-pass
    (8th-order Butterworth at 0.9 x the new Nyquist, filter state carried over) when going down, then
    linear interpolation at the output instants (position carried over)."""

    def __init__(self, rate_in: int, rate_out: int):
        from scipy.signal import butter, sosfilt_zi

        self.rate_in, self.rate_out = rate_in, rate_out
        self.step = rate_in / rate_out  # input samples per output sample
        self.pos = 0.0  # next output instant, in input samples from the start of the next block
        self.prev = 0.0  # last input sample of the previous block (index -1)
        self.sos = butter(8, 0.9 * rate_out / rate_in, output="sos") if rate_out < rate_in else None
        self.zi = None if self.sos is None else sosfilt_zi(self.sos) * 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 at rate_in -> (m,) float32 at rate_out."""
        if self.rate_in == self.rate_out or len(x) == 0:
            return x.astype(np.float32, copy=False)
        if self.sos is not None:
            from scipy.signal import sosfilt

            x, self.zi = sosfilt(self.sos, x, zi=self.zi)
        n = len(x)
        count = int(np.floor((n - 1 - self.pos) / self.step)) + 1 if n - 1 >= self.pos else 0
        instants = self.pos + self.step * np.arange(count)  # in x's indices, >= -1
        y = np.interp(instants + 1.0, np.arange(n + 1), np.concatenate(([self.prev], x)))
        self.pos = (self.pos + self.step * count) - n
        self.prev = float(x[-1])
        return y.astype(np.float32)


# ---- microphone ---------------------------------------------------------------------------------------
class MicrophoneInput(Stage):
    """Source: the live microphone as s16le mono AudioChunks at `rate` (turn 0 = the raw stream)."""

    def __init__(self, device: str | int | None = None, rate: int = 16000, device_rate: int | None = None,
                 channels: int | None = None, block_ms: int = 20, queue_ms: int = 2000,
                 session_id: str = "default", name: str | None = None):
        super().__init__(name or "mic")
        if block_ms <= 0 or queue_ms < block_ms:
            raise InputError(f"mic block_ms={block_ms}, queue_ms={queue_ms}: need 0 < block_ms <= queue_ms",
                             "use e.g. block_ms=20, queue_ms=2000")
        self.device_spec, self.rate, self.device_rate, self.channels = device, rate, device_rate, channels
        self.block_ms, self.session_id = block_ms, session_id
        self.dropped = 0  # blocks dropped because the pipeline fell behind
        self.overflows = 0  # blocks PortAudio itself reported as overflowed
        self.level_db = -120.0  # RMS of the last block in dBFS (for a level meter)
        self.device: dict | None = None
        self._blocks: collections.deque = collections.deque(maxlen=max(1, queue_ms // block_ms))
        self._stream = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    async def setup(self) -> None:
        sd = _sounddevice()
        self.device = resolve_device(self.device_spec, "input")
        self.device_rate = self.device_rate or self.device["rate"]
        self.channels = self.channels or min(2, self.device["channels"])
        self._loop, self._ready = asyncio.get_running_loop(), asyncio.Event()
        try:  # opened (so a busy device fails now) but started only when the pipeline runs
            self._stream = sd.InputStream(device=self.device["index"], samplerate=self.device_rate,
                                          channels=self.channels, dtype="float32",
                                          blocksize=self.device_rate * self.block_ms // 1000, callback=self._callback)
        except Exception as exc:
            raise _open_error("input", self.device, exc) from None

    def _callback(self, indata, frames, time_info, status) -> None:
        """PortAudio thread: copy the block, never wait. deque(maxlen) drops the oldest block when full."""
        if status.input_overflow:
            self.overflows += 1
        if len(self._blocks) == self._blocks.maxlen:
            self.dropped += 1
        self._blocks.append((time.monotonic(), indata.copy()))  # (frames, channels)
        self._loop.call_soon_threadsafe(self._ready.set)

    async def produce(self):
        resample = StreamResampler(self.device_rate, self.rate)
        fmt = audio.AudioFormat(rate=self.rate, width=2, channels=1)
        self._stream.start()
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._blocks:
                captured_at, block = self._blocks.popleft()
                mono = block.mean(axis=1)  # (frames,)
                self.level_db = float(20 * np.log10(np.sqrt(np.mean(mono ** 2)) + 1e-6))
                pcm = resample(mono)
                if len(pcm):
                    yield AudioChunk(audio=audio.to_bytes(pcm[None, :], fmt), rate=self.rate,
                                     session_id=self.session_id, turn_id=RAW_STREAM_TURN, timestamp=captured_at)

    async def teardown(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


# ---- speaker ------------------------------------------------------------------------------------------
@dataclass
class TurnPlayback:
    """One turn's audio on its way to the device (times are time.monotonic(), positions output frames)."""

    buffered: int = 0  # frames queued, not yet played
    ended: bool = False  # TurnEnd seen: no more audio will come
    playing: bool = False  # past the jitter buffer (False again after an underrun until re-buffered)
    dropped: bool = False  # interrupted: its audio was thrown away
    first_frame: int | None = None
    last_frame: int | None = None  # one past the last frame played
    first_audio_at: float | None = None  # timestamp of its first AudioOut (when the codec made it)
    first_played_at: float | None = None
    finished_at: float | None = None
    underruns: int = 0
    reason: str = "done"


class SpeakerOutput(Stage):
    """Sink: plays AudioOut through a jitter buffer on a PortAudio output stream (see the module doc)."""

    consumes = (AudioOut, TurnEnd)

    def __init__(self, device: str | int | None = None, rate: int | None = 24000, block_ms: int = 20,
                 jitter_ms: int = JITTER_MS, record: str | None = None, playback: str = "default",
                 name: str | None = None):
        super().__init__(name or "speaker")
        if block_ms <= 0 or jitter_ms < 0:
            raise InputError(f"speaker block_ms={block_ms}, jitter_ms={jitter_ms}: need block_ms > 0, jitter_ms >= 0",
                             f"use e.g. block_ms=20, jitter_ms={JITTER_MS}")
        if record is not None and not Path(record).expanduser().resolve().parent.is_dir():
            raise InputError(f"cannot record to {record}: its folder does not exist", "create it first")
        self.device_spec, self.rate, self.block_ms, self.jitter_ms = device, rate, block_ms, jitter_ms
        self.record_path = record
        self.playback_name = playback
        self.playback: PlaybackState = shared_playback(self.shared, playback)  # the pipeline's, once attached
        self.turns: dict[Turn, TurnPlayback] = {}
        self.finished: list[Turn] = []  # turns whose answer has finished playing (or was dropped), in order
        self.underruns = 0
        self.device: dict | None = None
        self._queue: collections.deque = collections.deque()  # [turn, float32 samples, offset]
        self._current: Turn | None = None  # the turn being played (to notice it running dry)
        self._lock = threading.Lock()
        self._resamplers: dict[Turn, StreamResampler] = {}
        self._recorded: collections.deque = collections.deque()
        self._record_file = None
        self._record_task: asyncio.Task | None = None
        self._stream = None

    def attach(self, bus: Bus, inputs, shared: dict | None = None) -> Subscription:
        sub = super().attach(bus, inputs, shared)
        self.playback = shared_playback(self.shared, self.playback_name)
        return sub

    async def setup(self) -> None:
        sd = _sounddevice()
        self.device = resolve_device(self.device_spec, "output")
        if self.rate is None:
            self.rate = self.device["rate"]
        else:
            try:
                sd.check_output_settings(device=self.device["index"], samplerate=self.rate, channels=1)
            except Exception:  # the device does not take the answer's rate: play at its own, resampled
                self.rate = self.device["rate"]
        if self.record_path is not None:
            import soundfile as sf

            self._record_file = sf.SoundFile(self.record_path, "w", samplerate=self.rate, channels=1,
                                             subtype="PCM_16")
            self._record_task = asyncio.create_task(self._write_recording())
        self.playback.rate, self.playback.has_sink = self.rate, True
        try:
            self._stream = sd.OutputStream(device=self.device["index"], samplerate=self.rate, channels=1,
                                           dtype="float32", blocksize=self.rate * self.block_ms // 1000,
                                           callback=self._callback)
        except Exception as exc:
            raise _open_error("output", self.device, exc) from None
        self._stream.start()

    async def process(self, event: Event) -> None:
        key = event.turn
        if isinstance(event, AudioOut):
            if self.interrupted(event):
                return
            x = audio.to_mono(audio.from_bytes(event.audio, audio.AudioFormat(event.rate, event.width,
                                                                              event.channels)))
            if event.rate != self.rate:
                x = self._resamplers.setdefault(key, StreamResampler(event.rate, self.rate))(x)
            with self._lock:
                turn = self.turns.setdefault(key, TurnPlayback())
                if turn.dropped or turn.ended:
                    return
                if turn.first_audio_at is None:
                    turn.first_audio_at = event.timestamp
                self._queue.append([key, x, 0])
                turn.buffered += len(x)
        else:  # TurnEnd: nothing more will come for this turn
            with self._lock:
                turn = self.turns.setdefault(key, TurnPlayback())
                turn.ended, turn.reason = True, event.reason
                if turn.buffered == 0 and not turn.dropped:
                    self._finish(key, turn)
            self._resamplers.pop(key, None)

    async def on_interrupt(self, event: Interruption | Cancel) -> None:
        """Drop the interrupted turn's audio (every turn of the session on Cancel): silent within one block."""
        whole_session = isinstance(event, Cancel)
        with self._lock:
            keys = [k for k in self.turns if k[0] == event.session_id and (whole_session or k[1] == event.turn_id)]
            if not whole_session and event.turn not in self.turns:
                keys.append(event.turn)
            for key in keys:
                turn = self.turns.setdefault(key, TurnPlayback())
                if turn.finished_at is not None:
                    continue
                turn.dropped, turn.reason, turn.buffered = True, "interrupted", 0
                self._finish(key, turn)
                if self._current == key:
                    self._current = None
            self._queue = collections.deque(item for item in self._queue if item[0] not in keys)

    def _finish(self, key: Turn, turn: TurnPlayback) -> None:
        """(lock held) The turn's answer has finished playing, or was dropped."""
        turn.finished_at = time.monotonic()
        self.finished.append(key)
        self.playback.close_turn(key)

    def _callback(self, outdata, frames, time_info, status) -> None:
        """PortAudio thread: fill one block from the jitter buffer (silence where there is nothing to play)."""
        out = outdata[:, 0]
        out[:] = 0.0
        filled = 0
        jitter = self.rate * self.jitter_ms // 1000
        with self._lock:
            start = self.playback.position()
            while filled < frames and self._queue:
                key, samples, offset = item = self._queue[0]
                turn = self.turns[key]
                if not turn.playing:
                    if turn.buffered < jitter and not turn.ended:
                        break  # still filling the jitter buffer
                    turn.playing = True
                take = min(frames - filled, len(samples) - offset)
                out[filled:filled + take] = samples[offset:offset + take]
                if turn.first_frame is None:
                    turn.first_frame, turn.first_played_at = start + filled, time.monotonic()
                filled += take
                turn.buffered -= take
                turn.last_frame = start + filled
                item[2] += take
                if item[2] == len(samples):
                    self._queue.popleft()
                self._current = key
                if turn.buffered == 0 and turn.ended:
                    self._finish(key, turn)
                    self._current = None
            current = None if self._current is None else self.turns[self._current]
            if filled < frames and current is not None and current.playing and current.buffered == 0:
                current.playing = False  # ran dry mid-answer: re-fill the jitter buffer before going on
                current.underruns += 1
                self.underruns += 1
            self.playback.advance(frames, audible=filled > 0, block=out)
        if self._record_file is not None:
            self._recorded.append(out.copy())

    async def _write_recording(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._flush_recording()

    def _flush_recording(self) -> None:
        while self._recorded:
            self._record_file.write(self._recorded.popleft())

    async def teardown(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self._record_task is not None:
            self._record_task.cancel()
            await asyncio.gather(self._record_task, return_exceptions=True)
        if self._record_file is not None:
            self._flush_recording()
            self._record_file.close()
            self._record_file = None


@hookimpl
def register_audio_inputs(registry):
    registry.add("microphone", MicrophoneInput,
                 description="live microphone (PortAudio): native rate resampled, down-mixed, drop-oldest queue")


@hookimpl
def register_audio_outputs(registry):
    registry.add("speaker", SpeakerOutput,
                 description="live speaker (PortAudio): jitter buffer, stops within a block on interruption")


@hookimpl
def register_transports(registry):
    registry.add("audio_device", lambda: Transport(MicrophoneInput, SpeakerOutput),
                 description="the live microphone in, the speaker out (PortAudio; `omnivox listen`)")
