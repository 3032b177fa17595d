"""End-to-end `omnivox chat` path at Mini-Omni shape (random weights): Whisper `small` encoder, the quantised
LM, SNAC 24 kHz streaming decode, one spoken question, and where the wall clock goes.

The pipeline is the chat one (EncoderStage -> LMStage -> CodecStage -> a recording sink), run once per
thread placement, in the same process on the same weights:
  shared   the LM and the codec each on --threads OpenMP threads on the same cores (before the placement of
           issue 11)
  placed   the LM stage's default: LM thread --threads - 1 torch threads (at least 1), codec thread 1
  lm-all   LM thread --threads torch threads, codec thread 1 (the codec's default)
Per placement it prints: time to first audio (ms from the end of the question, and LM steps), the real-time
factor from the first LM step (the LM's start, prefill included) to the last sample, RTF including the
encoder, the wall-clock split (encoder, prefill, LM steps, codec busy), and each stage's busy time over the
same work run alone (the encoder on the same audio; the LM generating the same turn; the codec stream-decoding
the same frames on its thread budget): 1.0 = no slowdown from sharing the cores. As the commands that answer
run (core/kernel/threads.py), the main thread keeps 1 torch thread and the encoder runs on --threads in a thread
that ends with it, so that the LM's engine thread alone keeps a team (until 2026-12-05 the main thread ran
--threads; the placed RTF was the same both ways that day, 0.78 / 0.77 against 0.80 / 0.82).

With --upstream-repo DIR (a Mini-Omni checkout, `pip install lightning`; see bench_vs_upstream.py) the weights
are a fabricated upstream-format checkpoint read by both sides, and upstream's own streaming path runs on them in
the same process: inference.py `OmniInference.run_AT_batch_stream` (its loop over `next_token_batch`, a SNAC
decode of every 4 new frames on their own, `stream_stride` 4) with the same Whisper encoder, the same SNAC
model and the question's samples in place of its file read; fp32 (upstream has no quantised mode), torch's
--threads. Random weights pick special audio ids at arbitrary steps (the answer's audio ends at the first one),
so both sides' heads get those rows zeroed, as the `tiny-random` model's (plugins/random_models.py), and every
answer speaks its whole step budget.

    python benchmarks/bench_chat_e2e.py [--steps 48] [--seconds 2] [--threads 2] [--scheme int8-channel] [--trim]
        [--repeat 1] [--placements shared placed lm-all] [--upstream-repo /tmp/mini-omni]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loop wraps tqdm, read when tqdm is first imported
import numpy as np  # noqa: E402
import torch  # noqa: E402

from omnivox import OmniModel
from omnivox.core import audio
from omnivox.core.contracts.codec import push_frames
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.generation import Done
from omnivox.core.kernel.quantize import DEFAULT_SCHEME, SCHEMES, quantize
from omnivox.core.kernel.strategies import get_strategy
from omnivox.core.kernel.threads import set_threads
from omnivox.core.runtime.events import AudioChunk, AudioOut, AudioStart, AudioStop, TextToken, TurnEnd, TurnStart
from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage, torch_executor
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage
from omnivox.core.runtime.testing import ChunkRecordingCodec
from omnivox.plugins.random_models import never_emit_audio_specials, zero_audio_special_rows
from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG, SnacCodec
from omnivox.plugins.whisper_encoder import load_whisper_encoder

sys.path.insert(0, str(Path(__file__).parent))
from bench_whisper_trim import SMALL, question  # noqa: E402  (a 16 kHz espeak-ng question)

FRAME_S = 2048 / 24000  # one SNAC 24 kHz coarse frame = one LM step


class Recorder(Stage):
    """Sink: the monotonic time of the first text token (LM step 0, the prefill's) and of every AudioOut."""

    consumes = (TextToken, AudioOut)

    def __init__(self):
        super().__init__("recorder")
        self.first_token: float | None = None
        self.audio: list[tuple[float, int]] = []  # (time, samples)

    async def process(self, event):
        if isinstance(event, TextToken) and self.first_token is None:
            self.first_token = event.timestamp
        elif isinstance(event, AudioOut):
            self.audio.append((time.monotonic(), len(event.audio) // 2))
        return
        yield  # pragma: no cover


def end_text_after(model: OmniModel, steps: int) -> None:
    """Make the random model's text stream end (eot) at its `steps`-th text head call of each answer, as a real
    answer's text ends long before its speech (about 3 text tokens per second of audio against 11.7 frames);
    after eot the text head is no longer computed (core/kernel/generation.py, batching.py)."""
    lm, calls = model.lm, {"n": 0}
    head, new_cache, text_vocab, eot = lm._head, lm.new_cache, lm.layout.text_vocab_size, model.layout.eot

    def counted(hidden, start, stop):
        logits = head(hidden, start, stop)
        if hidden is not None and start == 0 and stop == text_vocab:
            calls["n"] += 1
            if calls["n"] == steps + 1:  # the prefill's call counts as the first
                logits = logits.clone()
                logits[..., eot] = float("inf")
        return logits

    def fresh_cache():  # every answer starts with one (its prefill)
        calls["n"] = 0
        return new_cache()

    lm._head, lm.new_cache = counted, fresh_cache


def question_events(pcm: np.ndarray) -> list:
    fmt = audio.AudioFormat(rate=16000, width=2, channels=1)
    data = audio.to_bytes(pcm.reshape(1, -1), fmt)
    chunks = [AudioChunk(audio=data[i:i + 6400], rate=16000) for i in range(0, len(data), 6400)]
    return [TurnStart(), AudioStart(rate=16000, width=2, channels=1), *chunks, AudioStop(), TurnEnd(reason="done")]


def run_pipeline(encoder, model, codec, pcm, args, lm_threads: int | None, codec_threads: int | None) -> dict:
    recorder = Recorder()
    lm = LMStage(args.strategy, model=model, task="A1A2", max_steps=args.steps, threads=lm_threads)
    logged = ChunkRecordingCodec(codec)
    stages = [EncoderStage(encoder), lm, CodecStage(logged, threads=codec_threads, max_chunk=args.max_chunk), recorder]
    events = question_events(pcm)
    start = time.monotonic()
    turns = asyncio.run(Pipeline(stages).run(events))
    metrics = turns[0]
    busy = {k: v / 1000 for k, v in metrics.stage_busy_ms.items()}
    question_end = start  # the events are fed at once: the question ends at the start
    samples = sum(n for _, n in recorder.audio)
    audio_s, last = samples / 24000, recorder.audio[-1][0]
    lm_start = question_end + busy["encoder"]
    result = next(iter(lm.results.values()))
    return dict(first_audio_ms=metrics.first_audio_ms, first_audio_step=metrics.first_audio_step, audio_s=audio_s,
                rtf_lm=(last - lm_start) / audio_s, rtf_all=(last - question_end) / audio_s, busy=busy,
                prefill=recorder.first_token - lm_start, result=result, chunks=logged.chunks)


def alone(encoder, model, codec, pcm, frames: torch.Tensor, chunks: list[int], args, lm_threads: int,
          codec_threads: int | None) -> dict:
    """The same work, one stage at a time, each on its thread budget in the pipeline (the codec decoding the
    same chunks of frames)."""
    t = time.perf_counter()
    with torch_executor("bench-encoder", args.threads) as pool:  # as EncoderStage: every core, a thread that ends
        features = pool.submit(encoder.encode, pcm.reshape(1, -1), 16000).result()
    enc = time.perf_counter() - t
    done, last, engine = threading.Event(), [], BatchEngine(model)  # as the LM stage runs it (prefill on every core)

    def emit(piece):
        if isinstance(piece, (Done, Exception)):
            last.append(piece)
            done.set()

    engine.submit(emit, task="A1A2", audio_features=torch.as_tensor(features), strategy=get_strategy(args.strategy),
                  max_steps=args.steps)
    t = time.perf_counter()
    engine.start(lm_threads)
    done.wait()
    lm = time.perf_counter() - t
    engine.stop()
    if isinstance(last[0], Exception):  # a failed answer has no time to report
        raise last[0]

    def decode():
        decoder, t0, at = codec.stream_decoder(), time.perf_counter(), 0
        for n in chunks:
            push_frames(decoder, frames[at:at + n])
            at += n
        decoder.flush()
        return time.perf_counter() - t0

    with torch_executor("alone-codec", codec_threads) as pool:
        codec_s = pool.submit(decode).result()
    return {"encoder": enc, "lm": lm, "codec": codec_s}


def upstream_stream(up: SimpleNamespace, fabric, model, encoder, codec, pcm: np.ndarray, steps: int) -> dict:
    """Upstream's streaming answer (run_AT_batch_stream) to the question `pcm` (16 kHz float): first audio (ms
    from the question's end, which is the call), RTF from its first model step and overall, audio seconds."""
    inf, whisper = up.inference, up.inference.whisper
    first_step: list[float] = []
    step = inf.next_token_batch

    def timed_step(*a, **k):
        first_step.append(first_step[0] if first_step else time.perf_counter())
        return step(*a, **k)

    host = SimpleNamespace(model=model, fabric=fabric, device="cpu", snacmodel=codec.model,
                           whispermodel=SimpleNamespace(embed_audio=encoder.encoder),  # whisper's AudioEncoder
                           text_tokenizer=SimpleNamespace(decode=lambda ids: ""))
    n_frames = int(len(pcm) / 16000 * 1000 / 20) + 1  # inference.py load_audio's length
    load_audio, inf.next_token_batch = whisper.load_audio, timed_step
    whisper.load_audio = lambda _path: pcm.astype(np.float32)  # upstream decodes the file with ffmpeg
    try:
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:  # it checks the path exists
            start, first, samples = time.perf_counter(), None, 0
            for chunk in inf.OmniInference.run_AT_batch_stream(host, wav.name, stream_stride=4,
                                                               max_returned_tokens=n_frames + 3 + steps):
                first = first or time.perf_counter()
                samples += len(chunk) // 2
            last = time.perf_counter()
    finally:
        whisper.load_audio, inf.next_token_batch = load_audio, step
    audio_s = samples / 24000
    return dict(first_audio_ms=(first - start) * 1000, rtf_lm=(last - first_step[0]) / audio_s,
                rtf_all=(last - start) / audio_s, audio_s=audio_s)


def load_upstream_pair(repo: Path, seed: int):
    """(upstream namespace, fabric, upstream GPT, our fp32 OmniModel) on one fabricated Mini-Omni checkpoint."""
    import bench_vs_upstream as vs

    up = vs.import_upstream(repo)
    with tempfile.TemporaryDirectory() as tmp:
        vs.write_upstream_checkpoint(Path(tmp), dict(vs.UPSTREAM_FIELDS), seed=seed)
        fabric, upstream_model = vs.load_upstream_model(up, Path(tmp))
        ours = OmniModel.from_pretrained(tmp)
    return up, fabric, upstream_model, ours


def _spread(values: list[float], unit: str = "") -> str:
    """'median (min-max)' of sorted values."""
    return f"{values[len(values) // 2]:.2f}{unit} ({values[0]:.2f}-{values[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=48, help="answer length in LM steps")
    parser.add_argument("--seconds", type=float, default=2.0, help="question length")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the process (the cores to use)")
    parser.add_argument("--strategy", default="batch-parallel", help="decoding strategy (the streaming mode)")
    parser.add_argument("--scheme", default=DEFAULT_SCHEME, choices=[*SCHEMES, "fp32"])
    parser.add_argument("--trim", action="store_true", help="Whisper trim: encode only the question's frames")
    parser.add_argument("--max-chunk", type=int, default=4, help="CodecStage max_chunk (1: decode frame by frame)")
    parser.add_argument("--text-steps", type=int, help="end the text stream after this many steps (default: never)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the placements (median and range printed)")
    parser.add_argument("--placements", nargs="+", default=["shared", "placed", "lm-all"],
                        choices=["shared", "placed", "lm-all"])
    parser.add_argument("--upstream-repo", type=Path, help="a Mini-Omni checkout: also run upstream's streaming path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.upstream_repo:
        up, fabric, upstream_model, fp32 = load_upstream_pair(args.upstream_repo, seed=0)
        zero_audio_special_rows(upstream_model.module.lm_head.weight, fp32.layout)  # Mini-Omni's vocab rows
    else:
        fp32 = OmniModel.random(OmniConfig.mini_omni(), seed=0)
    never_emit_audio_specials(fp32)  # before quantising: the zero rows stay zero
    model = fp32 if args.scheme == "fp32" else OmniModel(quantize(copy.deepcopy(fp32.lm), args.scheme), None)
    del fp32
    if args.text_steps:
        end_text_after(model, args.text_steps)
    encoder = load_whisper_encoder(dims=SMALL, seed=0, trim=args.trim)
    codec = SnacCodec.load(config=SNAC_24KHZ_CONFIG, seed=0)
    pcm, what = question(args.seconds)
    print(f"Mini-Omni shape (random weights), LM {args.scheme}, {args.strategy}, {args.steps} steps; Whisper small "
          f"({'trimmed' if args.trim else 'padded 30 s'}); SNAC 24 kHz streaming; {args.seconds:.0f} s {what}; "
          f"{args.threads} cores")
    set_threads(1)  # as the commands that answer: the LM's engine thread alone keeps a team
    placements = {"shared": (args.threads, args.threads), "placed": (max(1, args.threads - 1), 1),
                  "lm-all": (args.threads, 1)}
    run_pipeline(encoder, model, codec, pcm[:8000], argparse.Namespace(**{**vars(args), "steps": 9}), 1, 1)  # warm
    print(f"{'placement':<10}{'first audio':>18}{'RTF (LM start)':>16}{'RTF (all)':>11}  split s: encoder / prefill / "
          f"LM steps / codec busy   busy vs alone: encoder / LM / codec")
    chosen = {name: placements[name] for name in args.placements}
    rounds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in chosen}
    for _ in range(args.repeat):  # placements interleaved, so that each sees the machine's same moods
        for name, (lm_threads, codec_threads) in chosen.items():
            got = run_pipeline(encoder, model, codec, pcm, args, lm_threads, codec_threads)
            ref = alone(encoder, model, codec, pcm, got["result"].frames, got["chunks"], args, lm_threads,
                        codec_threads)
            busy = got["busy"]
            lm_steps = busy["lm"] - got["prefill"]
            rounds[name].append((got["rtf_lm"], busy["lm"] / ref["lm"], busy["codec"] / ref["codec"]))
            print(f"{name:<10}{got['first_audio_ms']:>9.0f} ms @{got['first_audio_step']:>3}{got['rtf_lm']:>16.2f}"
                  f"{got['rtf_all']:>11.2f}  {busy['encoder']:.2f} / {got['prefill']:.2f} / {lm_steps:.2f} / "
                  f"{busy['codec']:.2f}   {busy['encoder'] / ref['encoder']:.2f}x / {busy['lm'] / ref['lm']:.2f}x / "
                  f"{busy['codec'] / ref['codec']:.2f}x   ({got['audio_s']:.2f} s of audio; "
                  f"{len(got['result'].frames)} frames in {len(got['chunks'])} codec calls)", flush=True)
    if args.repeat > 1:
        print(f"median (min-max) over {args.repeat} rounds:")
        for name, rows in rounds.items():
            rtf, lm, codec_busy = (sorted(column) for column in zip(*rows, strict=True))
            print(f"{name:<10} RTF (LM start) {_spread(rtf)}   busy vs alone: LM {_spread(lm, 'x')}, codec "
                  f"{_spread(codec_busy, 'x')}", flush=True)
    if args.upstream_repo:
        torch.set_num_threads(args.threads)
        got = upstream_stream(up, fabric, upstream_model, encoder, codec, pcm, args.steps)
        print(f"{'upstream':<10}{got['first_audio_ms']:>9.0f} ms @ 11{got['rtf_lm']:>16.2f}{got['rtf_all']:>11.2f}  "
              f"fp32, its loop and 4-frame SNAC windows on {args.threads} threads   ({got['audio_s']:.2f} s of audio)",
              flush=True)


if __name__ == "__main__":
    main()
