"""End of turn: the silence rule against the end-of-turn detector, on held-out utterances that pause 300-800 ms
mid-sentence (training/turn_end.py's test streams: held-out phrasings, values and voices).

    python -m omnivox.training.turn_end build runs/turn_end/data && omnivox train recipes/turn_end.yaml
    python benchmarks/bench_turn_end.py [--data runs/turn_end/data] [--detector runs/turn_end/export]
        [--threshold 0.5 0.9] [--ask-ms 96 128 160] [--schedule 64:0.9999,160:0.999] [--accuracy [--speculate P]]

Each recording (pre-roll, the sentence with its inner pause, 1 s of silence) streams through SileroVAD in 32 ms
chunks, as a microphone would feed it (no wall clock: audio time). Per rule it prints:
  false cut-ins   turns ended inside the inner pause (the speaker was mid-sentence)
  decision        end of speech -> end of turn decided, in audio time: p50 / p90 over the recordings that were
                  not cut in (the silence the rule waits for; VAD frames are 32 ms)
  held            complete sentences whose end was decided later than 500 ms (by the hold: the detector was unsure)
  detector        its compute per question asked (Whisper tiny.en encoder on the last 3 s + the network), p50 /
                  p90 wall ms on this machine; it adds to the decision when the detector is on
With --accuracy, the default model (models/demo) answers the recordings that are demo questions (not the robot's
commands), as each rule cut them: the last turn's audio (a question cut in two is answered from its second part),
and the whole recording with no VAD as the reference; text (A1T2) and speech (A1A2, heard by the ASR yardstick)
scored by training/demo_domain.py's score_answer. --speculate P adds the default detector asked on a guess (the
VAD's EndLikely at P(complete) >= P, as DeviceTurns asks it): a guess that stands is answered from the audio up to
the guess (its turn ends later; the decisions and cut-ins are the default's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from echo_scenes import stream_events, stream_turns  # noqa: E402

from omnivox.core import audio  # noqa: E402
from omnivox.plugins.audio_files import read_audio  # noqa: E402
from omnivox.plugins.silero_vad import (  # noqa: E402
    TURN_END_SILENCE_MS,
    TURN_END_THRESHOLD,
    SileroVAD,
    load_silero,
    turn_end_asks,
)

CHUNK_S = 0.032
HELD_MS = 500  # a decision later than this came from the hold (1000 ms) or a silence rule, not an early ask


class TimedDetector:
    """The detector, timing each question it is asked."""

    def __init__(self, detector):
        self.detector, self.ms = detector, []

    def probability(self, pcm: np.ndarray) -> float:
        start = time.perf_counter()
        p = self.detector.probability(pcm)
        self.ms.append((time.perf_counter() - start) * 1000)
        return p


def evaluate(make_vad, streams: list[dict], data: Path) -> dict:
    cut_ins, delays = 0, []
    for item in streams:
        pcm, rate = read_audio(data / item["audio"])
        pcm = audio.to_mono(pcm)  # (channels, n) -> (n,)
        ends = [end for _, end in stream_turns(make_vad(), pcm.astype(np.float32), rate, CHUNK_S)]
        if any(end < item["speech_end_s"] - 0.05 for end in ends):
            cut_ins += 1
        elif ends:
            delays.append((ends[-1] - item["speech_end_s"]) * 1000)
    held = sum(delay > HELD_MS for delay in delays)
    return {"false_cut_ins": cut_ins / len(streams), "n": len(streams), "delays": delays,
            "held": held / max(1, len(delays))}


def accuracy(make_vads: dict, streams: list[dict], data: Path, log=print) -> dict:
    """{rule: {"text", "spoken", "n"}}: the default model's answers to the demo questions among `streams`, each cut by
    each rule's VAD (None: the whole recording)."""
    from omnivox.core.runtime.events import AudioChunk, EndLikely, TurnEnd, VoiceResumed
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.plugins.fw_transcriber import Transcriber
    from omnivox.training.demo_domain import DemoConfig, answer_question, questions

    asked = {q.text: {"intent": q.intent, "answer": q.answer, "question": q.text} for q in questions(DemoConfig())}
    kit, transcriber = SpeechKit.load("demo", say=lambda line: None), Transcriber()
    figures = {}
    for name, make in make_vads.items():
        right = {"A1T2": 0, "A1A2": 0}
        items = [item for item in streams if item["text"] in asked]
        for item in items:
            pcm, rate = read_audio(data / item["audio"])
            pcm = audio.to_mono(pcm).astype(np.float32)
            if make is not None:
                events = stream_events(make(), pcm, rate, CHUNK_S)
                last = max((e.turn_id for e in events if isinstance(e, TurnEnd)), default=None)
                turn = [e for e in events if e.turn_id == last]
                kinds = [type(e) for e in turn]
                if EndLikely in kinds and VoiceResumed not in kinds[len(kinds) - kinds[::-1].index(EndLikely):]:
                    turn = turn[:len(kinds) - kinds[::-1].index(EndLikely)]  # the guess stood: asked up to it
                chunks = [e.to_float32()[:, 0] for e in turn if isinstance(e, AudioChunk)]
                pcm = np.concatenate(chunks) if chunks else np.zeros(rate // 10, np.float32)
            features = kit.encoder.encode(pcm, rate)
            for task in right:
                right[task] += answer_question(kit.model, task, features, asked[item["text"]], codec=kit.codec,
                                               transcriber=transcriber)["correct"]
        figures[name] = {"text": right["A1T2"] / len(items), "spoken": right["A1A2"] / len(items), "n": len(items)}
        log(f"{name:<48}{figures[name]['text']:>10.1%}{figures[name]['spoken']:>10.1%}   ({len(items)} questions)")
    return figures


def asks_of(schedule: str | None) -> dict:
    """SileroVAD's ask parameters from "MS:P,MS:P" (None: its defaults)."""
    if schedule is None:
        return {}
    asks = [ask.split(":") for ask in schedule.split(",")]
    return {"turn_end_silence_ms": [int(ms) for ms, _ in asks], "turn_end_threshold": [float(p) for _, p in asks]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "runs/turn_end/data"))
    parser.add_argument("--detector", default="default", help="export folder, or 'default' (models/turn_end)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many recordings (0: all)")
    parser.add_argument("--threads", type=int, default=1, help="the detector encoder's threads")
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.9, TURN_END_THRESHOLD],
                        help="P(complete) threshold(s) of the detector rule (one row each)")
    parser.add_argument("--ask-ms", type=int, nargs="+", default=list(TURN_END_SILENCE_MS),
                        help="silence(s) after which the VAD asks the detector (turn_end_silence_ms; one row each)")
    parser.add_argument("--schedule", nargs="+", default=[], metavar="MS:P,MS:P",
                        help="also these ask schedules, one row each (e.g. 64:0.9999,160:0.999: asks at 64 and 160 ms "
                        "of silence with their thresholds)")
    parser.add_argument("--accuracy", action="store_true", help="also the default model's held-out accuracy on the "
                        "questions as cut with no VAD, the 600 ms rule and the default detector")
    parser.add_argument("--speculate", type=float, default=None, help="with --accuracy: also the default detector "
                        "asked on a guess at P(complete) >= this")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    data = Path(args.data)
    streams = [json.loads(line) for line in (data / "test_streams.jsonl").read_text().splitlines()]
    streams = streams[: args.limit or None]
    from omnivox.plugins.turn_end import TurnEndDetector

    timed = TimedDetector(TurnEndDetector(args.detector, threads=args.threads))
    silero = load_silero()

    def vad(**params):
        def make():
            v = SileroVAD(**params)
            v.model = silero
            silero.reset_states()
            if "turn_end" in params:
                v.detector = timed
            return v
        return make

    rules = {"silence 600 ms (no detector)": vad(end_silence_ms=600), "silence 300 ms": vad(end_silence_ms=300)}
    for ask in args.ask_ms:
        for threshold in args.threshold:
            rules[f"detector >= {threshold:g} at {ask} ms, hold 1000"] = vad(
                turn_end=args.detector, turn_end_silence_ms=ask, turn_end_threshold=threshold)
    for schedule in args.schedule:
        rules[f"detector {schedule}, hold 1000"] = vad(turn_end=args.detector, **asks_of(schedule))
    schedule = ", ".join(f">= {bar:g} at {ms}" for ms, bar in turn_end_asks(TURN_END_SILENCE_MS))
    rules[f"default: {schedule}"] = vad(turn_end=args.detector)
    print(f"{len(streams)} held-out recordings, inner pauses 300-800 ms\n")
    print(f"{'rule':<48}{'false cut-ins':>15}{'decision p50':>14}{'p90':>8}{'held':>8}")
    figures = {}
    rows = [(name, make, streams) for name, make in rules.items()]
    built = json.loads((data / "summary.json").read_text())["config"] if (data / "summary.json").is_file() else {}
    if built.get("everyday"):  # the default rule on each group too
        from omnivox.training.everyday import everyday_sentences

        everyday = {text for group in everyday_sentences().values() for text in group["test"]}
        groups = {"everyday sentences": [s for s in streams if s["text"] in everyday],
                  "demo questions and commands": [s for s in streams if s["text"] not in everyday]}
        rows += [(f"  default, {group} ({len(part)})", rules[f"default: {schedule}"], part)
                 for group, part in groups.items()]
    for name, make, part in rows:
        got = evaluate(make, part, data)
        figures[name.strip()] = {"false_cut_ins": got["false_cut_ins"], "held": got["held"],
                                 "decision_p50_ms": percentile(got["delays"], 50),
                                 "decision_p90_ms": percentile(got["delays"], 90)}
        print(f"{name:<48}{got['false_cut_ins']:>14.1%}{percentile(got['delays'], 50):>11.0f} ms"
              f"{percentile(got['delays'], 90):>5.0f} ms{got['held']:>8.1%}")
    print(f"\ndetector compute per question: p50 {statistics.median(timed.ms):.0f} ms, p90 "
          f"{percentile(timed.ms, 90):.0f} ms over {len(timed.ms)} questions ({args.threads} thread(s))")
    figures["detector_ms"] = {"p50": statistics.median(timed.ms), "p90": percentile(timed.ms, 90)}
    if args.accuracy:
        print(f"\n{'the default model answers, as cut by':<48}{'text':>10}{'spoken':>10}")
        rows = {"whole recording (no VAD)": None, "silence 600 ms (no detector)": rules["silence 600 ms (no detector)"],
                f"default: {schedule}": rules[f"default: {schedule}"]}
        if args.speculate is not None:
            rows[f"default, asked on a guess at >= {args.speculate:g}"] = vad(turn_end=args.detector,
                                                                          speculate=args.speculate)
        figures["accuracy"] = accuracy(rows, streams, data)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
