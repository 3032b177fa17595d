"""End of speech -> first audio with streaming input off and on (docs/streaming_input.md), in the same process:
`listen`'s pipeline without devices (SileroVAD with the end-of-turn detector -> EncoderStage -> LMStage ->
CodecStage), fed espeak-ng questions (bench_listen.DEMO_QUESTIONS) at real time in 20 ms frames.

    python benchmarks/bench_stream_input.py [--shape mini-omni|demo] [--turns 12] [--stream-input 500:1500]
                                            [--speculate 0] [--no-whole] [--first-lookahead-frames 1 2]

--shape mini-omni: random weights of Mini-Omni's shape (Whisper small trimmed, the int8 LM, batch-parallel, SNAC
24 kHz; answers of --max-steps steps); demo: the shipped demo model (faster-whisper tiny.en trimmed, text-delay,
its mel codec, session memory as it declares), or --checkpoint DIR; a model trained on chunked features is
compared with its own features computed at the end of speech. End of speech: the question's last sample above
-34 dBFS, at the time its 20 ms frame was sent; first audio: the turn's first AudioOut. Split per turn (p50):
decision (end of speech -> the VAD's AudioStop), features (-> the encoder's Features), prefill (-> the first text
token: the prompt's rest prefilled), first frame (-> the first codec frame), codec (-> the first audio).
--speculate P [P ...] adds, per setting and value, the same with the VAD speculating (a guess at P starts the
answer, HoldGuesses holds it until the VAD decides: core/runtime/guesses.py); its "decision" part is then the guess's
AudioStop.
--first-lookahead-frames F [F ...] (mini-omni): the SNAC decoder's lookahead for a turn's first audio; with several
values every setting runs once per value, on the same weights. --no-whole: only the streaming settings.
Each round runs the stream once per setting, their order swapped every round."""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_live import questions  # noqa: E402

from omnivox.core import audio  # noqa: E402
from omnivox.core.chunked_encoder import ChunkedEncoder, chunked  # noqa: E402
from omnivox.core.kernel.threads import set_threads  # noqa: E402
from omnivox.core.runtime.events import (  # noqa: E402
    AudioChunk,
    AudioOut,
    AudioStop,
    CodecFrame,
    Features,
    TextToken,
)
from omnivox.core.runtime.guesses import HoldGuesses  # noqa: E402
from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage  # noqa: E402
from omnivox.core.runtime.pipeline import Pipeline  # noqa: E402
from omnivox.core.runtime.stage import Stage  # noqa: E402
from omnivox.plugins.silero_vad import SileroVAD  # noqa: E402

RATE, FRAME = 16000, 320  # 20 ms frames


class PacedStream(Stage):
    """Source: the stream at real time in 20 ms AudioChunks (session `session`); the time each frame was sent."""

    def __init__(self, stream: np.ndarray, session: str):
        super().__init__(f"mic_{session}")
        self.stream, self.session, self.sent = stream, session, []

    async def produce(self):
        fmt, start = audio.AudioFormat(rate=RATE), time.monotonic()
        for i in range(0, len(self.stream) - FRAME + 1, FRAME):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            self.sent.append(time.monotonic())
            yield AudioChunk(audio=audio.to_bytes(self.stream[None, i:i + FRAME], fmt), rate=RATE,
                             session_id=self.session)


class Tap(Stage):
    """Records when each turn's events of `kinds` pass (then passes them on)."""

    def __init__(self, name: str, kinds: tuple):
        super().__init__(name)
        self.consumes, self.replaces, self.seen = kinds, kinds, {}  # passed on once, by `process`

    async def process(self, event):
        self.seen.setdefault((type(event).__name__, event.turn_id), time.monotonic())
        yield event


class AtTheEnd:
    """A streaming encoder's features, computed only at the end of the turn (EncoderStage streams nothing)."""

    def __init__(self, encoder: ChunkedEncoder):
        self.encoder, self.feature_dim = encoder, encoder.feature_dim
        self.sample_rate, self.frame_rate = encoder.sample_rate, encoder.frame_rate

    def num_frames(self, num_samples: int, sample_rate: int) -> int:
        return self.encoder.num_frames(num_samples, sample_rate)

    def encode(self, pcm, sample_rate: int):
        return self.encoder.encode(pcm, sample_rate)


def build(shape: str, checkpoint: str, lookahead_frames: float = 2.0):
    """(encoder, model, codec, LMStage params) of the shape (`lookahead_frames`: the SNAC decoder's, mini-omni)."""
    if shape == "demo":
        from omnivox.core.runtime.speech_kit import SpeechKit

        kit = SpeechKit.load(checkpoint, say=lambda *_: None)  # session memory as the model declares
        return kit.encoder, kit.model, kit.codec, dict(strategy="text-delay", task="A1A2", memory=None)
    from bench_whisper_trim import SMALL

    from omnivox import OmniModel
    from omnivox.core.kernel.config import OmniConfig
    from omnivox.core.kernel.quantize import DEFAULT_SCHEME, quantize
    from omnivox.plugins.random_models import never_emit_audio_specials
    from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG, SnacCodec
    from omnivox.plugins.whisper_encoder import load_whisper_encoder

    fp32 = OmniModel.random(OmniConfig.mini_omni(), seed=0)
    never_emit_audio_specials(fp32)
    model = OmniModel(quantize(copy.deepcopy(fp32.lm), DEFAULT_SCHEME), None)
    encoder = load_whisper_encoder(dims=SMALL, seed=0, trim=True)
    codec = SnacCodec.load(config=SNAC_24KHZ_CONFIG, seed=0, lookahead_frames=lookahead_frames)
    return encoder, model, codec, dict(strategy="batch-parallel", task="A1A2")


async def run_session(encoder, model, codec, lm_params, stream, ends, session, max_steps, speculate=None):
    """One stream through the pipeline: per question, (end of speech, AudioStop, Features, first audio) times;
    and the guesses the VAD took back."""
    source = PacedStream(stream, session)
    before, after = Tap("tap_vad", (AudioStop,)), Tap("tap_encoder", (Features,))
    lm, first = Tap("tap_lm", (TextToken, CodecFrame)), Tap("tap_out", (AudioOut,))
    hold = [] if speculate is None else [HoldGuesses()]
    vad = SileroVAD(turn_end="default", speculate=speculate)
    stages = [source, vad, before, EncoderStage(encoder), after,
              LMStage(model=model, max_steps=max_steps, **lm_params), lm, *hold, CodecStage(codec), first]
    await Pipeline(stages).run()
    stops = sorted((t, turn) for (kind, turn), t in before.seen.items())  # the VAD's turns, in time order
    rows = []
    for end in ends:
        sent = source.sent[min(int(end * RATE) // FRAME, len(source.sent) - 1)]
        turn = next((turn for t, turn in stops if t >= sent), None)  # the turn its end of speech ended
        times = [before.seen.get(("AudioStop", turn)), after.seen.get(("Features", turn)),
                 lm.seen.get(("TextToken", turn)), lm.seen.get(("CodecFrame", turn)),
                 first.seen.get(("AudioOut", turn))]
        rows.append(None if None in times else [sent, *times])
    return rows, vad.withdrawn


def summary(name: str, rows: list, per_turn: bool = False) -> None:
    got = np.array([[*np.diff(r), r[-1] - r[0]] for r in rows if r]) * 1000  # the parts, then the whole
    if not len(got):
        print(f"{name:<36} no turn answered")
        return
    p50, p90 = np.percentile(got[:, -1], 50), np.percentile(got[:, -1], 90)
    if per_turn:  # per turn: the parts, then the whole (ms)
        print(name, np.round(got).astype(int).tolist())
    split = " / ".join(f"{v:.0f}" for v in np.median(got[:, :-1], axis=0))
    print(f"{name:<36} {len(got):>3}/{len(rows):<3} p50 {p50:6.0f} ms  p90 {p90:6.0f} ms   split p50 (decision / "
          f"features / prefill / first frame / codec): {split} ms", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["mini-omni", "demo"], default="mini-omni")
    parser.add_argument("--turns", type=int, default=12, help="questions in the stream")
    parser.add_argument("--rounds", type=int, default=2, help="runs of the stream per setting (orders alternate)")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds of silence after each question")
    parser.add_argument("--max-steps", type=int, default=24, help="answer length in LM steps")
    parser.add_argument("--stream-input", default="500:1500", metavar="CHUNK_MS[:CONTEXT_MS]")
    parser.add_argument("--lookahead-frames", type=float, default=2.0,
                        help="--shape mini-omni: the SNAC streaming decoder's lookahead (1: low latency, ~40 dB)")
    parser.add_argument("--first-lookahead-frames", type=float, nargs="+", metavar="F",
                        help="--shape mini-omni: the SNAC decoder's lookahead for its first audio (default 1); "
                             "several values: each setting once per value, on the same weights")
    parser.add_argument("--no-whole", action="store_true", help="skip the settings with streaming input off")
    parser.add_argument("--speculate", type=float, nargs="+", metavar="P", help="also run each setting with the "
                        "VAD speculating at P(complete) >= P (0: at every pause's first ask, before the detector), "
                        "once per value")
    parser.add_argument("--per-turn", action="store_true", help="also print each turn's parts and total")
    parser.add_argument("--checkpoint", default="demo", help="--shape demo: the model (a streaming-trained export: "
                        "its chunked features at the end of speech against the same streamed)")
    args = parser.parse_args()
    set_threads(1)  # as the commands that answer run (core/kernel/threads.py): the LM's engine thread alone runs a team
    encoder, model, codec, lm_params = build(args.shape, args.checkpoint, args.lookahead_frames)
    if isinstance(encoder, ChunkedEncoder):  # the model was trained on chunked features: they are its only ones
        settings = {f"chunked {encoder.setting}, at the end": AtTheEnd(encoder),
                    f"streaming {encoder.setting}": encoder}
    else:
        streaming = chunked(encoder, args.stream_input)
        settings = {"whole (off)": encoder, f"streaming {streaming.setting}": streaming}
        if args.no_whole:
            del settings["whole (off)"]
    settings = {name: (enc, None, codec) for name, enc in settings.items()}
    settings.update({f"{name}, speculate {p:g}": (enc, p, codec)
                     for name, (enc, _, _) in list(settings.items()) for p in args.speculate or ()})
    if args.first_lookahead_frames and args.shape == "mini-omni":  # the same weights, another first lookahead
        codecs = {f: type(codec)(codec.model, lookahead_frames=codec.lookahead_frames, first_lookahead_frames=f)
                  for f in args.first_lookahead_frames}
        settings = {(f"{name}, first {f:g}" if len(codecs) > 1 else name): (enc, speculate, variant)
                    for name, (enc, speculate, _) in settings.items() for f, variant in codecs.items()}
    print(f"{args.shape}: {args.turns} questions per setting, gap {args.gap} s, answers of {args.max_steps} steps, "
          f"{os.cpu_count()} cores; end of speech -> first audio, the end-of-turn decision included")
    with tempfile.TemporaryDirectory() as tmp:
        stream, ends = questions(2, args.gap, Path(tmp))  # warm both settings on two questions
        for i, (enc, speculate, variant) in enumerate(settings.values()):
            asyncio.run(run_session(enc, model, variant, lm_params, stream, ends, f"warm{i}", args.max_steps,
                                    speculate))
        withdrawn = dict.fromkeys(settings, 0)
        stream, ends = questions(args.turns, args.gap, Path(tmp))
        results = {name: [] for name in settings}
        for r in range(args.rounds):  # the settings' order swapped every round
            for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
                enc, speculate, variant = settings[name]
                rows, taken_back = asyncio.run(run_session(enc, model, variant, lm_params, stream, ends,
                                                           f"s{r}{len(results[name])}", args.max_steps, speculate))
                results[name] += rows
                withdrawn[name] += taken_back
    for name, rows in results.items():
        summary(name, rows, args.per_turn)
        if settings[name][1] is not None:
            print(f"{'':<36} guesses taken back (the speaker went on): {withdrawn[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
