"""The shipped demo model on the held-out test split of its domain (training/demo_domain.py), through the
components its export recorded (the encoder that hears the question audio, the codec that speaks):

- per intent: text answers (A1T2) and spoken answers (A1A2: decoded by the codec, transcribed by the ASR
  yardstick plugins/fw_transcriber.py) that `score_answer` accepts (the answer's key fact), and text answers
  equal to the expected answer word for word (`exact_match`);
- the model's own ASR (A1T1: question audio -> its text) WER next to the yardstick's WER on the same audio;
- in the pipeline (file -> encoder -> LM -> codec -> sink; LM and codec threads as `omnivox chat` places them):
  time to first audio after the question, whole-turn real-time factor, and whether audio came first;
- the home-robot assistant's table (training/demo_robot.py, on DATA/robot_test.prepared.jsonl when it exists):
  single spoken and typed questions, follow-up turns, commands (exact action, spoken confirmation) and context
  questions, text right and spoken right, per group and intent, each turn run as a conversation (history, context).

    python benchmarks/bench_demo_model.py                                   # shipped `demo`, runs/demo/data
    python benchmarks/bench_demo_model.py --checkpoint runs/demo/stage3/export --data runs/demo/data --limit 5
    python benchmarks/bench_demo_model.py --limit 10 --stream-input 500:1500    # heard through chunked features

Greedy decoding; torch uses `--threads` (default 2) cores."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import soundfile as sf
import torch

from omnivox.core import progress
from omnivox.core.runtime.speech_kit import SpeechKit
from omnivox.training.demo_domain import answer_question, question_key, summarise


def test_questions(data: Path, limit: int | None) -> list[dict]:
    """The held-out questions of DATA (test.jsonl + demo.json): one row per question audio with its intent,
    question text, answer, and the tasks the manifest asks of it; at most `limit` per intent."""
    meta = json.loads((data / "demo.json").read_text(encoding="utf-8"))["questions"]
    rows: dict[str, dict] = {}
    for line in (data / "test.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        example = json.loads(line)
        key = question_key(example["id"])
        info = meta[key]
        row = rows.setdefault(key, {"key": key, "audio": str(data / example["question_audio"]),
                                    "intent": info["intent"], "question": info["question"], "answer": info["answer"],
                                    "tasks": set()})
        row["tasks"].add(example["task"])
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for row in rows.values():
        if limit is None or taken[row["intent"]] < limit:
            taken[row["intent"]] += 1
            chosen.append(row)
    return chosen


def accuracy(model, encoder, codec, questions: list[dict], transcriber, max_steps: int) -> list[dict]:
    """`demo_domain.answer_question` rows for every task of every question, from the features the export's
    encoder computes from the WAV (as the pipeline hears it); A1T1 rows also carry the yardstick's transcript."""
    rows = []
    for q in progress.bar(questions, desc="questions", unit="question", leave=False):
        pcm, rate = sf.read(q["audio"], dtype="float32")
        features = encoder.encode(pcm, rate)  # (T, F)
        for task in sorted(q["tasks"]):
            row = {"key": q["key"]} | answer_question(model, task, features, q, codec=codec, transcriber=transcriber,
                                                       max_steps=max_steps)
            if task == "A1T1":
                row["yardstick"] = transcriber.transcribe(pcm, rate)
            rows.append(row)
    return rows


def pipeline_latency(model, encoder, codec, questions: list[dict], max_steps: int) -> list[dict]:
    """Each question through the streaming pipeline: first audio (ms after the question's end), RTF, and
    whether the first audio reached the sink while the LM was still generating."""
    from omnivox.core.runtime.events import AudioOut
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.pipeline import Pipeline
    from omnivox.core.runtime.stage import Stage
    from omnivox.plugins.audio_files import FileAudioInput

    class Sink(Stage):
        consumes = (AudioOut,)

        def __init__(self, lm):
            super().__init__("sink")
            self.lm, self.early = lm, None

        async def process(self, event):
            if self.early is None:
                self.early = event.turn in self.lm.generating
            return
            yield

    rows = []
    for q in questions[:1] + questions:  # the first turn warms up (thread pools, first calls); not counted
        lm = LMStage(model=model, task="A1A2", max_steps=max_steps)
        sink = Sink(lm)
        turns = asyncio.run(Pipeline([FileAudioInput(q["audio"]), EncoderStage(encoder), lm, CodecStage(codec),
                                      sink]).run())
        metrics = turns[0]
        rows.append({"first_audio_ms": metrics.first_audio_ms, "rtf": metrics.rtf, "audio_first": sink.early,
                     "busy": dict(metrics.stage_busy_ms)})
    return rows[1:]


def report(results: list[dict], latency: list[dict]) -> None:
    from omnivox.plugins.fw_transcriber import word_error_rate

    summary = summarise(results, log=lambda line: None)
    for row in [r for r in results if r["task"] == "A1A2"][::max(1, len(results) // 15)][:5]:
        print(f"  expected {row['expected']!r}; said {row['text']!r}; heard {row['transcript']!r}")
    tasks = [("A1T2", "correct", "text A1T2"), ("A1A2", "correct", "spoken A1A2"), ("A1T2", "exact", "text exact")]
    print(f"{'intent':14s} " + " ".join(f"{title:>18s}" for _, _, title in tasks))
    intents = sorted({r["intent"] for r in results}) + ["all"]
    for intent in intents:
        cells = []
        for task, key, _ in tasks:
            scored = [r[key] for r in results if r["task"] == task and intent in (r["intent"], "all")]
            cells.append(f"{sum(scored) / len(scored) * 100:5.1f}% ({sum(scored)}/{len(scored)})" if scored else "-")
        print(f"{intent:14s} " + " ".join(f"{cell:>18s}" for cell in cells))
    asr = [r for r in results if r["task"] == "A1T1"]
    if asr:
        print(f"ASR WER on the question audio ({len(asr)} questions): model A1T1 "
              f"{summary['overall']['A1T1']['wer'] * 100:.1f}%, yardstick "
              f"{word_error_rate([r['expected'] for r in asr], [r['yardstick'] for r in asr]) * 100:.1f}%")
    if latency:
        first = [r["first_audio_ms"] for r in latency if r["first_audio_ms"] is not None]
        rtf = [r["rtf"] for r in latency if r["rtf"] is not None]
        early = sum(bool(r["audio_first"]) for r in latency)
        if not first:
            print(f"pipeline, {len(latency)} turns: no turn produced audio")
        else:
            print(f"pipeline, {len(latency)} turns ({len(latency) - len(first)} without audio): first audio p50 "
                  f"{statistics.median(first):.0f} ms, max {max(first):.0f} ms; whole-turn RTF p50 "
                  f"{statistics.median(rtf):.3f}, max {max(rtf):.3f}; first audio while the LM was generating in "
                  f"{early}/{len(latency)} turns")
        busy = defaultdict(list)
        for r in latency:
            for stage, ms in r["busy"].items():
                busy[stage].append(ms)
        print("busy per turn p50: " + ", ".join(f"{s} {statistics.median(v):.0f} ms" for s, v in busy.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo", help="the model (default: the shipped demo)")
    parser.add_argument("--data", default="runs/demo/data", help="the demo data folder (test.jsonl, demo.json)")
    parser.add_argument("--limit", type=int, help="at most this many test questions per intent")
    parser.add_argument("--latency-turns", type=int, default=10, help="questions run through the pipeline")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--robot-limit", type=int, default=12,
                        help="robot table: at most this many lines per group, task and intent (0: skip the table)")
    parser.add_argument("--stream-input", metavar="CHUNK_MS[:CONTEXT_MS]",
                        help="hear through streaming input's chunked features (docs/streaming_input.md)")
    parser.add_argument("--json", metavar="FILE", help="also write every per-question result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    for needed in ("test.jsonl", "demo.json"):
        if not (data / needed).is_file():
            parser.error(f"{data / needed} not found: build the data (python -m omnivox.training.demo_domain build "
                         f"{data}) or pass --data")
    from omnivox.plugins.fw_transcriber import Transcriber

    kit = SpeechKit.load(args.checkpoint, say=lambda line: None)  # as `omnivox chat` chooses
    model, encoder, codec = kit.model, kit.encoder, kit.codec
    if args.stream_input:
        from omnivox.core.chunked_encoder import chunked

        encoder = chunked(encoder, args.stream_input)
    questions = test_questions(data, args.limit)
    print(f"{args.checkpoint}: {model.source}; {len(questions)} held-out questions; torch threads {args.threads}")
    start = time.perf_counter()
    results = accuracy(model, encoder, codec, questions, Transcriber(threads=args.threads), args.max_steps)
    print(f"scored in {time.perf_counter() - start:.0f} s")
    spread = questions[:: max(1, len(questions) // max(1, args.latency_turns))][: args.latency_turns]
    latency = pipeline_latency(model, encoder, codec, spread, args.max_steps) if spread else []
    report(results, latency)
    robot = None
    if args.robot_limit and (data / "robot_test.prepared.jsonl").is_file():
        from omnivox.plugins.demo_model import DEMO, DEMO_DIR
        from omnivox.training.demo_robot import evaluate

        print("home-robot assistant (conversations, context, actions):")
        robot = evaluate(DEMO_DIR if args.checkpoint == DEMO else args.checkpoint, data / "robot_test.prepared.jsonl",
                         limit=args.robot_limit)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "latency": latency, "robot": robot}, indent=1,
                                              default=list))
    return 0


if __name__ == "__main__":
    sys.exit(main())
