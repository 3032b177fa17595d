"""Whisper encoder, padded 30 s window (the default, upstream's features) vs `trim=True` (only the frames kept).

Per question length: encode seconds of both (median of interleaved repeats) and their ratio, and the trimmed
features' error vs the padded reference: relative L2 error over all frames and the min / mean cosine
similarity per frame. Questions are spoken by espeak-ng (a sentence repeated to the length; a chirp where
espeak-ng is missing). Weights: Whisper `small` shape with random weights, or --checkpoint small.pt (the
error figure of trained weights is the one to choose by).

    python benchmarks/bench_whisper_trim.py [--checkpoint small.pt] [--seconds 1 2 5 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from omnivox.core import audio
from omnivox.plugins.whisper_encoder import load_whisper_encoder

SMALL = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 768, "n_audio_head": 12, "n_audio_layer": 12}
SENTENCE = "What is the capital of France, and how many people live there today? "


def question(seconds: float) -> tuple[np.ndarray, str]:
    """(16 kHz float32 speech of `seconds`, what it is)."""
    n = round(seconds * 16000)
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp, "q.wav")
            subprocess.run(["espeak-ng", "-w", str(wav), SENTENCE * 4], check=True, capture_output=True)
            pcm, rate = soundfile.read(wav, dtype="float32", always_2d=False)
        x = audio.convert(pcm, rate, to_rate=16000, mono=True)
        return np.resize(x, n).astype(np.float32), "espeak-ng speech"
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), "chirp (no espeak-ng)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an openai-whisper .pt (Mini-Omni's small.pt); default random small")
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kw = {"checkpoint": args.checkpoint} if args.checkpoint else {"dims": SMALL, "seed": 0}
    padded = load_whisper_encoder(**kw)
    trimmed = load_whisper_encoder(**kw, trim=True)
    trimmed.encoder = padded.encoder  # the same weights
    print(f"Whisper encoder {'from ' + args.checkpoint if args.checkpoint else 'small shape, random weights'}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'question':>8} {'frames':>6} | {'padded s':>8} {'trimmed s':>9} {'speed-up':>8} | "
          f"{'rel. L2 error':>13} {'cos min':>7} {'cos mean':>8}")
    for seconds in args.seconds:
        pcm, what = question(seconds)
        ref, ours = padded.encode(pcm, 16000), trimmed.encode(pcm, 16000)  # also warms up
        times = {"padded": [], "trimmed": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for name, enc in (("padded", padded), ("trimmed", trimmed)):
                t = time.perf_counter()
                enc.encode(pcm, 16000)
                times[name].append(time.perf_counter() - t)
        t_pad, t_trim = statistics.median(times["padded"]), statistics.median(times["trimmed"])
        error = ((ours - ref).norm() / ref.norm()).item()
        cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)  # (T,)
        print(f"{seconds:>7.1f}s {ref.shape[0]:>6} | {t_pad:>8.3f} {t_trim:>9.3f} {t_pad / t_trim:>7.1f}x | "
              f"{error:>13.3f} {cos.min().item():>7.3f} {cos.mean().item():>8.3f}   ({what})", flush=True)


if __name__ == "__main__":
    main()
