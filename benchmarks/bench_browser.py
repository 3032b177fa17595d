"""End of speech -> first audio through a browser, and barge-in on the page's own playback clock: the page's live
mode (plugins/http/page/live.js) in Debian's chromium (Playwright), over HTTPS, against `omnivox serve --http
--checkpoint demo`; its fake microphone plays espeak-ng questions of the default model's domain in held-out
phrasings (bench_listen.DEMO_QUESTIONS), each followed by `--gap` s of silence (tests/browser_live.py).

    python benchmarks/bench_browser.py [--turns 16] [--gap 5] [--barge-ins 6] [--browser-nice 19] [--listen]
                                       [--rounds 1]

Per turn, on the page's audio clock: end of speech -> the answer's first sample played, from the end of speech
the server's VAD heard (`voice-stopped`'s place in the stream; as `omnivox listen` counts) and from the last loud
microphone frame; its split (the server's decision arrived, the first audio arrived, the jitter buffer); the
server's `first_audio_ms`. Barge-in: questions asked 0.8 s after the previous one ended, over its answer; the
server's detection (its wall clock, in `interrupted`) -> the page's playback stopped (its audio clock mapped to
wall time by getOutputTimestamp); one machine, one clock. `--listen` also runs bench_listen's `omnivox listen`
through virtual devices in this process, with the same questions: the baseline the browser is held to
(docs/live_api.md: at most listen + 50 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_listen import DEMO_QUESTIONS, listen_turns  # noqa: E402
from browser_live import browser_page, demo_server, microphone_wav, renice_browser, wait_for_turns  # noqa: E402


def p50_p90(values: list[float]) -> str:
    if not values:
        return f"{'-':>8}{'-':>8}"
    return f"{statistics.median(values):8.0f}{float(np.percentile(values, 90)):8.0f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def renice_until(microphone: Path, nice: int, done: threading.Event) -> None:
    """renice_browser every second until `done`: chromium starts threads as it plays (its audio output)."""
    while not done.wait(1.0):
        renice_browser(microphone, nice)


def live_session(server, folder: Path, questions: list[str], gaps: list[float], nice: int | None) -> dict:
    microphone, _ = microphone_wav(folder, questions, gaps, tail_s=10.0)
    with browser_page(microphone, server) as page:
        page.goto(server.url + "/")
        page.click("#live")
        done = threading.Event()
        if nice is not None:  # once the session runs, and every second after: threads it starts later (playback)
            page.wait_for_function("window.omnivox.live.state === 'listening'")
            renice_browser(microphone, nice)
            threading.Thread(target=renice_until, args=(microphone, nice, done), daemon=True).start()
        try:
            return wait_for_turns(page, len(questions), timeout_s=sum(gaps) + 3 * len(questions) + 60)
        finally:
            done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--gap", type=float, default=5.0, help="silence after each question (s): more than the "
                        "answer lasts, or the next question barges in")
    parser.add_argument("--barge-ins", type=int, default=6)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--browser-nice", type=int, default=None, help="run chromium's threads at this niceness "
                        "(e.g. 19), its real-time audio threads put back to the normal policy first: the browser then "
                        "hardly takes the server's cores, as on a phone")
    parser.add_argument("--listen", action="store_true", help="also omnivox listen, the baseline (virtual devices)")
    parser.add_argument("--rounds", type=int, default=1, help="browser then listen, this many times; figures over all "
                        "turns (a p50 of 16 turns moves by tens of ms between runs: some turns wait the 1 s hold)")
    args = parser.parse_args()
    asked = [DEMO_QUESTIONS[i % len(DEMO_QUESTIONS)] for i in range(args.turns)]
    turns, listen, per_round = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        with demo_server(folder, max_steps=args.max_steps) as server:
            for _ in range(args.rounds):  # the browser, then listen: each round's pair ran at about the same time
                live = live_session(server, folder, asked, [args.gap] * args.turns, args.browser_nice)
                heard = [t for t in live["turns"].values() if t["latencyMs"] is not None]
                listened = listen_turns("demo", args.turns, 6.0, args.max_steps)[0] if args.listen else []
                turns, listen = turns + heard, listen + listened
                per_round.append((median([t["latencyMs"] for t in heard]), median([t["latency_ms"] for t in listened])))
            # questions the detector ends at once (a held one would take the next question as its own second half)
            pairs = [DEMO_QUESTIONS[i % 4] for i in range(2 * args.barge_ins)]
            barged = live_session(server, folder, pairs, [0.8, args.gap] * args.barge_ins, args.browser_nice)
    print(f"{len(turns)} of {args.turns * args.rounds} questions answered aloud in the browser (default model, "
          f"/v1/live over HTTPS, max {args.max_steps} steps, chromium's niceness "
          f"{'unchanged' if args.browser_nice is None else args.browser_nice}); underruns "
          f"{sum(t['underruns'] for t in turns)}")
    print(f"{'end of speech -> first audio':<44}{'p50 ms':>8}{'p90 ms':>8}")
    rows = [("browser, from the VAD's end of speech", [t["latencyMs"] for t in turns]),
            ("browser, from the last loud frame", [t["fromLastLoudMs"] for t in turns]),
            ("  decision arrived", [t["split"]["turnEndMs"] for t in turns if t["split"]["turnEndMs"] is not None]),
            ("  first audio arrived", [t["split"]["answerMs"] for t in turns if t["split"]["answerMs"] is not None]),
            ("  jitter buffer", [t["split"]["bufferMs"] for t in turns]),
            ("  server first_audio_ms", [t["serverFirstAudioMs"] for t in turns if t["serverFirstAudioMs"]])]
    if args.listen:
        rows.append((f"listen ({len(listen)} answered), from the VAD's", [t["latency_ms"] for t in listen]))
    for name, values in rows:
        print(f"{name:<44}{p50_p90(values)}")
    if args.listen and turns and listen:
        gap = statistics.median(rows[0][1]) - statistics.median(rows[-1][1])
        print(f"browser p50 - listen p50: {gap:+.0f} ms (the bar: at most +50)")
        if args.rounds > 1:
            print("per round, browser / listen p50 ms: " + ", ".join(f"{b:.0f} / {q:.0f}" for b, q in per_round))
    stops = [b["ms"] for b in barged["bargeIns"]]
    print(f"\nbarge-in: {len(stops)} of {args.barge_ins} questions over an answer stopped it; server detection -> "
          f"the page's playback stopped: p50 {median(stops):.0f} ms, max "
          f"{max(stops, default=float('nan')):.0f} ms (the bar: 200)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
