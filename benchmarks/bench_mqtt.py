"""MQTT service benchmark: 1, 2, 4, 8 concurrent sessions on the tiny model, through a real mosquitto vs the
same pipeline fed directly (no MQTT) in the same process.

    python benchmarks/bench_mqtt.py [--sessions 1 2 4 8] [--turns 4] [--max-steps 24]

Each session asks `--turns` spoken questions (0.5 s WAV, 100 ms chunks) one after another; all sessions
run at once. Time to first audio = from the question's end (audio-stop sent / AudioStop fed) to the first
answer audio received (audio-out at the device / AudioOut at the sink). Turns/s = all turns / wall time
(devices connect and open their sessions before the clock starts). The MQTT figures include the broker's
two hops, JSON/binary encoding and QoS 1 acknowledgements; the ratio to the direct pipeline is the
transport's overhead. Needs the `mosquitto` binary (apt package mosquitto).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mqtt_support import Mosquitto, running_service, tiny_service_stages, write_question  # noqa: E402

from omnivox.core.runtime.events import AudioOut, AudioStart, AudioStop, TurnEnd, TurnStart  # noqa: E402
from omnivox.core.runtime.pipeline import Pipeline  # noqa: E402
from omnivox.core.runtime.stage import Stage  # noqa: E402
from omnivox.mqtt import Client  # noqa: E402
from omnivox.plugins.mqtt.client import read_wav_pcm  # noqa: E402


class Arrivals(Stage):
    """Sink of the direct pipeline: when each turn's first AudioOut and its TurnEnd arrive."""

    consumes = (AudioOut, TurnEnd)

    def __init__(self):
        super().__init__("sink")
        self.first_audio: dict[tuple[str, int], float] = {}
        self.ended: dict[tuple[str, int], asyncio.Event] = {}

    def wait(self, key):
        return self.ended.setdefault(key, asyncio.Event()).wait()

    async def process(self, event):
        if isinstance(event, AudioOut):
            self.first_audio.setdefault(event.turn, time.perf_counter())
        else:
            self.ended.setdefault(event.turn, asyncio.Event()).set()


def _chunks(pcm: bytes, rate: int) -> list[bytes]:
    step = rate // 10 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def direct(sessions: int, turns: int, max_steps: int, pcm: bytes, rate: int) -> tuple[list[float], float]:
    from omnivox.core.runtime.events import AudioChunk

    stages = tiny_service_stages("mqtt://127.0.0.1:1", max_steps=max_steps)[1:-1]  # encoder, LM, codec
    sink = Arrivals()
    pipeline = Pipeline([*stages, sink])
    await pipeline.start()
    firsts: list[float] = []

    async def session(s: int):
        sid = f"site/s{s}"
        for turn in range(turns):
            ids = {"session_id": sid, "turn_id": turn}
            await pipeline.feed(TurnStart(**ids))
            await pipeline.feed(AudioStart(rate=rate, **ids))
            for chunk in _chunks(pcm, rate):
                await pipeline.feed(AudioChunk(audio=chunk, rate=rate, **ids))
            stopped = time.perf_counter()
            await pipeline.feed(AudioStop(**ids))
            await pipeline.feed(TurnEnd(**ids))
            await sink.wait((sid, turn))
            firsts.append(sink.first_audio[(sid, turn)] - stopped)

    start = time.perf_counter()
    await asyncio.gather(*(session(s) for s in range(sessions)))
    wall = time.perf_counter() - start
    await pipeline.stop()
    return firsts, sessions * turns / wall


async def over_mqtt(broker: str, sessions: int, turns: int, max_steps: int, pcm: bytes,
                    rate: int) -> tuple[list[float], float]:
    firsts: list[float] = []
    async with running_service(broker, max_steps=max_steps), contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(broker, site=f"bench{s}")) for s in range(sessions)]
        devices = [await client.session() for client in clients]  # connected and claimed before timing

        async def device(session):
            for _ in range(turns):
                turn = await session.start_turn(rate)
                for chunk in _chunks(pcm, rate):
                    await turn.send(chunk)
                stopped = time.monotonic()
                await turn.stop()
                answer = await turn.result(timeout=300)
                assert answer.ok, answer.errors
                firsts.append(answer.first_audio_at - stopped)

        start = time.perf_counter()
        await asyncio.gather(*(device(session) for session in devices))
        wall = time.perf_counter() - start
    return firsts, sessions * turns / wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--turns", type=int, default=4, help="questions per session")
    parser.add_argument("--max-steps", type=int, default=24, help="LM steps per answer")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench_mqtt_"))
    pcm, rate, _, _ = read_wav_pcm(write_question(folder / "q.wav", seconds=0.5))
    broker = Mosquitto(folder).start()
    try:
        asyncio.run(direct(1, 1, args.max_steps, pcm, rate))  # warm-up: lazy imports, first torch calls
        print(f"tiny model, {args.max_steps} LM steps per answer, {args.turns} turns per session; "
              "time to first audio from the end of the question")
        print(f"{'sessions':>8} | {'direct p50/p99 ms':>18} {'turns/s':>8} | {'mqtt p50/p99 ms':>16} {'turns/s':>8} | "
              f"{'p50 ratio':>9} {'turns/s ratio':>13}")
        for n in args.sessions:
            d_first, d_rate = asyncio.run(direct(n, args.turns, args.max_steps, pcm, rate))
            m_first, m_rate = asyncio.run(over_mqtt(broker.url, n, args.turns, args.max_steps, pcm, rate))
            d50, d99 = statistics.median(d_first) * 1e3, percentile(d_first, 0.99) * 1e3
            m50, m99 = statistics.median(m_first) * 1e3, percentile(m_first, 0.99) * 1e3
            print(f"{n:>8} | {d50:>8.0f} / {d99:>6.0f} {d_rate:>8.2f} | {m50:>7.0f} / {m99:>6.0f} {m_rate:>8.2f} | "
                  f"{m50 / d50:>8.2f}x {m_rate / d_rate:>12.2f}x")
    finally:
        broker.kill()


if __name__ == "__main__":
    main()
