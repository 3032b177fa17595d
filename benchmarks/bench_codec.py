"""The mel codec on held-out espeak-ng speech: ASR-yardstick WER after a round trip vs the original recordings,
bitrate, frame rate, tokens per second, encode/decode real-time factor on 1 thread, streaming vs whole decode.

    omnivox synth-data corpus --corpus --set sample_rate=16000 && omnivox train recipes/codec_mel.yaml
    python benchmarks/bench_codec.py [--codec runs/codec_mel/export] [--manifest corpus/test.codec.jsonl]

The manifest's test split is spoken in voices and rates the codec never trained on (training/corpus.py). Each
utterance is transcribed (faster-whisper tiny.en, beam 5, VAD; plugins/fw_transcriber.py) as recorded and after
encode + decode; the figure that matters is the ratio of the two WERs, on the same utterances and yardstick.
Streaming: every frame pushed one by one through `stream_decoder()`, compared with `decode()` of all frames
(SNR of the difference; identical audio reads "exact")."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import soundfile
import torch

from omnivox.core.audio import convert
from omnivox.plugins.fw_transcriber import Transcriber, word_error_rate
from omnivox.plugins.mel_codec import MelCodec


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """10 log10(|reference|^2 / |reference - other|^2); inf when identical."""
    noise = float((reference - other).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(reference.pow(2).sum()) / noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", default="runs/codec_mel/export", help="a trained mel codec directory")
    parser.add_argument("--manifest", default="corpus/test.codec.jsonl", help="held-out codec manifest")
    parser.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from omnivox.training.codec_trainer import CodecAudio

    lines = [json.loads(line) for line in Path(args.manifest).read_text().splitlines() if line.strip()]
    files = CodecAudio(args.manifest).files
    texts = [line["answer_text"] for line in lines]
    if args.limit:
        files, texts = files[: args.limit], texts[: args.limit]
    codec = MelCodec.load(args.codec)
    grid, config = codec.grid, codec.config
    transcriber = Transcriber(threads=args.threads, language="en")

    original, coded, seams = [], [], []
    seconds = encode_s = decode_s = 0.0
    for path in files:
        pcm, rate = soundfile.read(path, dtype="float32")
        seconds += len(pcm) / rate
        original.append(transcriber.transcribe(pcm, rate))
        start = time.perf_counter()
        frames = codec.encode(pcm, rate)
        encode_s += time.perf_counter() - start
        start = time.perf_counter()
        whole = codec.decode(frames)
        decode_s += time.perf_counter() - start
        decoder = codec.stream_decoder()
        streamed = torch.cat([decoder.push(frame) for frame in frames] + [decoder.flush()])
        seams.append(snr_db(whole, streamed))
        coded.append(transcriber.transcribe(whole.numpy(), grid.sample_rate))
    wer_original, wer_coded = word_error_rate(texts, original), word_error_rate(texts, coded)
    bits = math.log2(grid.codebook_size)
    tokens = grid.frame_rate * grid.n_slots
    seam = min(seams)
    print(f"{len(files)} held-out utterances ({seconds:.1f} s) from {args.manifest}; codec {args.codec}; "
          f"{args.threads} thread(s)")
    lookahead_ms = 1000 * config.lookahead_frames * config.hop / grid.sample_rate
    print(f"  codec: {config.n_mels} mel bands, {config.n_stages} stages x {grid.codebook_size} codes, "
          f"{grid.frame_rate:g} frames/s x {grid.n_slots} slots = {tokens:g} tokens/s, "
          f"{tokens * bits / 1000:.2f} kbit/s, lookahead {lookahead_ms:g} ms")
    print(f"  WER original {100 * wer_original:.2f}%  after the codec {100 * wer_coded:.2f}%  "
          f"ratio {wer_coded / wer_original if wer_original else math.nan:.2f}x (must be <= 1.5x)")
    print(f"  real-time factor at {args.threads} thread(s): encode {encode_s / seconds:.3f}, "
          f"decode {decode_s / seconds:.3f}")
    print(f"  streaming vs whole decode: min SNR {'exact (identical audio)' if seam == math.inf else f'{seam:.1f} dB'}")
    audio = convert(soundfile.read(files[0], dtype="float32")[0], soundfile.info(files[0]).samplerate,
                    to_rate=grid.sample_rate, mono=True)
    n_frames = codec.encode(audio, grid.sample_rate).shape[0]
    print(f"  e.g. {files[0].name}: {len(audio) / grid.sample_rate:.2f} s -> {n_frames} frames; "
          f"original {original[0]!r}, coded {coded[0]!r}")


if __name__ == "__main__":
    main()
