"""The ASR yardstick on held-out espeak-ng sentences, and the faster-whisper encoder's speed at 1 thread.

    python benchmarks/bench_asr.py [--sentences 20] [--threads 1] [--model DIR]

Speaks `--sentences` new template sentences (training/corpus.py) in the corpus builder's held-out test voices
and rates, then scores the transcriber (default: shipped tiny.en; beam 5, VAD on) on them clean, with white
noise at 15 dB SNR and through sox reverb (the same utterances, so the ratios compare like with like).
Speed, in one process on `--threads` threads: real-time factor (compute seconds per audio second) of the
CTranslate2 encoder and of whole transcription, against openai-whisper's PyTorch AudioEncoder at the same
width and depth (random weights: only speed is compared). Each utterance is encoded as Whisper does, in a
zero-padded 30 s window, so the encoder RTF falls as utterances get longer."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile
import torch

from omnivox.plugins.fw_encoder import load_fw_encoder
from omnivox.plugins.fw_transcriber import Transcriber, word_error_rate
from omnivox.plugins.whisper_encoder import load_whisper_encoder
from omnivox.training.corpus import CorpusConfig, Utterance, build_corpus, render

# openai-whisper's dims for the CTranslate2 model widths (same architecture, PyTorch)
WHISPER_DIMS = {384: (6, 4), 512: (8, 6), 768: (12, 12)}  # width -> (heads, layers): tiny, base, small


def held_out_set(directory: Path, sentences: int) -> tuple[list[Utterance], list[str]]:
    """Clean utterances (all in the test split: held-out voices and rates) and their texts."""
    config = CorpusConfig(sentences=sentences, qa_pairs=0, variants=1, seed=1234,
                          split={"train": 0.0, "validation": 0.0, "test": 1.0}, sample_rate=16000)
    summary = json.loads(build_corpus(directory, config, progress=False).read_text())
    jobs = [Utterance(**{**u, "path": directory / u["path"]}) for u in summary["utterances"]]
    return jobs, [job.text for job in jobs]


def timed(fn, items) -> tuple[list, float]:
    start = time.perf_counter()
    out = [fn(item) for item in items]
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", help="CTranslate2 Whisper directory, tiny.en (default) or base (its packages)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        clean, texts = held_out_set(Path(tmp), args.sentences)
        files = {
            "clean": [j.path for j in clean],
            "white noise 15 dB": [render(replace(j, path=j.path.with_name("n-" + j.path.name), snr_db=15.0), 16000)
                                  for j in clean],
            "sox reverb 60": [render(replace(j, path=j.path.with_name("r-" + j.path.name), reverberance=60.0),
                                     16000) for j in clean],
        }
        seconds = sum(soundfile.info(f).duration for f in files["clean"])
        transcriber = Transcriber(args.model, threads=args.threads, language="en")
        print(f"{len(texts)} held-out sentences ({seconds:.1f} s of speech), voices {CorpusConfig().test_voices}, "
              f"rates {CorpusConfig().test_rates}; model {args.model or 'tiny.en (shipped)'}, {args.threads} thread(s)")
        wers = {}
        for name, paths in files.items():
            hypotheses, elapsed = timed(transcriber.transcribe_file, paths)
            wers[name] = word_error_rate(texts, hypotheses)
            if name == "clean":
                transcribe_rtf = elapsed / seconds
        for name, wer in wers.items():
            ratio = f"({wer / wers['clean']:.2f}x clean)" if wers["clean"] else ""
            print(f"  WER {name:<18} {100 * wer:6.2f}%   {ratio}")

        audio = [soundfile.read(f, dtype="float32") for f in files["clean"]]
        fw = load_fw_encoder(args.model, threads=args.threads)
        heads, layers = WHISPER_DIMS[fw.feature_dim]
        torch_encoder = load_whisper_encoder(dims={"n_mels": fw.n_mels, "n_audio_ctx": 1500,
                                                   "n_audio_state": fw.feature_dim, "n_audio_head": heads,
                                                   "n_audio_layer": layers})
        fw.encode(*audio[0]), torch_encoder.encode(*audio[0])  # warm-up
        _, fw_time = timed(lambda a: fw.encode(*a), audio)
        _, torch_time = timed(lambda a: torch_encoder.encode(*a), audio)
    print(f"  encoder RTF (CTranslate2, width {fw.feature_dim}) {fw_time / seconds:.3f}   "
          f"openai-whisper PyTorch same shape {torch_time / seconds:.3f}   ({torch_time / fw_time:.2f}x faster)")
    print(f"  transcription RTF (beam 5, VAD) {transcribe_rtf:.3f}")


if __name__ == "__main__":
    main()
