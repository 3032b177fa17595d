"""Turn detection on live audio with Silero VAD (the `silero-vad` package ships its model; extra `omnivox[vad]`).

The stage reads a continuous stream of 16 kHz (or 8 kHz) mono AudioChunks (a microphone's raw stream, or a
file) and cuts it into turns as the audio streams in, 32 ms frame by frame:

    speech for min_speech_ms   -> TurnStart, VoiceStarted, AudioStart, the pre-roll + the speech so far
    ...                         -> AudioChunk per frame
    silence for end_silence_ms -> VoiceStopped (timestamped at the end of speech), AudioStop, TurnEnd

With an end-of-turn detector (`turn_end`: a folder, "default" for the shipped models/turn_end, or a detector
object with `probability(pcm16k) -> float`, e.g. one shared by many sessions; see plugins/turn_end.py), the stage
asks it in each pause, after each of the `turn_end_silence_ms` of silence (64 and 160 ms), whether the utterance
so far is complete: P(complete) >= `turn_end_threshold` (0.9999; or one per ask) ends the turn there; when no
ask did, the turn ends only after `hold_silence_ms` of silence (the speaker paused mid-sentence: wait longer than
the plain rule would); the silence past the last ask is sent only if the speaker goes on (a turn ended at the hold
carries the last ask's 160 ms of silence, not 1000).
With `speculate` (a P(complete) bar below the asks'), an ask that does not end the turn but reaches it emits
EndLikely (once per pause): a client may ask the utterance so far on that guess and keep the answer unplayed; if
the speaker goes on, VoiceResumed follows (the guess is wrong: take it back), else the turn's AudioStop (the guess
stands). plugins/mqtt/device_turns.py does this over MQTT. `speculate=0` guesses at every pause's first ask
before the detector is asked (EndLikely's probability is NaN then), so that the answer and the detector run side by
side; the detector's answer still decides when the turn ends.
In a pipeline the stage does the asking itself: a guess ends the turn's audio there (EndLikely, VoiceStopped,
AudioStop), the encoder and the LM start answering, and the pipeline's Guesses record it; the turn's TurnEnd, when
the VAD ends it, says the guess stands, and `HoldGuesses` (core/runtime/guesses.py) lets its answer go on. If the
speaker goes on, the turn is withdrawn (VoiceResumed, Interruption, Withdrawn: it leaves the conversation) and the
whole utterance so far continues as the next turn (TurnStart, VoiceStarted, AudioStart, its audio in one chunk).
Without a detector, `end_silence_ms` is the rule.

Incoming turn framing (AudioStart/AudioStop/TurnStart/TurnEnd/VoiceStarted/VoiceStopped of the raw stream, e.g.
a transport's) is consumed; utterances
are numbered from 1. Whether the assistant is speaking comes from the `PlaybackState` a live sink keeps (the one
named `playback` in the pipeline's shared place):
- duplex "half": speech while the assistant thinks or speaks (and `tail_s` after) is ignored;
- duplex "full": it is a barge-in: Interruption of every open turn, and the speech becomes the next turn.
  With `echo_gate` (default on), an onset that is mostly a delayed copy of what the speaker played (normalised
  cross-correlation with the played audio >= `echo_similarity`) is taken for the assistant's own echo and
  ignored; speech of the user over it correlates far less and still barges in.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import os
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np

from omnivox.core import audio
from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.errors import ConfigError, InputError
from omnivox.core.runtime.bus import Bus, Subscription
from omnivox.core.runtime.events import (
    AudioChunk,
    AudioStart,
    AudioStop,
    EndLikely,
    Event,
    Interruption,
    TurnEnd,
    TurnStart,
    VoiceResumed,
    VoiceStarted,
    VoiceStopped,
    Withdrawn,
)
from omnivox.core.runtime.guesses import Guesses, shared_guesses
from omnivox.core.runtime.playback import PlaybackState, shared_playback
from omnivox.core.runtime.stage import Stage

FRAME = {16000: 512, 8000: 256}  # Silero's frame length per supported rate (32 ms)
DUPLEX = ("half", "full")
ECHO_DELAY_S = 0.5  # the longest speaker -> microphone delay (device buffers + room) the echo gate looks back
# when the detector is asked in a pause (ms of silence) and the P(complete) that ends the turn at an ask
# (benchmarks/bench_turn_end.py --ask-ms --threshold; docs/turn_taking.md)
TURN_END_SILENCE_MS = (64, 160)
TURN_END_THRESHOLD = 0.9999
RECENT_MS = 3200  # utterance audio kept for the end-of-turn detector (it reads the last 3 s)


def echo_similarity(near: np.ndarray, far: np.ndarray) -> float:
    """The largest normalised cross-correlation |<near, far[lag:lag+n]>| / (|near| |far[lag:lag+n]|) over every
    lag (far zero-padded at both ends): ~1 when the microphone (near) heard a scaled, delayed copy of the
    played audio (far), low for a voice that is not in it."""
    from scipy.signal import correlate

    n = len(near)
    padded = np.concatenate([np.zeros(n), far, np.zeros(n)]).astype(np.float64)
    dots = correlate(padded, near.astype(np.float64), mode="valid", method="fft")  # (len(far) + n + 1,)
    energy = np.concatenate([[0.0], np.cumsum(padded ** 2)])
    window = np.sqrt(np.maximum(energy[n:] - energy[:-n], 0.0))  # |far[lag:lag+n]| per lag
    ncc = np.abs(dots) / (np.linalg.norm(near) * window + 1e-9)
    ncc[window < 1e-3 * np.sqrt(n)] = 0.0  # windows (nearly) all padding say nothing
    return float(ncc.max())


def turn_end_asks(silence_ms: int | Sequence[int], threshold: float | Sequence[float] = TURN_END_THRESHOLD) -> tuple:
    """((silence ms, P(complete) threshold), ...) in order of silence: when the detector is asked in a pause, and
    the bar for ending the turn at that ask. One threshold for every ask, or one per ask."""
    silences = [silence_ms] if isinstance(silence_ms, (int, float)) else list(silence_ms)
    bars = [threshold] if isinstance(threshold, (int, float)) else list(threshold)
    bars = bars * len(silences) if len(bars) == 1 else bars
    if not silences or len(silences) != len(bars):
        raise ConfigError(f"vad turn_end_silence_ms {silence_ms} and turn_end_threshold {threshold} must give one "
                          "threshold per ask", "give one threshold for all asks, or one per ask: [0.9999, 0.999]")
    for ms in silences:
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or ms < 0:
            raise ConfigError(f"vad turn_end_silence_ms={ms!r} must be >= 0", "use a duration in milliseconds")
    for bar in bars:
        if isinstance(bar, bool) or not isinstance(bar, (int, float)) or not 0.0 < bar < 1.0:
            raise ConfigError(f"vad turn_end_threshold {bar!r} must be between 0 and 1", "use e.g. 0.9")
    if sorted(silences) != silences or len(set(silences)) != len(silences):
        raise ConfigError(f"vad turn_end_silence_ms {silences} must rise", "list the asks in order, e.g. [64, 160]")
    return tuple(zip(silences, bars, strict=True))


def load_silero():
    """A fresh Silero VAD TorchScript model (its recurrent state is per stream), copied from the one loaded from the
    silero-vad package (no download) on the first call: later streams start in milliseconds, not a second."""
    return copy.deepcopy(_silero_template())


@functools.cache
def _silero_template():
    """The model as loaded: never run, only copied (a run would leave its state in the copies)."""
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise ConfigError("the Silero VAD stage needs the silero-vad package", 'pip install "omnivox[vad]"') \
            from None
    return load_silero_vad()


class SileroVAD(Stage):
    """Cuts a live audio stream into one turn per utterance (see the module doc)."""

    consumes = (AudioStart, AudioChunk, AudioStop, TurnStart, TurnEnd, VoiceStarted, VoiceStopped)
    replaces = (AudioStart, AudioStop, TurnStart, TurnEnd, VoiceStarted, VoiceStopped)  # it makes its own turns
    overflow = "drop_oldest"
    queue_size = 256

    def __init__(self, threshold: float = 0.5, min_speech_ms: int = 250, end_silence_ms: int = 600,
                 pre_roll_ms: int = 300, duplex: str = "half", echo_gate: bool = True, echo_similarity: float = 0.5,
                 playback: str = "default", turn_end=None,
                 turn_end_silence_ms: int | Sequence[int] = TURN_END_SILENCE_MS,
                 turn_end_threshold: float | Sequence[float] = TURN_END_THRESHOLD, hold_silence_ms: int = 1000,
                 speculate: float | None = None, name: str | None = None):
        super().__init__(name or "vad")
        self.asks = turn_end_asks(turn_end_silence_ms, turn_end_threshold)  # ((silence ms, threshold), ...)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"vad threshold {threshold} must be between 0 and 1", "use e.g. 0.5")
        for key, value in (("min_speech_ms", min_speech_ms), ("end_silence_ms", end_silence_ms),
                           ("pre_roll_ms", pre_roll_ms), ("hold_silence_ms", hold_silence_ms)):
            if value < 0:
                raise ConfigError(f"vad {key}={value} must be >= 0", "use a duration in milliseconds")
        if turn_end is not None and not self.asks[-1][0] < hold_silence_ms:
            raise ConfigError(f"vad turn_end_silence_ms={self.asks[-1][0]} must be below hold_silence_ms="
                              f"{hold_silence_ms}", "ask the detector early, e.g. 64 and 160 ms, and hold 1000")
        if speculate is not None and (isinstance(speculate, bool) or not isinstance(speculate, (int, float))
                                      or not 0.0 <= speculate <= min(bar for _, bar in self.asks)):
            raise ConfigError(f"vad speculate={speculate!r} must be between 0 and the turn-end threshold "
                              f"({min(bar for _, bar in self.asks)})",
                              "use e.g. 0.5, 0 to guess at every pause before the detector answers, or leave it "
                              "out (no guesses)")
        if speculate is not None and turn_end is None:
            raise ConfigError("vad speculate needs an end-of-turn detector: without one there is no guess to make",
                              "give turn_end (e.g. \"default\", the shipped one; listen: --turn-end default) or "
                              "leave speculate out")
        if duplex not in DUPLEX:
            raise ConfigError(f"unknown duplex mode {duplex!r}", f"use one of: {', '.join(DUPLEX)}")
        self.threshold, self.duplex = threshold, duplex
        self.echo_gate, self.echo_similarity = echo_gate, echo_similarity
        self.off_threshold = max(0.01, threshold - 0.15)  # hysteresis: speech goes on until below this
        self.min_speech_ms, self.end_silence_ms, self.pre_roll_ms = min_speech_ms, end_silence_ms, pre_roll_ms
        self.playback_name = playback
        self.turn_end, self.hold_silence_ms, self.speculate = turn_end, hold_silence_ms, speculate
        self.detector = None  # the TurnEndDetector, loaded in setup
        self.playback: PlaybackState = shared_playback(self.shared, playback)  # the pipeline's, once attached
        self.model = None
        self.turn_id = 0  # the last utterance's turn id
        self.speaking = False  # inside an utterance
        self.probability = 0.0  # of the last frame
        self.ignored = 0  # utterance onsets ignored because the assistant was speaking (half duplex)
        self.barge_ins = 0
        self.echoes = 0  # onsets the echo gate took for the assistant's own voice (full duplex)
        self.withdrawn = 0  # (in a pipeline) turns asked on a guess and taken back: the speaker went on
        self.voice_started_at: dict[int, int] = {}  # turn id -> output frame position when voice was detected
        self._rate: int | None = None
        self._pending = np.zeros(0, dtype=np.float32)
        self._onset: list[np.ndarray] = []  # frames above threshold, not yet confirmed as speech
        self._onset_at = 0.0  # capture time of the first onset frame's end
        self._pre_roll: collections.deque = collections.deque()
        self._silence = 0  # consecutive frames below off_threshold inside an utterance
        self._speech_end = 0.0
        self._recent: collections.deque = collections.deque()  # the utterance's latest frames (for the detector)
        self._asked = 0  # the detector's asks in this pause
        self._held: list[AudioChunk] = []  # silence past the last ask (see _holds_back)
        self._guessed = False  # an EndLikely went out in this pause
        self._guess_ended = False  # (in a pipeline) that guess ended the turn's audio: the pause is held back
        self._utterance: list[AudioChunk] = []  # (in a pipeline, speculating) the turn's chunks, held ones included
        self.guesses: Guesses | None = None  # the pipeline's, once attached
        self._ask_due: tuple[float, float] | None = None  # (threshold, at): an ask whose guess went out first

    def attach(self, bus: Bus, inputs, shared: dict | None = None) -> Subscription:
        sub = super().attach(bus, inputs, shared)
        self.playback = shared_playback(self.shared, self.playback_name)
        self.guesses = shared_guesses(self.shared)
        return sub

    async def setup(self) -> None:
        if self.speculate is not None and self.guesses is not None and not self.guesses.held:
            raise ConfigError(f"vad speculate={self.speculate} in a pipeline without HoldGuesses: the answers started "
                              "on a guess would be heard before the turn is decided",
                              "use omnivox listen (it adds HoldGuesses when it speculates, by default), or build "
                              "the pipeline with speech_pipeline(...) or "
                              "put omnivox.core.runtime.guesses.HoldGuesses right after the LM stage in Python; in a "
                              "YAML pipeline leave speculate out")
        self.model = await asyncio.to_thread(load_silero)  # (a TorchScript load: not on the event loop)
        if isinstance(self.turn_end, (str, os.PathLike)):
            from omnivox.plugins.turn_end import TurnEndDetector

            self.detector = await asyncio.to_thread(TurnEndDetector, self.turn_end)
        elif self.turn_end is not None:  # a detector object (anything with `probability(pcm) -> float`)
            self.detector = self.turn_end

    async def process(self, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, AudioChunk):
            if self.detector is None:
                for out in self._noted(self.push(event)):
                    yield out
            else:  # the detector's encoder takes tens of ms: off the event loop (a guess at 0 goes out before it)
                async for events in self._pushed(event):
                    for out in self._noted(events):
                        yield out
        elif isinstance(event, (AudioStop, TurnEnd)) and self.speaking:  # the stream ended mid-utterance
            for out in self._noted(self._stop(event.session_id, event.timestamp)):
                yield out

    async def _pushed(self, chunk: AudioChunk) -> AsyncIterator[list[Event]]:
        """`push` in a worker thread: the lists of events a guess at 0 sends early, as they come, then the rest."""
        loop, lists = asyncio.get_running_loop(), asyncio.Queue()
        early = (lambda events: loop.call_soon_threadsafe(lists.put_nowait, events)) if self.speculate == 0 else None
        rest = asyncio.ensure_future(asyncio.to_thread(self.push, chunk, early))
        rest.add_done_callback(lambda _: lists.put_nowait(None))  # after every early list (FIFO on the loop)
        while (events := await lists.get()) is not None:
            yield events
        yield rest.result()

    def _noted(self, events: list[Event]) -> list[Event]:
        """(on the event loop) The pipeline's Guesses learn of this VAD's guesses and their fate."""
        if self.guesses is not None:
            for event in events:
                if isinstance(event, EndLikely):  # (in a pipeline its AudioStop follows: the answer starts)
                    self.guesses.guessed(event.turn)
                elif isinstance(event, TurnEnd):
                    self.guesses.decide(event.turn, stands=event.reason == "done")
        return events

    def push(self, chunk: AudioChunk, early: Callable[[list[Event]], None] | None = None) -> list[Event]:
        """Cut `chunk` (of a continuous stream) into turns: the events it yields, in order (also for a caller that
        runs the VAD outside a pipeline, e.g. plugins/mqtt/device_turns.py). With `speculate=0` a pause's guess is
        made before the detector is asked: `early`, if given, gets the events up to and including that EndLikely
        at once (the detector then runs), and they are not returned again. Silero and the detector's network run
        on 1 torch thread, in whichever thread calls: one that kept a team of its own would make the LM's
        steps sleep between regions (core/kernel/threads.py)."""
        from omnivox.core.kernel.threads import using_threads  # (torch: not at import, as the CLI's parser needs)

        with using_threads(1):
            return self._push(chunk, early)

    def _push(self, chunk: AudioChunk, early: Callable[[list[Event]], None] | None) -> list[Event]:
        import torch

        if chunk.rate not in FRAME:
            raise InputError(f"Silero VAD takes 16000 or 8000 Hz audio, got {chunk.rate} Hz",
                             "resample first (the microphone stage's `rate`, default 16000)")
        if self._rate != chunk.rate:
            self._rate, self._pending = chunk.rate, np.zeros(0, dtype=np.float32)
            self._pre_roll = collections.deque(maxlen=max(1, self._ms_to_frames(self.pre_roll_ms)))
            self._recent = collections.deque(maxlen=self._ms_to_frames(RECENT_MS))
        size = FRAME[self._rate]
        samples = np.concatenate([self._pending, audio.to_mono(chunk.to_float32().T)])
        whole = len(samples) // size * size
        self._pending = samples[whole:]
        out: list[Event] = []
        for start in range(0, whole, size):
            frame = samples[start:start + size]
            # the frame's end, as a capture time: the chunk's timestamp is that of its last sample
            at = chunk.timestamp - (len(samples) - start - size) / self._rate
            with torch.no_grad():
                self.probability = float(self.model(torch.from_numpy(frame), self._rate))
            events = self._step(frame, self.probability, chunk.session_id, at)
            if self._ask_due is not None:  # a guess went out before the detector was asked: ask it now
                if early is not None:
                    early(out + events)
                    out, events = [], []
                bar, asked_at = self._ask_due
                events += self._ask(bar, chunk.session_id, asked_at)
            out += events
        return out

    def _step(self, frame: np.ndarray, p: float, session: str, at: float) -> list[Event]:
        if self.speaking:
            chunk = self._chunk(frame, session, at)
            if p >= self.off_threshold:
                if self._guess_ended:  # the guess ended the turn, but the speaker went on: ask it all again
                    return self._ask_again(session, at)
                out = [*self._held, chunk]  # the speaker went on: the pause is part of the turn
                if self._guessed:
                    out.insert(0, VoiceResumed(session_id=session, turn_id=self.turn_id, timestamp=at))
                self._silence, self._speech_end, self._asked, self._held, self._guessed = 0, at, 0, [], False
            else:
                out = [chunk]
                if self._guess_ended or self._holds_back():
                    self._held.append(out.pop())
                self._silence += 1
                if self._silence >= self._ms_to_frames(self._silence_rule_ms()):
                    out += self._stop(session, at)
                elif self.detector and self._asked < len(self.asks) and \
                        self._silence >= self._ms_to_frames(self.asks[self._asked][0]):
                    bar = self.asks[self._asked][1]
                    self._asked += 1
                    if self.speculate == 0 and not self._guessed:  # P(complete) >= 0 holds: guess before asking
                        self._ask_due = (bar, at)
                        out += self._guess(float("nan"), session, at)
                    else:
                        out += self._ask(bar, session, at)
            return out
        if p >= self.threshold or (self._onset and p >= self.off_threshold):
            if not self._onset:
                self._onset_at = at
            self._onset.append(frame)
            if len(self._onset) >= max(1, self._ms_to_frames(self.min_speech_ms)):
                return self._start(session, at)
            return []
        self._pre_roll.extend(self._onset)
        self._pre_roll.append(frame)
        self._onset = []
        return []

    def _ask(self, bar: float, session: str, at: float) -> list[Event]:
        """Ask the detector about the utterance so far (in a pause, at `at`): the turn ends if P(complete) >= bar;
        a guess (EndLikely) goes out if it reaches `speculate` and none went out in this pause."""
        self._ask_due = None
        complete = self.detector.probability(np.concatenate(self._recent))
        if complete >= bar:
            return self._stop(session, at)
        if self.speculate is not None and complete >= self.speculate and not self._guessed:
            return self._guess(complete, session, at)
        return []

    def _guess(self, probability: float, session: str, at: float) -> list[Event]:
        """EndLikely for this pause; in a pipeline it also ends the turn's audio (the answer starts, unplayed)."""
        turn = {"session_id": session, "turn_id": self.turn_id}
        self._guessed = True
        out: list[Event] = [EndLikely(probability=probability, **turn, timestamp=self._speech_end)]
        if self.guesses is not None:
            self._guess_ended = True
            out += [VoiceStopped(**turn, timestamp=self._speech_end), AudioStop(**turn, timestamp=at)]
        return out

    def _ask_again(self, session: str, at: float) -> list[Event]:
        """(in a pipeline) The speaker went on after a guess that ended the turn: the turn is withdrawn, and the
        utterance so far (its chunks, the pause's and this one) goes on as the next turn, in one chunk."""
        old = {"session_id": session, "turn_id": self.turn_id}
        out: list[Event] = [VoiceResumed(**old, timestamp=at), Interruption(reason="withdrawn", **old),
                            Withdrawn(**old, timestamp=at), TurnEnd(reason="interrupted", **old, timestamp=at)]
        self.playback.close_turn((session, self.turn_id))
        self.withdrawn += 1
        self.turn_id += 1
        new = {"session_id": session, "turn_id": self.turn_id}
        self.voice_started_at[self.turn_id] = self.voice_started_at.get(old["turn_id"], self.playback.position())
        self.playback.open_turn((session, self.turn_id))
        whole = AudioChunk(audio=b"".join(c.audio for c in self._utterance), rate=self._rate, timestamp=at, **new)
        self._utterance = [whole]
        self._silence, self._speech_end, self._asked, self._held = 0, at, 0, []
        self._guessed = self._guess_ended = False
        return out + [TurnStart(**new, timestamp=at), VoiceStarted(**new, timestamp=at),
                      AudioStart(rate=self._rate, **new, timestamp=at), whole]

    def _start(self, session: str, at: float) -> list[Event]:
        out: list[Event] = []
        if self.playback.busy():
            if self.duplex == "half":  # the assistant is talking: this is probably its own voice
                self.ignored += 1
                self._onset, self._pre_roll = [], collections.deque(maxlen=self._pre_roll.maxlen)
                return out
            if self.echo_gate and self._is_echo(np.concatenate(self._onset), at):
                self.echoes += 1
                self._onset, self._pre_roll = [], collections.deque(maxlen=self._pre_roll.maxlen)
                return out
            self.barge_ins += 1
            out += [Interruption(reason="barge-in", session_id=s, turn_id=t) for s, t in self.playback.open_turns()
                    if s == session]
        self.turn_id += 1
        turn = {"session_id": session, "turn_id": self.turn_id}
        self.voice_started_at[self.turn_id] = self.playback.position()
        self.playback.open_turn((session, self.turn_id))
        self.speaking, self._silence, self._speech_end, self._asked = True, 0, at, 0
        speech = np.concatenate([*self._pre_roll, *self._onset])
        self._recent.clear()
        self._utterance = []
        self._onset, self._pre_roll = [], collections.deque(maxlen=self._pre_roll.maxlen)
        out += [TurnStart(**turn, timestamp=at), VoiceStarted(**turn, timestamp=at),
                AudioStart(rate=self._rate, **turn, timestamp=at), self._chunk(speech, session, at)]
        return out

    def _is_echo(self, speech: np.ndarray, at: float) -> bool:
        """Is this onset (16/8 kHz, captured until `at`) mostly a delayed copy of what was just played?"""
        start = self._onset_at - FRAME[self._rate] / self._rate  # the first onset frame's start
        played = self.playback.played_between(start - ECHO_DELAY_S, at + 0.05)
        if not played.any() or not self.playback.rate:
            return False
        return echo_similarity(speech, audio.resample(played, self.playback.rate, self._rate)) >= self.echo_similarity

    def _stop(self, session: str, at: float) -> list[Event]:
        turn = {"session_id": session, "turn_id": self.turn_id}
        guess_stands = self._guess_ended  # its audio already ended at the guess
        self.speaking, self._held, self._guessed, self._guess_ended, self._utterance = False, [], False, False, []
        if guess_stands:
            return [TurnEnd(reason="done", **turn, timestamp=at)]
        return [VoiceStopped(**turn, timestamp=self._speech_end), AudioStop(**turn, timestamp=at),
                TurnEnd(reason="done", **turn, timestamp=at)]

    def _chunk(self, samples: np.ndarray, session: str, at: float) -> AudioChunk:
        """The utterance's next AudioChunk; its samples as sent (16-bit) join what the detector reads, so that it
        encodes exactly what the encoder stage will get and the encoder reuses its features (plugins/fw_encoder.py)."""
        fmt = audio.AudioFormat(rate=self._rate, width=2, channels=1)
        chunk = AudioChunk(audio=audio.to_bytes(samples[None, :], fmt), rate=self._rate, session_id=session,
                           turn_id=self.turn_id, timestamp=at)
        if self.detector is not None:
            self._recent.append(chunk.to_float32()[:, 0])
            if self.speculate is not None and self.guesses is not None:  # asked again whole if a guess was wrong
                self._utterance.append(chunk)
        return chunk

    def _holds_back(self) -> bool:
        """Is this pause past the detector's last ask? Its silence is then held back, and sent only if the speaker
        goes on: a turn that ends at the hold carries the silence of the last ask (what the detector heard, so the
        encoder reuses its features), not `hold_silence_ms` of it (answers went wrong with 1 s of silence)."""
        return self.detector is not None and self._asked == len(self.asks) and \
            self._silence >= self._ms_to_frames(self.asks[-1][0])

    def _silence_rule_ms(self) -> int:
        """The silence that ends a turn whatever the detector says: `hold_silence_ms` once it was asked in this
        pause, else `end_silence_ms` (no detector, or not asked yet)."""
        return self.hold_silence_ms if self._asked else self.end_silence_ms

    def _ms_to_frames(self, ms: int) -> int:
        return round(ms * self._rate / 1000 / FRAME[self._rate])


@hookimpl
def register_vad(registry):
    registry.add("silero", SileroVAD, description="Silero VAD turn detection: pre-roll, end-of-turn silence, "
                                                  "half/full duplex barge-in")
