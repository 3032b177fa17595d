"""LM decode speed, fp32 vs int8 dynamic quantisation (core/quantize.py), same model, same process.

    python benchmarks/bench_int8.py [--steps 16] [--threads 2]

A Mini-Omni-shaped random model (Qwen2-0.5B backbone, 181,120-row vocab) decodes A1A2 steps (all heads) from
a 40-position text prompt; prints steps/s of both and the ratio, and the relative logit error of int8."""

from __future__ import annotations

import argparse
import time

import torch

from omnivox.core import progress
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.model import OmniLM
from omnivox.core.kernel.quantize import quantize_int8


def steps_per_second(lm: OmniLM, steps: int) -> tuple[float, torch.Tensor]:
    prompt = lm.layout.text_prompt(list(range(5, 43)), "T1A2")
    column = torch.full((1, lm.layout.n_streams, 1), 5)
    with torch.inference_mode():
        cache = lm.new_cache()
        lm(prompt.ids, cache=cache, last_only=True)
        start = time.perf_counter()
        for _ in range(steps):
            out = lm(column, cache=cache, last_only=True)
        elapsed = time.perf_counter() - start
    return steps / elapsed, out.text_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = OmniLM(OmniConfig.mini_omni()).eval()
    with progress.bar(total=2, desc="bench_int8", unit="case", leave=False) as bar:
        fp32, ref = steps_per_second(lm, args.steps)
        bar.update()
        int8, out = steps_per_second(quantize_int8(lm), args.steps)
        bar.update()
    error = ((out - ref).norm() / ref.norm()).item()
    print(f"Mini-Omni shape, {args.threads} threads, {args.steps} decode steps (A1A2 heads)")
    print(f"fp32 {fp32:.2f} steps/s   int8 {int8:.2f} steps/s   ratio {int8 / fp32:.2f}x   "
          f"(real time for SNAC 24 kHz: 11.72 steps/s); int8 text-logit relative error {error:.3f}")


if __name__ == "__main__":
    main()
