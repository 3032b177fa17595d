"""A long conversation's turn latency under the context-full policy (core/kernel/conversation.py `low_water`): the
default model's conversation of --turns spoken turns (one espeak-ng question's features, answers of --max-steps
steps) through a BatchEngine, `low_water` 1.0 (drop only the turns that must go: once the 512 positions are full,
every turn re-prefills the kept history) against the default 0.5 (cut to half the block: the next turns continue
that cache), the two conversations' turns interleaved in one process. Prints per setting the turn's submit -> first
text token and -> first complete codec frame, p50 / p90, the turns that re-prefilled, and the ratio to 1.0.

    python benchmarks/bench_conversation.py [--turns 24] [--max-steps 40] [--checkpoint demo]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def question_features(encoder, text: str) -> np.ndarray:
    import soundfile

    from omnivox.core import audio
    from omnivox.training.synthetic import speak

    with tempfile.TemporaryDirectory() as folder:
        wav = speak(text, Path(folder) / "q.wav", voice="en")  # espeak-ng's default voice
        pcm, rate = soundfile.read(wav, dtype="float32")
    return encoder.encode(audio.resample(pcm, rate, 16000), 16000)


def timed_turn(engine, conversation, features, max_steps: int, turn_id: int) -> tuple[float, float, bool]:
    """(ms to the first text token, ms to the first codec frame, whether the turn re-prefilled its history)."""
    from omnivox.core.kernel.generation import Done, FramePiece, TextPiece
    from omnivox.core.kernel.sampling import SamplingConfig

    marks, done, start = {}, threading.Event(), time.perf_counter()

    def emit(piece) -> None:  # in the engine's thread
        kind = "text" if isinstance(piece, TextPiece) else "frame" if isinstance(piece, FramePiece) else None
        if kind:
            marks.setdefault(kind, (time.perf_counter() - start) * 1000)
        if isinstance(piece, Done | Exception):
            done.set()

    before = conversation.state
    decoder = engine.submit(emit, conversation=conversation, turn_id=turn_id, task="A1A2", audio_features=features,
                            sampling=SamplingConfig(temperature=0.0), max_steps=max_steps)
    done.wait(30)
    return marks.get("text", np.nan), marks.get("frame", np.nan), before is not None and decoder.state is not before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--threads", type=int, default=1, help="the engine's torch threads (the LM's default)")
    args = parser.parse_args()

    from omnivox.core.kernel.batching import BatchEngine
    from omnivox.core.kernel.conversation import Conversation
    from omnivox.core.runtime.speech_kit import SpeechKit

    kit = SpeechKit.load(args.checkpoint, say=lambda *_: None)
    features = question_features(kit.encoder, "what day comes after monday")
    engine = BatchEngine(kit.model)
    engine.start(args.threads)
    settings = (1.0, 0.5)
    conversations = {w: Conversation(kit.model, strategy="text-delay", low_water=w) for w in settings}
    rows = {w: [] for w in settings}
    try:
        for turn in range(args.turns):
            for w in settings if turn % 2 == 0 else settings[::-1]:  # alternate which goes first
                rows[w].append(timed_turn(engine, conversations[w], features, args.max_steps, turn))
                time.sleep(0.05)
    finally:
        engine.stop()
    print(f"{args.turns} turns of {len(features)} feature frames, answers of {args.max_steps} steps, "
          f"{args.threads} LM thread(s); ms from submit, p50 / p90")
    base = np.nanmedian([r[1] for r in rows[1.0]])
    for w in settings:
        text, frame = np.array([r[0] for r in rows[w]]), np.array([r[1] for r in rows[w]])
        refills = sum(r[2] for r in rows[w])
        print(f"low_water {w:.1f}: first text {np.nanmedian(text):5.1f} / {np.nanpercentile(text, 90):5.1f}   "
              f"first frame {np.nanmedian(frame):5.1f} / {np.nanpercentile(frame, 90):5.1f}   "
              f"re-prefilled {refills} of {args.turns} turns   first frame {np.nanmedian(frame) / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
