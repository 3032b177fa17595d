"""An MQTT device that hears all the time, end of speech -> first answer audio at the device, the end-of-turn
decision included (issue 24): `omnivox serve --checkpoint demo` (the default model) behind a real mosquitto, and a
device (omnivox.mqtt.DeviceTurns: the VAD and end-of-turn detector of `omnivox listen`, on the device) streaming
espeak-ng questions of the model's domain in held-out phrasings (bench_listen.DEMO_QUESTIONS, as bench_live.py
streams them) at real time, in 20 ms blocks stamped with their capture time.

    python benchmarks/bench_mqtt_turns.py [--turns 16] [--gap 3] [--turn-end default|off] [--speculate P]
        [--schedule MS:P,MS:P] [--per-turn]

Per turn, on the device's clock (the worker runs on the same machine):
  decide    end of speech (the device VAD's) -> the turn's end decided (the detector's wait and compute;
            --turn-end off: the 600 ms silence rule); without --speculate, audio-stop is sent then
  answer    decided -> first audio-out received (or already there: 0, when a guess's answer came first)
  worker    the worker's own `first_audio_ms` metric: audio-stop received -> first audio sent
  encoder   the worker's encoder stage busy on the turn (its metrics' stage_busy_ms)
  total     end of speech -> first audio-out received and playable (not before the decision)
--speculate P: DeviceTurns(speculate=P) asks a pause the detector finds complete with P(complete) >= P at once (a
guess: audio-stop goes out before the decision) and takes it back if the speaker goes on; 0 asks every pause at
its first ask, before the detector has answered.
Needs mosquitto and espeak-ng (make install).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_live import questions  # noqa: E402
from bench_turn_end import asks_of  # noqa: E402
from mqtt_support import Mosquitto, ServeProcess  # noqa: E402

RATE, BLOCK = 16000, 320  # 20 ms blocks
PARTS = ("total", "decide", "answer", "worker", "encoder")


async def device(broker_url: str, stream: np.ndarray, turn_end: str, speculate: float | None,
                 schedule: str | None) -> tuple[list, str]:
    from omnivox.mqtt import Client, DeviceTurns
    from omnivox.plugins.silero_vad import SileroVAD

    async with Client(broker_url, site="bench") as client:
        await client.wait_for_worker()
        vad = SileroVAD(turn_end=None if turn_end == "off" else turn_end, speculate=speculate, **asks_of(schedule))
        turns = await DeviceTurns.start(await client.session(), vad)
        asked, start = [], time.monotonic()
        for i in range(0, len(stream) - BLOCK + 1, BLOCK):
            captured = start + (i + BLOCK) / RATE  # the block's capture time: pushed when it would have arrived
            await asyncio.sleep(max(0.0, captured - time.monotonic()))
            for turn in await turns.push(stream[i:i + BLOCK], at=captured):
                asked.append((turn, time.monotonic()))
        rows = []
        for turn, decided in asked:
            answer = await turn.result(60)
            end = turns.speech_end[turn.id]
            if answer.first_audio_at is None:
                rows.append({"turn": turn.id, "answered": False, "why": (answer.reason, answer.errors)})
                continue
            playable = max(answer.first_audio_at, decided)  # a guess's answer waits for the decision
            rows.append({"turn": turn.id, "answered": True, "decide": (decided - end) * 1000,
                         "answer": (playable - decided) * 1000,
                         "worker": (answer.metrics or {}).get("first_audio_ms"), "total": (playable - end) * 1000,
                         "encoder": ((answer.metrics or {}).get("stage_busy_ms") or {}).get("encoder")})
        return rows, f"{turns.guesses} asked on a guess, {turns.withdrawn} of them taken back"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of silence after each question")
    parser.add_argument("--turn-end", default="default", help="the device VAD's end-of-turn detector, or off")
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--per-turn", action="store_true", help="also print each turn's parts")
    parser.add_argument("--speculate", type=float, default=None, help="ask on a guess at P(complete) >= this")
    parser.add_argument("--schedule", default=None, metavar="MS:P,MS:P", help="the detector's asks (ms of silence) "
                        "and the P(complete) that ends the turn at each (default 64:0.9999,160:0.9999)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        stream, _ = questions(args.turns, args.gap, folder)  # the questions of bench_live, streamed the same way
        broker = Mosquitto(folder).start()
        server = ServeProcess(folder, broker.url, worker="bench", http=False, max_steps=args.max_steps,
                              args=("--checkpoint", "demo"))
        try:
            server.start()
            rows, guesses = asyncio.run(device(broker.url, stream, args.turn_end, args.speculate, args.schedule))
        finally:
            server.stop()
            broker.kill()
    answered = [r for r in rows if r["answered"]]
    print(f"{len(answered)} answered turns of {len(rows)} asked ({args.turns} questions; default model; device "
          f"end-of-turn detector {args.turn_end}, asks {args.schedule or 'default'}; speculate {args.speculate}: "
          f"{guesses})")
    for row in rows:
        if not row["answered"]:
            print(f"  turn {row['turn']}: no audio (turn-end {row['why'][0]}, errors {row['why'][1]})")
    if args.per_turn:
        for row in answered:
            print(f"  turn {row['turn']:2d}: " + "  ".join(f"{part} {row[part]:.0f}" for part in PARTS
                                                          if row[part] is not None))
    print(f"{'part':<10}{'p50 ms':>8}{'p90 ms':>8}")
    for part in PARTS:
        values = [r[part] for r in answered if r[part] is not None]
        print(f"{part:<10}{statistics.median(values):8.0f}{float(np.percentile(values, 90)):8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
