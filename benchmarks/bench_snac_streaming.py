"""SNAC 24 kHz streaming decode vs whole-utterance decode (real architecture, random weights, deterministic).

Prints three figures for the stream decoder with 2 coarse frames of lookahead from the start:
  ours SNR min      - min over frame boundaries of the SNR vs whole decode in a +-256-sample region (dB)
  upstream SNR min  - the same for upstream's scheme (independent 4-frame windows, tail dropped)
  compute ratio     - streaming decode time / whole decode time (median of interleaved repeats)
the same figures for 1 frame (the low-latency choice) and 3 frames of lookahead, and for the default (first audio
with 1 frame, the lookahead growing to 2): the SNR at the ends of its first two returns and over the later boundaries.
Must hold at 2 frames: SNR min >= 60 dB, same length as whole decode, compute ratio <= 1.5x at 1 thread.
Run: python benchmarks/bench_snac_streaming.py"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from omnivox.core import progress
from omnivox.plugins.snac_codec import SNAC_24KHZ_CONFIG, SnacCodec

REGION = 256  # samples each side of a boundary


def boundary_snrs(ref: torch.Tensor, est: torch.Tensor, spf: int, n_frames: int) -> list[float]:
    """SNR (dB) of est vs ref in [b - REGION, b + REGION) for each inner boundary b both cover."""
    out = []
    for t in range(1, n_frames):
        b = t * spf
        if b + REGION > min(ref.numel(), est.numel()):
            break
        r, e = ref[b - REGION : b + REGION], est[b - REGION : b + REGION]
        out.append(10 * torch.log10(r.pow(2).sum() / (r - e).pow(2).sum().clamp_min(1e-30)).item())
    return out


def stream(codec: SnacCodec, frames: torch.Tensor) -> torch.Tensor:
    decoder = codec.stream_decoder()
    parts = [decoder.push(f) for f in frames]
    return torch.cat(parts + [decoder.flush()])


def upstream_windows(codec: SnacCodec, frames: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Upstream's streaming: each complete group of 4 frames decoded on its own; a shorter tail is dropped."""
    n = frames.shape[0] // window * window
    return torch.cat([codec.decode(frames[i : i + window]) for i in range(0, n, window)])


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=18, help="utterance length in coarse frames (85 ms each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust to other load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = SnacCodec.load(config=SNAC_24KHZ_CONFIG, seed=0)  # the default: first audio with 1 frame, then 2
    codecs = {la: SnacCodec(base.model, lookahead_frames=la, first_lookahead_frames=None)  # same weights
              for la in (1, 2, 3)}
    codecs["default"] = base
    spf = base.grid.samples_per_frame
    frames = torch.randint(
        0, base.grid.codebook_size, (args.frames, base.grid.n_slots), generator=torch.Generator().manual_seed(1)
    )
    whole = base.decode(frames)  # also warms up the kernels
    up_snr = min(boundary_snrs(whole, upstream_windows(base, frames), spf, args.frames))
    snr, snrs, outs = {}, {}, {}
    for la, codec in codecs.items():
        outs[la] = stream(codec, frames)
        assert outs[la].shape == whole.shape
        snrs[la] = boundary_snrs(whole, outs[la], spf, args.frames)
        snr[la] = min(snrs[la])
    half = boundary_snrs(whole[spf // 2:], outs["default"][spf // 2:], spf, 2)[0]  # its 2nd return ends at 1.5 frames

    cases = {"whole": lambda: timed(base.decode, frames), "upstream": lambda: timed(upstream_windows, base, frames),
             **{la: lambda codec=codec: timed(stream, codec, frames) for la, codec in codecs.items()}}
    times: dict[str, list[float]] = {name: [] for name in cases}
    bar = progress.bar(total=args.repeats * len(cases), desc="bench_snac_streaming", unit="case",
                       leave=False)  # shown only when stderr is a terminal
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        for name, case in cases.items():
            times[name].append(case())
            bar.update()
    bar.close()
    ratio = {k: statistics.median(v) / statistics.median(times["whole"]) for k, v in times.items()}

    print(
        f"SNAC 24 kHz, random weights, {args.frames} frames ({args.frames * spf / 24000:.2f} s), "
        f"{args.threads} threads, boundary region +-{REGION} samples"
    )
    print(f"whole-utterance decode: {statistics.median(times['whole']):.2f} s (median of {args.repeats})")
    print(f"ours SNR min (lookahead 2 frames from the start): {snr[2]:.1f} dB")
    print(
        f"upstream SNR min (4-frame windows): {up_snr:.1f} dB  (compute ratio {ratio['upstream']:.2f}x, "
        f"tail of {args.frames % 4} frames dropped)"
    )
    print(f"compute ratio (lookahead 2 frames from the start): {ratio[2]:.2f}x whole-utterance decode")
    for la in (1, 3):
        print(f"lookahead {la} frames: SNR min {snr[la]:.1f} dB, compute ratio {ratio[la]:.2f}x")
    print(f"the default (first audio with 1 frame, growing to 2): the first return's end {snrs['default'][0]:.1f} dB, "
          f"the second's {half:.1f}, later boundaries min {min(snrs['default'][1:]):.1f}; compute ratio "
          f"{ratio['default']:.2f}x")


if __name__ == "__main__":
    main()
