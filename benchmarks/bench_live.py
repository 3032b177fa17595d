"""`/v1/live` (docs/live_api.md), end of speech -> first answer audio at the client, the server's end-of-turn
decision included: `omnivox serve --http --checkpoint demo` (the default model) and the reference client
(plugins/http/live_client.py) streaming espeak-ng questions of the model's domain in held-out phrasings
(bench_listen.DEMO_QUESTIONS) at real time in 20 ms frames, each followed by silence.

    python benchmarks/bench_live.py [--turns 16] [--gap 3]

End of speech is where the question's audio ends in the stream (its last sample above -34 dBFS), on the client's
clock (the frame holding it was sent at its capture time); first audio is the arrival of the turn's first binary
frame. Also printed: the server's `first_audio_ms` (from the end of speech its VAD saw). No playback: a browser
adds its jitter buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_listen import DEMO_QUESTIONS  # noqa: E402
from mqtt_support import free_port  # noqa: E402

from omnivox.core import audio  # noqa: E402
from omnivox.plugins.audio_files import read_audio  # noqa: E402
from omnivox.plugins.http.live_client import LiveClient  # noqa: E402

RATE = 16000


def questions(turns: int, gap_s: float, folder: Path) -> tuple[np.ndarray, list[float]]:
    """The stream (0.5 s of silence, then each question and `gap_s` of silence) and each question's end (s)."""
    parts, ends, at = [np.zeros(RATE // 2, np.float32)], [], RATE // 2
    for i in range(turns):
        wav = folder / f"q{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)]], check=True)
        pcm, rate = read_audio(wav)
        speech = audio.resample(audio.to_mono(pcm), rate, RATE)
        ends.append((at + np.flatnonzero(np.abs(speech) > 0.02)[-1] + 1) / RATE)
        parts += [speech, np.zeros(int(gap_s * RATE), np.float32)]
        at += len(speech) + int(gap_s * RATE)
    return np.concatenate(parts), ends


async def session(url: str, stream: np.ndarray, ends: list[float]) -> list[dict]:
    async with LiveClient(url) as live:
        start = time.monotonic()
        await live.stream(stream)
        await live.until(lambda e: e["event"] == "turn-end" and e["turn"] == len(ends), timeout=60)
        await asyncio.sleep(1.0)  # the last metrics
    rows = []
    for turn, end in enumerate(ends, 1):
        first = min((at for t, _, _, at in live.audio if t == turn), default=None)
        metrics = next((m for m in live.of("metrics") if m["turn"] == turn), {})
        rows.append({"turn": turn, "total": None if first is None else (first - start - end) * 1000,
                     "server": metrics.get("first_audio_ms"),
                     "encoder": (metrics.get("stage_busy_ms") or {}).get("encoder")})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--gap", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        stream, ends = questions(args.turns, args.gap, Path(folder))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "omnivox.cli.main", "serve", "--http", f"127.0.0.1:{port}",
                                   "--checkpoint", "demo", "--max-steps", str(args.max_steps)],
                                  stderr=open(Path(folder) / "serve.log", "wb"), env=dict(os.environ))
        try:
            deadline = time.monotonic() + 120
            while "HTTP on" not in (Path(folder) / "serve.log").read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            rows = asyncio.run(session(f"http://127.0.0.1:{port}", stream, ends))
        finally:
            server.terminate()
            server.wait(30)
    answered = [r for r in rows if r["total"] is not None]
    print(f"{len(answered)} of {len(rows)} questions answered aloud (default model, /v1/live, server detector)")
    print(f"{'part':<28}{'p50 ms':>8}{'p90 ms':>8}")
    for name, key in (("end of speech -> 1st audio", "total"), ("server first_audio_ms", "server"),
                      ("server encoder busy", "encoder")):
        values = [r[key] for r in answered if r[key] is not None]
        print(f"{name:<28}{statistics.median(values):8.0f}{float(np.percentile(values, 90)):8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
