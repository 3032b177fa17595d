"""LM decoding speed: omnivox `generate` vs a re-implementation of upstream Mini-Omni's per-step loop
structure (litgpt/generate/base.py `generate_AA` / `generate_AT`), same weights, same process.

The baseline keeps upstream's structure on the same Qwen2 backbone and KV cache: eight id tensors embedded one
by one, every Linear as F.linear (litgpt's nn.Linear; omnivox's few-row kernel is switched off for it),
lm_head over every position and the whole 181,120-row vocabulary (also for text answers), litgpt's
`sample` (top-k crop, softmax, multinomial) once per stream, per-step lists of cloned tensors, and one host
sync per stream for the output lists and the stop checks. Both runs decode greedily and must emit the same
tokens. Reported per task (medians of interleaved repeats): prefill seconds (a 1-step run), decode steps/s
((steps - 1) / (time of a steps-long run - prefill)), whole-answer steps/s, and the omnivox/upstream ratios.

    python benchmarks/bench_decode.py [--steps 12] [--frames 50] [--repeats 2] [--threads N] [--tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from omnivox import generate
from omnivox.core import progress
from omnivox.core.kernel import model as kernel_model
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.model import OmniLM


# ---- upstream structure ------------------------------------------------------------------------------------
def upstream_sample(logits: torch.Tensor) -> torch.Tensor:
    """litgpt `sample(logits, temperature=0.9, top_k=1, top_p=1.0)`."""
    logits = logits[0, -1]
    v, i = torch.topk(logits, min(1, logits.size(-1)))
    logits = torch.full_like(logits, float("-inf")).scatter_(-1, i, v) / 0.9
    return torch.multinomial(torch.nn.functional.softmax(logits, dim=-1), num_samples=1)


def upstream_forward(lm: OmniLM, rows: list[torch.Tensor], cache, start: int, features=None, lens=None):
    """litgpt GPT.forward: rows = 8 (1, T) absolute-id tensors -> (7 audio logits, text logits) for ALL
    positions and the whole vocabulary."""
    embs = [lm.backbone.embed_tokens(r) for r in rows]
    if features is not None:
        x_a = lm.adapter(features)
        for j, n in enumerate(lens):
            for i in range(7):
                embs[i][j, 1:n + 1, :] = x_a[j][:n].clone()
    x = sum(embs[1:], embs[0]) / 8
    T = x.shape[1]
    position_ids = torch.arange(start, start + T, device=x.device).unsqueeze(0)
    hidden = lm.backbone(None, None, position_ids, cache.backbone, x, use_cache=True).last_hidden_state
    cache.length = start + T
    logits = lm.lm_head(hidden)
    tv, av = lm.config.text_vocab_size, lm.config.audio_vocab_size
    return [logits[..., tv + av * i: tv + av * (i + 1)] for i in range(7)], logits[..., :tv]


def upstream_generate(lm: OmniLM, prompt: torch.Tensor, features, steps: int, *, audio_answer: bool) -> list:
    """`generate_AA` (audio_answer) / `generate_AT` loop structure, for exactly `steps` generated columns, with
    F.linear kernels."""
    few_rows, kernel_model.FEW_ROWS = kernel_model.FEW_ROWS, 0
    try:
        return _upstream_generate(lm, prompt, features, steps, audio_answer=audio_answer)
    finally:
        kernel_model.FEW_ROWS = few_rows


@torch.inference_mode()
def _upstream_generate(lm: OmniLM, prompt: torch.Tensor, features, steps: int, *, audio_answer: bool) -> list:
    layout = lm.layout
    shift = [layout.audio_offset(i) for i in range(7)]
    rows = [(prompt[0, s] + (shift[s] if s < 7 else 0)).view(1, -1) for s in range(8)]
    T = rows[0].shape[1]
    cache = lm.new_cache()
    logits_a, logit_t = upstream_forward(lm, rows, cache, 0, features, [T - 3])
    tokens_a = [upstream_sample(la).to(dtype=rows[0].dtype) for la in logits_a] if audio_answer else None
    token_t = upstream_sample(logit_t).to(dtype=rows[0].dtype)
    output = [[] for _ in range(8)]
    if audio_answer:
        for i in range(7):
            output[i].append(tokens_a[i].clone().tolist()[0])
    output[7].append(token_t.clone().tolist()[0])
    input_pos, text_end = T, False
    for _ in range(2, steps + 1):
        if audio_answer:
            ids = [(tokens_a[i].clone() + shift[i]).view(1, -1).to(torch.int32) for i in range(7)]
        else:
            ids = [torch.tensor([shift[i] + layout.pad_a]).view(1, -1).to(torch.int32) for i in range(7)]
        ids.append(token_t.clone().view(1, -1).to(torch.int32))
        logits_a, logit_t = upstream_forward(lm, [i.long().to(lm.device) for i in ids], cache, input_pos)
        token_t = upstream_sample(logit_t).to(dtype=rows[0].dtype)
        if audio_answer:
            tokens_a = [upstream_sample(la).to(dtype=rows[0].dtype) for la in logits_a]
            if text_end:
                token_t = torch.tensor([layout.pad_t])
            if tokens_a[-1] == layout.eoa:
                break
            if token_t == layout.eot:
                text_end = True
            for i in range(7):
                output[i].append(tokens_a[i].clone().tolist()[0])
        elif token_t == layout.eot:
            break
        output[7].append(token_t.clone().tolist()[0])
        input_pos += 1
    return output if audio_answer else output[7]


# ---- measurement -------------------------------------------------------------------------------------------
def ours(lm: OmniLM, task: str, features: torch.Tensor, steps: int):
    return generate(lm, task=task, audio_features=features, strategy="text-delay", max_steps=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="generated columns per run")
    parser.add_argument("--frames", type=int, default=50, help="encoder frames in the prompt (50 per second)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the Mini-Omni shape")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = OmniConfig.tiny() if args.tiny else OmniConfig.mini_omni()
    t = time.perf_counter()
    torch.manual_seed(0)
    lm = OmniLM(config).eval()
    print(f"model: {config.name}, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f} M params, float32, "
          f"{torch.get_num_threads()} threads, built in {time.perf_counter() - t:.1f}s")
    features = torch.randn(1, args.frames, config.whisper_adapter_dim)
    for task, audio_answer in (("A1A2", True), ("A1T2", False)):
        prompt = lm.layout.audio_prompt(args.frames, task).ids

        runs = {"omnivox": partial(ours, lm, task, features), "upstream": partial(
            upstream_generate, lm, prompt, features, audio_answer=audio_answer)}
        for run in runs.values():
            run(2)  # warm-up
        times = {name: {1: [], args.steps: []} for name in runs}
        outputs = {}
        bar = progress.bar(total=args.repeats * 2 * len(runs), desc=f"bench_decode {task}", unit="run",
                           leave=False)  # shown only when stderr is a terminal
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            for steps in (1, args.steps):
                for name, run in runs.items():
                    t = time.perf_counter()
                    outputs[name] = run(steps)
                    times[name][steps].append(time.perf_counter() - t)
                    bar.update()
        bar.close()
        result, reference = outputs["omnivox"], outputs["upstream"]
        same = result.tokens.tolist() == reference if audio_answer else result.text_tokens == reference
        if result.steps != args.steps:
            raise SystemExit(f"{task}: the model stopped after {result.steps} steps; rerun with other --steps")
        rates = {}
        for name, by_steps in times.items():
            prefill, total = statistics.median(by_steps[1]), statistics.median(by_steps[args.steps])
            rates[name] = (prefill, (args.steps - 1) / (total - prefill), args.steps / total)
        (p_o, d_o, a_o), (p_u, d_u, a_u) = rates["omnivox"], rates["upstream"]
        print(f"{task} (prompt {prompt.shape[-1]} positions, {args.steps} steps, identical tokens: {same})\n"
              f"  prefill      omnivox {p_o:7.2f} s        upstream structure {p_u:7.2f} s        "
              f"ratio {p_u / p_o:.2f}x\n"
              f"  decode       omnivox {d_o:7.2f} steps/s  upstream structure {d_u:7.2f} steps/s  "
              f"ratio {d_o / d_u:.2f}x\n"
              f"  whole answer omnivox {a_o:7.2f} steps/s  upstream structure {a_u:7.2f} steps/s  "
              f"ratio {a_o / a_u:.2f}x")

if __name__ == "__main__":
    main()
