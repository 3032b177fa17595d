"""Turn taking on the device, for an MQTT device that hears all the time (a robot's microphone): the VAD and
end-of-turn detector of `omnivox listen` (plugins/silero_vad.py, plugins/turn_end.py) cut the stream into
questions on the device, and each is asked over the device's session as it is spoken: `audio-start` when voice
starts (with the pre-roll), its audio as it comes, `audio-stop` the moment the turn's end is decided (64 ms into
a silence when the detector is sure). The worker answers at once; nothing waits for a silence rule.

    from omnivox.mqtt import Client, DeviceTurns
    async with Client(broker, site="robot") as client:
        turns = await DeviceTurns.start(await client.session())      # SileroVAD with the shipped detector
        for block in microphone_blocks():                           # 16 kHz mono float32, as captured
            for turn in await turns.push(block):                    # the questions that ended with this block
                ...                                                 # turn.result(), or iterate its replies

With `speculate` (a P(complete) bar, e.g. 0.5), a pause the detector finds probably complete but not surely
(the VAD's EndLikely) is asked at once on that guess: `audio-stop` goes out, the answer streams in meanwhile, and
`push` returns the turn only when the VAD ends it (nothing of it may be played before). If the speaker goes on
(VoiceResumed), the guess is taken back (`interrupt` with `withdraw`: its answer stops, it leaves the
conversation's history) and the whole utterance is asked again as a new turn. A guess that stands has its answer
started one ask early, or, when the detector stayed unsure until the hold ended the turn, ready by then
(benchmarks/bench_mqtt_turns.py --speculate). `speculate=0` asks every pause on a guess at its first ask, before
the detector has answered: the worker starts answering while the device's detector decides.

`speech_end[turn_id]` is the end of speech the VAD saw (time.monotonic(), the capture clock of `push`'s `at`): a
device measures what its user waits, end of speech -> first `audio-out`, from it (Answer.first_audio_at).
Half duplex: the VAD's own PlaybackState is never busy, so a device that plays answers through open speakers
should stop pushing while it plays (or use the full-duplex echo gate with a shared PlaybackState).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from omnivox.core import audio
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.events import AudioChunk, AudioStart, AudioStop, EndLikely, Event, VoiceResumed, VoiceStopped
from omnivox.plugins.mqtt.client import Session, Turn
from omnivox.plugins.silero_vad import SileroVAD

RESEND_BYTES = 32_000  # a withdrawn guess's audio is asked again in chunks of 1 s (16 kHz s16le)


class DeviceTurns:
    """Cuts one device's live audio into questions and asks each over `session` (see the module doc)."""

    def __init__(self, session: Session, vad: SileroVAD | None = None, rate: int = 16000,
                 speculate: float | None = None):
        if vad is not None and speculate is not None:
            raise ConfigError("DeviceTurns got both a vad and speculate", "pass speculate= to the SileroVAD instead")
        self.session, self.rate = session, rate
        self.vad = vad if vad is not None else SileroVAD(turn_end="default", speculate=speculate)
        self.speech_end: dict[int, float] = {}  # turn id -> end of speech (capture clock)
        self.guesses = self.withdrawn = 0  # questions asked on a guess; of those, taken back (the speaker went on)
        self._turn: Turn | None = None  # the question being spoken
        self._guess: Turn | None = None  # asked on an EndLikely, not yet ended by the VAD: its answer is unplayed
        self._spoken: list[bytes] = []  # the utterance's audio so far (asked again whole if the guess was wrong)
        self._speech_end: float | None = None  # the VAD's VoiceStopped of the question being ended
        self._format = audio.AudioFormat(rate=rate, width=2, channels=1)

    @classmethod
    async def start(cls, session: Session, vad: SileroVAD | None = None, rate: int = 16000,
                    speculate: float | None = None) -> DeviceTurns:
        """A DeviceTurns whose VAD (and detector) are loaded."""
        turns = cls(session, vad, rate, speculate)
        await turns.vad.setup()
        return turns

    async def push(self, pcm: np.ndarray, at: float | None = None) -> list[Turn]:
        """Mono float32 samples at `rate`, captured until `at` (time.monotonic(); default now): their audio goes
        to the question being spoken; returns the turns whose question ended with them (answers stream on)."""
        chunk = AudioChunk(audio=audio.to_bytes(np.asarray(pcm, np.float32)[None, :], self._format), rate=self.rate,
                           timestamp=time.monotonic() if at is None else at)
        loop, early = asyncio.get_running_loop(), []

        def guess_now(events: list[Event]) -> None:  # (the VAD's thread) a guess made before the detector answers
            early.append(asyncio.run_coroutine_threadsafe(self._handle(events), loop))

        events = await asyncio.to_thread(self.vad.push, chunk, guess_now)  # the detector takes ~25 ms: off the loop
        ended = []
        for handled in early:
            ended += await asyncio.wrap_future(handled)
        return ended + await self._handle(events)

    async def _handle(self, events: list[Event]) -> list[Turn]:
        """Act on the VAD's events in order: the turns whose question they ended."""
        ended = []
        for event in events:
            if isinstance(event, AudioStart):
                self._turn, self._spoken = await self.session.start_turn(event.rate), []
            elif self._turn is None:
                continue  # a stream that began mid-utterance: nothing was asked
            elif isinstance(event, AudioChunk):
                self._spoken.append(event.audio)
                if self._guess is None:  # (after a guess: the pause; sent only if the speaker goes on)
                    await self._turn.send(event.audio)
            elif isinstance(event, EndLikely) and self._guess is None:
                await self._turn.stop()  # asked on the guess: the answer starts now, unplayed
                self._guess, self.guesses = self._turn, self.guesses + 1
            elif isinstance(event, VoiceResumed) and self._guess is not None:
                await self._reask()
            elif isinstance(event, VoiceStopped):
                self._speech_end = event.timestamp
            elif isinstance(event, AudioStop):
                if self._guess is None:
                    await self._turn.stop()
                self.speech_end[self._turn.id] = self._speech_end if self._speech_end is not None else event.timestamp
                ended.append(self._turn)
                self._turn = self._guess = self._speech_end = None
        return ended

    async def _reask(self) -> None:
        """The speaker went on after a guess: take it back, and ask the utterance so far as a new turn."""
        await self._guess.withdraw()
        self.withdrawn += 1
        self._guess = None
        self._turn = await self.session.start_turn(self.rate)
        spoken = b"".join(self._spoken)
        for start in range(0, len(spoken), RESEND_BYTES):
            await self._turn.send(spoken[start:start + RESEND_BYTES])
