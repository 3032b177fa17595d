"""A small reference client for `/v1/live` (docs/live_api.md), for device teams to compare against and for tests:
it streams 16 kHz mono audio in real time (or faster) and collects what the server sends.

    async with LiveClient("http://127.0.0.1:60808") as live:
        await live.stream(pcm)               # float32 16 kHz mono, paced at real time in 20 ms frames
        await live.until(lambda e: e["event"] == "turn-end")
        for turn, pcm in live.answers().items(): ...   # each turn's answer audio (s16le bytes)

From a shell, a file or the microphone in, a file or the speaker out (PortAudio: plugins/sounddevice_io.py's
microphone and speaker, jitter buffer and barge-in stop included):

    python -m omnivox.plugins.http.live_client https://host:60808 --input question.wav --output answers.wav
    python -m omnivox.plugins.http.live_client https://host:60808 --input mic --output speaker [--token T] [--ca PEM]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl as ssl_module
import sys
import time
from collections.abc import Callable

import numpy as np

from omnivox.core import audio
from omnivox.core.runtime.sessions import decode_audio, encode_audio

FRAME_MS = 20


class LiveClient:
    """One live session. `events`: every JSON event received (each with "at", time.monotonic() on arrival);
    `audio`: (turn, seq, pcm, at) per binary answer frame."""

    def __init__(self, url: str, *, token: str | None = None, rate: int = 16000, ssl=True,
                 on_message: Callable[[dict], None] | None = None):
        base = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
        self.url = base + "/v1/live" + (f"?token={token}" if token else "")
        self.rate, self.ssl = rate, ssl
        self.on_message = on_message  # called with each event, and with {"event": "audio", ...} per answer frame
        self.events: list[dict] = []
        self.audio: list[tuple[int, int, bytes, float]] = []
        self.seq = 0
        self._session = self._ws = self._reader = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> LiveClient:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, ssl=self.ssl)
        await self._ws.send_str(json.dumps({"event": "start", "version": 1, "rate": self.rate}))
        self._reader = asyncio.create_task(self._read())
        started = await self.until(lambda e: e["event"] in ("started", "error"))
        if started["event"] == "error":
            raise ConnectionError(f"/v1/live refused the session: {started['code']}: {started['message']}")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _read(self) -> None:
        import aiohttp

        async for message in self._ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.events.append({**json.loads(message.data), "at": time.monotonic()})
                received = self.events[-1]
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.audio.append((*decode_audio(message.data), time.monotonic()))
                turn, seq, pcm, _ = self.audio[-1]
                received = {"event": "audio", "turn": turn, "seq": seq, "pcm": pcm}
            else:
                continue
            if self.on_message is not None:
                self.on_message(received)
            self._changed.set()
        self._changed.set()

    async def send(self, pcm16: bytes) -> None:
        """One frame of s16le mono microphone audio."""
        await self._ws.send_bytes(encode_audio(0, self.seq, pcm16))
        self.seq += 1

    async def control(self, event: str, **fields) -> None:
        await self._ws.send_str(json.dumps({"event": event, **fields}))

    async def stream(self, pcm: np.ndarray, *, realtime: bool = True) -> None:
        """float32 mono samples at `rate`, in 20 ms frames, each sent when it would have been captured."""
        step = self.rate * FRAME_MS // 1000
        fmt = audio.AudioFormat(self.rate, 2, 1)
        start = time.monotonic()
        for i in range(0, len(pcm), step):
            if realtime:
                await asyncio.sleep(max(0.0, start + (i + step) / self.rate - time.monotonic()))
            await self.send(audio.to_bytes(np.asarray(pcm[i:i + step], np.float32)[None, :], fmt))

    async def until(self, condition: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        """The first received event (from the start of the session) meeting `condition`; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((e for e in self.events if condition(e)), None)
            if found is not None:
                return found
            if self._reader is not None and self._reader.done():
                raise ConnectionError(f"the live session closed before the awaited event; got {self.events}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no awaited event within {timeout:g} s; got {self.events}") from None

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events if e["event"] == event]

    def answers(self) -> dict[int, bytes]:
        """turn -> its answer audio (s16le at the rate its audio-start said), frames in seq order."""
        out: dict[int, list] = {}
        for turn, seq, pcm, _ in self.audio:
            out.setdefault(turn, []).append((seq, pcm))
        return {turn: b"".join(p for _, p in sorted(frames)) for turn, frames in out.items()}


# ---- from a shell --------------------------------------------------------------------------------------------
class Speaker:
    """The answers on the speaker, in order: sounddevice_io's SpeakerOutput driven by the session's messages."""

    def __init__(self):
        from omnivox.plugins.sounddevice_io import SpeakerOutput

        self.output = SpeakerOutput(rate=None)
        self.rates: dict[int, int] = {}
        self.queue: asyncio.Queue[dict] = asyncio.Queue()

    async def play(self) -> None:
        from omnivox.core.runtime.events import AudioOut, Interruption, TurnEnd

        await self.output.setup()
        try:
            while True:
                message = await self.queue.get()
                ids = {"session_id": "live", "turn_id": message.get("turn", 0)}
                if message["event"] == "audio-start":
                    self.rates[message["turn"]] = message["rate"]
                elif message["event"] == "audio" and message["turn"] in self.rates:
                    await self.output.process(AudioOut(audio=message["pcm"], rate=self.rates[message["turn"]],
                                                       width=2, channels=1, **ids))
                elif message["event"] == "interrupted":  # barge-in: silent within one block
                    await self.output.on_interrupt(Interruption(reason="barge-in", **ids))
                elif message["event"] == "turn-end":
                    await self.output.process(TurnEnd(reason=message["reason"], **ids))
        finally:
            await self.output.teardown()


def say(message: dict) -> None:
    """What a person at the shell wants to see of the session."""
    if message["event"] == "voice-started":
        print(f"[turn {message['turn']}] hearing...", file=sys.stderr)
    elif message["event"] == "turn-end":
        print(f"[turn {message['turn']}] {message['reason']}", file=sys.stderr)
    elif message["event"] == "metrics" and message.get("first_audio_ms") is not None:
        print(f"[turn {message['turn']}] first audio {message['first_audio_ms']:.0f} ms after the end of speech",
              file=sys.stderr)
    elif message["event"] in ("error", "action", "action-warning", "interrupted"):
        print(f"[turn {message.get('turn')}] {json.dumps(message)}", file=sys.stderr)


async def talk(args: argparse.Namespace) -> dict[int, str]:
    """One session: the input streamed at real time, each turn's answer text (printed) and audio (played or kept)."""
    from omnivox.plugins.audio_files import read_audio, write_audio
    from omnivox.plugins.sounddevice_io import MicrophoneInput

    speaker = Speaker() if args.output == "speaker" else None
    texts: dict[int, str] = {}

    def on_message(message: dict) -> None:
        say(message)
        if message["event"] == "text":
            texts[message["turn"]] = texts.get(message["turn"], "") + message["text"]
        elif message["event"] == "turn-end" and message["turn"] in texts:
            print(f"{message['turn']}: {texts[message['turn']]}", flush=True)
        if speaker is not None:
            speaker.queue.put_nowait(message)

    context = ssl_module.create_default_context(cafile=args.ca) if args.ca else True
    async with LiveClient(args.url, token=args.token, ssl=context, on_message=on_message) as live:
        player = asyncio.create_task(speaker.play()) if speaker is not None else None
        try:
            if args.input == "mic":
                microphone = MicrophoneInput(rate=live.rate)
                await microphone.setup()
                print("listening: speak (Ctrl-C ends)", file=sys.stderr)
                try:
                    async for chunk in microphone.produce():
                        await live.send(chunk.audio)
                finally:
                    await microphone.teardown()
            else:
                pcm, rate = read_audio(args.input)
                await live.stream(audio.convert(pcm, rate, to_rate=live.rate, mono=True, what="the input"))
                await live.stream(np.zeros(live.rate * 2, np.float32))  # silence after it: its last turn ends
                heard = len(live.of("voice-started"))
                if heard:
                    await live.until(lambda e: e["event"] == "turn-end" and e["turn"] == heard, timeout=args.wait)
                    await asyncio.sleep(1.0)  # its metrics
        finally:
            if player is not None:
                await asyncio.sleep(1.0 if args.input != "mic" else 0.0)  # the speaker's last block
                player.cancel()
                await asyncio.gather(player, return_exceptions=True)
    if args.output not in (None, "speaker"):
        rate = next((e["rate"] for e in live.of("audio-start")), 16000)
        answers = b"".join(pcm for _, pcm in sorted(live.answers().items()))
        write_audio(args.output, np.frombuffer(answers, np.int16), rate)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnivox.plugins.http.live_client",
                                     description="Talk to an omnivox server over /v1/live (docs/live_api.md).")
    parser.add_argument("url", help="the server, e.g. https://robot.local:60808")
    parser.add_argument("--input", default="mic", help="a WAV/FLAC file streamed at real time, or mic")
    parser.add_argument("--output", default=None, help="a WAV file for the answers (one after another), or speaker")
    parser.add_argument("--token", default=None, help="the server's bearer token (omnivox serve --http-token)")
    parser.add_argument("--ca", default=None, metavar="PEM", help="trust this certificate (a self-signed server)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the last answer of a file")
    args = parser.parse_args(argv)
    import aiohttp

    try:
        asyncio.run(talk(args))
    except KeyboardInterrupt:
        return 0
    except (ConnectionError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        print(f"live_client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
