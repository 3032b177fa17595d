"""Quantised decoding (core/kernel/quantize.py): speed and quality of every scheme against fp32, same process.

Per model and scheme:
  steps/s        batch-parallel streaming decode (A1A2, 2 rows), (steps - 1) / (steps-run time - 1-step run),
                 median of interleaved repeats, and the ratio to fp32
  teacher-forced top-1 agreement with fp32, per stream (text, audio 0..6; min and mean of the audio ones):
                 both models read the question prompt + fp32's own greedy text-delay answer as decoding
                 does (prompt as one prefill, then one position per step on the KV cache); every answer
                 position counts
  greedy agreement  identical leading columns of the greedy text-delay answers (of --steps), per question
Models: the Mini-Omni shape with random weights (always; --no-mini-omni skips it) and, with --export DIR, a
trained export (e.g. the tiny recipes' runs/tiny_stage3_finetune/export) read with the questions of its
prepared manifest (--manifest, default DIR/../../../data/synthetic/manifest.prepared.jsonl).

    python benchmarks/bench_quantize.py [--export runs/tiny_stage3_finetune/export] [--steps 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from omnivox import OmniModel, generate
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.quantize import SCHEMES, greedy_agreement, quantize, teacher_forced_agreement


def decode_rate(model, features: torch.Tensor, steps: int, repeats: int) -> list[float]:
    """Per repeat: (1-step seconds, steps-run seconds) of batch-parallel streaming decode."""
    runs = []
    for _ in range(repeats):
        pair = []
        for n in (1, steps):
            t = time.perf_counter()
            generate(model, task="A1A2", audio_features=features, strategy="batch-parallel", max_steps=n)
            pair.append(time.perf_counter() - t)
        runs.append(pair)
    return runs


def report(name: str, fp32: OmniModel, questions: list[torch.Tensor], args) -> None:
    """Prints the table of one model: fp32 and every scheme (a quantised copy each)."""
    models = {"fp32": fp32}
    for scheme in args.schemes:
        models[scheme] = OmniModel(quantize(copy.deepcopy(fp32.lm), scheme), fp32.tokenizer)
    bench_features = questions[0]
    for model in models.values():
        decode_rate(model, bench_features, 2, 1)  # warm-up
    runs = {k: [] for k in models}
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        for k, model in models.items():
            runs[k] += decode_rate(model, bench_features, args.steps, 1)
    rate = {}
    for k, pairs in runs.items():
        one, full = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        rate[k] = (args.steps - 1) / (full - one)
    print(f"\n{name}: batch-parallel decode, {args.steps} steps, {torch.get_num_threads()} threads; quality over "
          f"{len(questions)} question(s), greedy text-delay answers of up to {args.quality_steps} steps")
    print(f"{'scheme':<18} {'steps/s':>8} {'x fp32':>7} | {'text':>6} {'audio min':>9} {'audio mean':>10} | "
          f"greedy agreement per question (equal leading columns / fp32 answer)")
    print(f"{'fp32':<18} {rate['fp32']:>8.2f} {1:>6.2f}x | {'1.000':>6} {'1.000':>9} {'1.000':>10} | (reference)")
    for scheme in args.schemes:
        agree, lengths = quality_table(models["fp32"], models[scheme], questions, args.quality_steps)
        audio = [v for k, v in agree.items() if k.startswith("audio")]
        print(f"{scheme:<18} {rate[scheme]:>8.2f} {rate[scheme] / rate['fp32']:>6.2f}x | {agree['text']:>6.3f} "
              f"{min(audio):>9.3f} {statistics.mean(audio):>10.3f} | {' '.join(lengths)}", flush=True)


def quality_table(reference, candidate, questions, steps) -> tuple[dict[str, float], list[str]]:
    """Teacher-forced agreement per stream pooled over every answer position of every question, and the
    greedy agreement length per question."""
    matches: dict[str, float] = {}
    positions = 0
    lengths = []
    for features in questions:
        ref = generate(reference, task="A1A2", audio_features=features, max_steps=steps)
        new = generate(candidate, task="A1A2", audio_features=features, max_steps=steps)
        lengths.append(f"{greedy_agreement(ref.tokens, new.tokens)}/{ref.steps}")
        prompt = reference.layout.audio_prompt(features.shape[0], "A1A2")
        ids = torch.cat([prompt.ids, ref.tokens[None, :, :-1]], dim=-1)  # (1, S, T + L - 1): teacher forcing
        T = prompt.ids.shape[-1]
        agree = teacher_forced_agreement(reference.lm, candidate.lm, ids, features[None], prompt.audio_lengths,
                                         answer_from=T)  # the L answer positions, one decoding step each
        for stream, value in agree.items():
            matches[stream] = matches.get(stream, 0.0) + value * ref.steps
        positions += ref.steps
    return {k: v / positions for k, v in matches.items()}, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="a trained export (native or upstream format)")
    parser.add_argument("--manifest", type=Path, help="prepared manifest whose question features to use")
    parser.add_argument("--questions", type=int, default=8, help="questions of the manifest to score")
    parser.add_argument("--no-mini-omni", action="store_true", help="skip the Mini-Omni-shape model")
    parser.add_argument("--steps", type=int, default=16, help="decode steps of the speed runs")
    parser.add_argument("--quality-steps", type=int, default=32, help="greedy answer steps of the quality runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.export:
        model = OmniModel.from_pretrained(args.export)
        manifest = args.manifest or args.export.resolve().parents[2] / "data/synthetic/manifest.prepared.jsonl"
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        paths = list(dict.fromkeys(r["question_features"] for r in rows if r.get("question_features")))
        questions = [torch.from_numpy(np.load(manifest.parent / p)) for p in paths[: args.questions]]
        report(f"trained export {args.export}", model, questions, args)
    if not args.no_mini_omni:
        config = OmniConfig.mini_omni()
        model = OmniModel.random(config, seed=0)
        gen = torch.Generator().manual_seed(1)
        questions = [torch.randn(50, config.whisper_adapter_dim, generator=gen) for _ in range(2)]
        report("Mini-Omni shape, random weights", model, questions, args)


if __name__ == "__main__":
    main()
