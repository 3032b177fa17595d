"""HTTP server benchmark: time to first audio of upstream Mini-Omni's request (`POST /chat`, a base64 WAV in
JSON, the answer a streamed WAV) on the tiny model, vs the same pipeline fed directly (no HTTP) in the same
process, with 1 and 4 concurrent clients.

    python benchmarks/bench_http.py [--requests 8] [--concurrency 1 4] [--max-steps 24]

HTTP: from the request being sent (client side, `requests` in threads) to the first PCM byte after the WAV
header; it includes the JSON + base64 upload, the WAV decode and the server's chunking into session events.
Direct: from feeding the turn's first event (the same PCM in the server's chunk size) to the first AudioOut at
the sink. The ratio of the p50s is the transport's overhead; the server runs in a background thread of this
process (client and server share the GIL and the cores).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from bench_mqtt import Arrivals, percentile  # noqa: E402
from http_support import question_b64, serving, tiny_http_stages  # noqa: E402

from omnivox.core.runtime.events import AudioChunk, AudioStart, AudioStop, TurnEnd, TurnStart  # noqa: E402
from omnivox.core.runtime.pipeline import Pipeline  # noqa: E402
from omnivox.core.runtime.sessions import Limits  # noqa: E402
from omnivox.plugins.http.wav import decode_question  # noqa: E402

CHUNK = Limits().max_chunk_bytes  # the server feeds a posted question in chunks of this size


async def direct(clients: int, total: int, max_steps: int, pcm: bytes, rate: int) -> list[float]:
    stages = tiny_http_stages(max_steps=max_steps)[1:-1]  # encoder, LM, codec
    sink = Arrivals()
    pipeline = Pipeline([*stages, sink])
    await pipeline.start()
    firsts: list[float] = []

    async def client(c: int):
        for turn in range(total // clients):
            ids = {"session_id": f"c{c}", "turn_id": turn}
            started = time.perf_counter()
            for event in [TurnStart(**ids), AudioStart(rate=rate, **ids),
                          *(AudioChunk(audio=pcm[i:i + CHUNK], rate=rate, **ids) for i in range(0, len(pcm), CHUNK)),
                          AudioStop(**ids), TurnEnd(**ids)]:
                await pipeline.feed(event)
            await sink.wait((f"c{c}", turn))
            firsts.append(sink.first_audio[(f"c{c}", turn)] - started)

    await asyncio.gather(*(client(c) for c in range(clients)))
    await pipeline.stop()
    return firsts


def over_http(url: str, clients: int, total: int, audio_b64: str) -> list[float]:
    firsts: list[float] = []

    def client():
        for _ in range(total // clients):
            started = time.perf_counter()
            with requests.post(f"{url}/chat", json={"audio": audio_b64, "stream_stride": 4, "max_tokens": 2048},
                               stream=True) as response:
                received, first = 0, None
                for chunk in response.iter_content(chunk_size=None):  # (one iterator: dropping one closes)
                    received += len(chunk)
                    if first is None and received > 44:
                        first = time.perf_counter() - started
                firsts.append(first)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return firsts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max-steps", type=int, default=24, help="LM steps per answer")
    args = parser.parse_args()

    audio_b64 = question_b64(Path(tempfile.mkdtemp(prefix="bench_http_")), seconds=0.5)
    question = decode_question(audio_b64)
    asyncio.run(direct(1, 1, args.max_steps, question.pcm, question.rate))  # warm-up: lazy imports, torch
    print(f"tiny model, {args.max_steps} LM steps per answer, {args.requests} requests per row; "
          "time to first audio from the request")
    print(f"{'clients':>7} | {'direct p50/p99 ms':>18} | {'HTTP p50/p99 ms':>16} | {'p50 ratio':>9}")
    with serving(max_steps=args.max_steps) as served:
        over_http(served.url, 1, 1, audio_b64)  # warm-up
        for n in args.concurrency:
            d = asyncio.run(direct(n, args.requests, args.max_steps, question.pcm, question.rate))
            h = over_http(served.url, n, args.requests, audio_b64)
            d50, d99 = statistics.median(d) * 1e3, percentile(d, 0.99) * 1e3
            h50, h99 = statistics.median(h) * 1e3, percentile(h, 0.99) * 1e3
            print(f"{n:>7} | {d50:>8.0f} / {d99:<7.0f} | {h50:>7.0f} / {h99:<6.0f} | {h50 / d50:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
