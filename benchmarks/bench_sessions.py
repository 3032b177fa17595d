"""Many sessions on one model (continuous batching, core/kernel/batching.py): LM steps/s per session and in
aggregate for 1, 2, 4, 8 concurrent turns, fp32 and a quantised scheme, same weights, same process.

Each session is an A1A2 turn (batch-parallel: 2 rows per turn, the streaming mode; --strategy to change) on
its own random question of --frames encoder frames. All turns join the engine together (their prefills run
first, untimed); then --steps batched forwards are timed: per session steps/s = steps / time, aggregate =
sessions x that; real time is 11.72 steps/s per session (one SNAC frame of 85.3 ms per step). The last
column is the aggregate over the 1-session aggregate of the same model: what batching gains over decoding
the turns one after another (N sessions unbatched would give at most 1.0x). Fastest of --repeats
(interleaved): the machine's load swings the medians by up to 10x.

    python benchmarks/bench_sessions.py [--shape mini-omni|tiny] [--steps 8] [--threads 2] [--schemes int8-tensor]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from omnivox import OmniModel
from omnivox.core.kernel.batching import BatchEngine
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.quantize import DEFAULT_SCHEME, SCHEMES, quantize

REAL_TIME = 11.72  # steps/s: one 85.3 ms SNAC frame per step


def batched_rate(model, questions: list[torch.Tensor], strategy: str, steps: int) -> float:
    """Seconds per batched step with len(questions) turns decoding together (prefills excluded)."""
    engine = BatchEngine(model, max_rows=64)
    for q in questions:
        engine.submit(lambda e: None, task="A1A2", audio_features=q, strategy=strategy, max_steps=steps + 4)
    engine.step()  # every turn joins (prefill) and the first batched forward runs
    t = time.perf_counter()
    for _ in range(steps):
        engine.step()
    elapsed = time.perf_counter() - t
    assert len(engine.active) == len(questions), "a turn stopped early: raise max_steps"
    return elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mini-omni", choices=["mini-omni", "tiny"])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=8, help="timed batched steps per run")
    parser.add_argument("--frames", type=int, default=50, help="encoder frames per question (50 = 1 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--strategy", default="batch-parallel")
    parser.add_argument("--schemes", nargs="*", default=[DEFAULT_SCHEME], choices=SCHEMES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = OmniConfig.mini_omni() if args.shape == "mini-omni" else OmniConfig.tiny(codebook_size=4096)
    fp32 = OmniModel.random(config, seed=0)
    models = {"fp32": fp32}
    for scheme in args.schemes:
        models[scheme] = OmniModel(quantize(copy.deepcopy(fp32.lm), scheme), fp32.tokenizer)
    g = torch.Generator().manual_seed(0)
    questions = [torch.randn(args.frames, config.whisper_adapter_dim, generator=g) for _ in range(max(args.sessions))]
    print(f"shape {args.shape}, {args.threads} torch threads, {args.strategy} (2 rows per turn for batch-parallel), "
          f"{args.steps} timed steps, fastest of {args.repeats}; real time = {REAL_TIME} steps/s per session")
    print(f"{'model':<14}{'sessions':>9}{'steps/s each':>14}{'x real time':>13}{'aggregate':>11}{'vs 1 session':>14}")
    for name, model in models.items():
        batched_rate(model, questions[:1], args.strategy, 2)  # warm-up
        per_step = {n: [] for n in args.sessions}
        for _ in range(args.repeats):  # interleaved, so load changes hit every session count alike
            for n in args.sessions:
                per_step[n].append(batched_rate(model, questions[:n], args.strategy, args.steps))
        base = None
        for n in args.sessions:
            rate = 1 / min(per_step[n])
            aggregate = rate * n
            if n == 1:
                base = aggregate
            gain = f"{aggregate / base:.2f}x" if base else "-"
            print(f"{name:<14}{n:>9}{rate:>14.2f}{rate / REAL_TIME:>13.2f}{aggregate:>11.2f}{gain:>14}", flush=True)

if __name__ == "__main__":
    main()
