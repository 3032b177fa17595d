"""Questions asked over a cut answer (a barge-in): does the model still answer them right? The default model's
conversation: "what is the capital of france?" answered aloud, its answer cut after --cuts columns (what was
played when the user spoke, Conversation.truncate), then each question of QUESTIONS in espeak-ng's default voice,
its audio starting --starts ms before the speech and ending --ends ms after it (where a VAD may cut it). Prints,
per question, how many of the cuts x starts x ends variants get the right text answer (greedy, text stream), and
the wrong answers heard. A model trained with cut histories (training/demo_robot.py `cut_histories`) against one
without: run it with --checkpoint on each.

    python benchmarks/bench_barge_in_history.py [--checkpoint demo] [--cuts 25 31 37]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np

FIRST = "what is the capital of france?"
QUESTIONS = [("what is the day after friday?", "day_after", "saturday comes after friday"),
             ("what day comes after monday?", "day_after", "tuesday comes after monday"),
             ("what is the capital of germany?", "capital", "the capital of germany is berlin"),
             ("what is the capital of spain?", "capital", "the capital of spain is madrid"),
             ("what is the month after march?", "month_after", "april comes after march"),
             ("is ice cold?", "yes_no", "yes, ice is cold")]
RATE = 16000


def spoken(text: str, folder: Path) -> tuple[np.ndarray, int, int]:
    """espeak-ng's default voice at 16 kHz, and where its speech starts and ends (samples above -34 dBFS)."""
    from omnivox.core import audio
    from omnivox.plugins.audio_files import read_audio
    from omnivox.training.synthetic import speak

    pcm, rate = read_audio(speak(text, folder / "q.wav", voice="en"))
    pcm = audio.resample(audio.to_mono(pcm), rate, RATE)
    loud = np.flatnonzero(np.abs(pcm) > 0.02)
    return pcm, int(loud[0]), int(loud[-1]) + 1


def bounded(pcm: np.ndarray, start: int, end: int, before_ms: int, after_ms: int) -> np.ndarray:
    """The speech with `before_ms` of the recording before it and `after_ms` after (zeros past its ends)."""
    lead, tail = before_ms * RATE // 1000, after_ms * RATE // 1000
    padded = np.concatenate([np.zeros(lead, np.float32), pcm, np.zeros(tail, np.float32)])
    return padded[start:end + lead + tail]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--cuts", type=int, nargs="+", default=[25, 31, 37], help="answer columns played")
    parser.add_argument("--starts", type=int, nargs="+", default=[150, 200, 250], help="ms of audio before speech")
    parser.add_argument("--ends", type=int, nargs="+", default=[96, 128, 160, 192, 224], help="ms after speech")
    parser.add_argument("--max-steps", type=int, default=60)
    args = parser.parse_args()

    import torch

    from omnivox.core.kernel.conversation import Conversation
    from omnivox.core.kernel.sampling import SamplingConfig
    from omnivox.core.runtime.speech_kit import SpeechKit
    from omnivox.training.demo_domain import score_answer

    torch.set_num_threads(1)
    kit = SpeechKit.load(args.checkpoint, say=lambda *_: None)
    greedy = SamplingConfig(temperature=0.0)
    with tempfile.TemporaryDirectory() as folder:
        first_pcm, s, e = spoken(FIRST, Path(folder))
        first = kit.encoder.encode(bounded(first_pcm, s, e, 200, 160), RATE)
        asked = {q: spoken(q, Path(folder)) for q, _, _ in QUESTIONS}
    print(f"{args.checkpoint}: after '{FIRST}' cut at {args.cuts} columns; question audio from "
          f"{args.starts} ms before to {args.ends} ms after the speech")
    total = 0
    for question, intent, expected in QUESTIONS:
        pcm, start, end = asked[question]
        heard = [kit.encoder.encode(bounded(pcm, start, end, before, after), RATE)
                 for before in args.starts for after in args.ends]
        right, wrong = 0, collections.Counter()
        for cut in args.cuts:  # the first answer once per cut; each variant is asked, then forgotten
            chat = Conversation(kit.model, strategy="text-delay")
            *_, done = chat.turn(task="A1A2", audio_features=first, sampling=greedy, max_steps=args.max_steps,
                                 turn_id=1).run()
            chat.truncate(min(cut, chat.history[-1].answer.shape[-1]), turn_id=1)
            for features in heard:
                *_, done = chat.turn(task="A1A2", audio_features=features, sampling=greedy,
                                     max_steps=args.max_steps, turn_id=2).run()
                chat.forget(2)  # as if never asked: the next variant follows the same cut answer
                text = kit.model.tokenizer.decode(done.result.text_ids)
                if score_answer(intent, expected, text):
                    right += 1
                else:
                    wrong[text] += 1
        variants = len(args.cuts) * len(heard)
        total += right
        print(f"  {question:<34} {right:>3}/{variants}  " + "; ".join(f"{t!r} x{n}" for t, n in wrong.most_common(3)),
              flush=True)
    print(f"  all: {total}/{variants * len(QUESTIONS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
