"""A small reference client for `/v1/live` (docs/live_api.md), for device teams to compare against and for tests:
it streams 16 kHz mono audio in real time (or faster) and collects what the server sends.

    async with LiveClient("http://127.0.0.1:60808") as live:
        await live.stream(pcm)               # float32 16 kHz mono, paced at real time in 20 ms frames
        await live.until(lambda e: e["event"] == "turn-end")
        for turn, pcm in live.answers().items(): ...   # each turn's answer audio (s16le bytes)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import numpy as np

from omnivox.core import audio
from omnivox.core.runtime.sessions import decode_audio, encode_audio

FRAME_MS = 20


class LiveClient:
    """One live session. `events`: every JSON event received (each with "at", time.monotonic() on arrival);
    `audio`: (turn, seq, pcm, at) per binary answer frame."""

    def __init__(self, url: str, *, token: str | None = None, rate: int = 16000, ssl=True):
        base = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
        self.url = base + "/v1/live" + (f"?token={token}" if token else "")
        self.rate, self.ssl = rate, ssl
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
            elif message.type == aiohttp.WSMsgType.BINARY:
                self.audio.append((*decode_audio(message.data), time.monotonic()))
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
