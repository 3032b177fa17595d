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
from omnivox.core.runtime.events import AudioChunk, AudioStart, AudioStop, VoiceStopped
from omnivox.plugins.mqtt.client import Session, Turn
from omnivox.plugins.silero_vad import SileroVAD


class DeviceTurns:
    """Cuts one device's live audio into questions and asks each over `session` (see the module doc)."""

    def __init__(self, session: Session, vad: SileroVAD | None = None, rate: int = 16000):
        self.session, self.rate = session, rate
        self.vad = vad if vad is not None else SileroVAD(turn_end="default")
        self.speech_end: dict[int, float] = {}  # turn id -> end of speech (capture clock)
        self._turn: Turn | None = None  # the question being spoken
        self._format = audio.AudioFormat(rate=rate, width=2, channels=1)

    @classmethod
    async def start(cls, session: Session, vad: SileroVAD | None = None, rate: int = 16000) -> DeviceTurns:
        """A DeviceTurns whose VAD (and detector) are loaded."""
        turns = cls(session, vad, rate)
        await turns.vad.setup()
        return turns

    async def push(self, pcm: np.ndarray, at: float | None = None) -> list[Turn]:
        """Mono float32 samples at `rate`, captured until `at` (time.monotonic(); default now): their audio goes
        to the question being spoken; returns the turns whose question ended with them (answers stream on)."""
        chunk = AudioChunk(audio=audio.to_bytes(np.asarray(pcm, np.float32)[None, :], self._format), rate=self.rate,
                           timestamp=time.monotonic() if at is None else at)
        ended, speech_end = [], None
        for event in await asyncio.to_thread(self.vad.push, chunk):  # the detector takes ~25 ms: off the loop
            if isinstance(event, AudioStart):
                self._turn = await self.session.start_turn(event.rate)
            elif isinstance(event, AudioChunk) and self._turn is not None:
                await self._turn.send(event.audio)
            elif isinstance(event, VoiceStopped):
                speech_end = event.timestamp
            elif isinstance(event, AudioStop) and self._turn is not None:
                await self._turn.stop()
                self.speech_end[self._turn.id] = speech_end if speech_end is not None else event.timestamp
                ended.append(self._turn)
                self._turn = None
        return ended
