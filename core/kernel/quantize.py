"""Quantised CPU decoding of OmniLM (opt-in), with the quality guard that measures what it costs.

Schemes (`quantize(lm, scheme)`; `omnivox chat --int8` uses DEFAULT_SCHEME):
  int8-channel       every Linear int8 with one scale per output channel (per weight row), activations
                     quantised on the fly per call (torch's fbgemm dynamic kernels; AVX2 is enough). The
                     default: as fast as int8-tensor and the best text agreement on the trained tiny export
                     (bench_quantize.py).
  int8-tensor        the same kernels with one scale per weight tensor.
  int8-channel-head  int8-channel for the blocks, the text head and the audio heads kept in fp32: ~half
                     the speed (the fp32 text head is most of the bytes a step reads), no better agreement.
Activations use the full 8-bit range where the CPU multiplies int8 into 32-bit sums (AVX-512 VNNI / AVX-VNNI:
`FULL_RANGE`); elsewhere 7 bits, as torch's dynamic Linear always does, since AVX2's 16-bit pair sums would
saturate. The 8th bit halves the activations' rounding error: text agreement 0.963 -> 0.979 (int8-tensor),
0.966 -> 0.982 (int8-channel) on the trained tiny export (12 questions, 48 steps).
The embedding table stays fp32 (a lookup reads 7 + 1 rows a step). The head is split into its text and
audio row blocks (`SplitHead`), so a step still computes only the blocks it samples (core/kernel/model.py).
Per-channel schemes also make the Qwen2 blocks lean (core/kernel/lean_blocks.py: fused q/k/v and gate/up,
cheaper rotary, norm and single-position attention): 2-2.5 ms less per ~32 ms Mini-Omni step at one thread.
Weight-only int8/int4 kernels (`torch._weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) need bf16
activations on the CPU (fp32 runs a 50-100x slower fallback), so they are not offered.

Decoding at a few rows is bound by reading weights, so 4x smaller weights are most of the gain. Logits move,
so tokens are no longer guaranteed equal to fp32's: `teacher_forced_agreement` and `greedy_agreement` measure
by how much (benchmarks/bench_quantize.py prints them per scheme; the README has the table)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from omnivox.core.errors import InputError, unknown_name
from omnivox.core.kernel.lean_blocks import lean_blocks
from omnivox.core.kernel.model import FewRowsLinear, OmniLM

SCHEMES = ("int8-channel", "int8-tensor", "int8-channel-head")
DEFAULT_SCHEME = "int8-channel"  # chosen from bench_quantize.py's table (README)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FULL_RANGE = bool({"avx512_vnni", "avx_vnni"} & _cpu_flags())  # 8-bit activations are exact to sum here


class Int8Linear(DynamicLinear):
    """torch's dynamic int8 Linear, with the activations' full 8-bit range where FULL_RANGE allows it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=not FULL_RANGE)
        return y.to(x.dtype)


class SplitHead(nn.Module):
    """lm_head as row blocks computed separately: forward(h) (B, T, D) -> (B, T, V) all logits; `partial(h,
    start, stop)` computes only the block [start, stop) when it is one of the blocks."""

    def __init__(self, bounds: Sequence[int], parts: Sequence[nn.Module]):
        super().__init__()
        self.bounds = tuple(bounds)  # block k holds vocab rows [bounds[k], bounds[k + 1])
        self.parts = nn.ModuleList(parts)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(hidden) for part in self.parts], dim=-1)

    def partial(self, hidden: torch.Tensor, start: int, stop: int | None) -> torch.Tensor:
        stop = self.bounds[-1] if stop is None else stop
        for k, part in enumerate(self.parts):
            if (self.bounds[k], self.bounds[k + 1]) == (start, stop):
                return part(hidden)
        return self(hidden)[..., start:stop]


def quantize(lm: OmniLM, scheme: str = DEFAULT_SCHEME) -> OmniLM:
    """Swap `lm`'s Linear layers for quantised ones per `scheme`, in place; returns it. Inference only."""
    if scheme not in SCHEMES:
        raise unknown_name("quantisation scheme", scheme, SCHEMES)
    if lm.device.type != "cpu":
        raise InputError(f"int8 dynamic quantisation runs on the CPU, the model is on {lm.device}",
                         "move the model to the CPU first (or use bf16 on a GPU)")
    lm.eval()
    per_channel = scheme != "int8-tensor"
    fp32_heads = scheme == "int8-channel-head"
    head, text_rows = lm.lm_head, lm.layout.text_vocab_size
    bounds = (0, text_rows, head.out_features)
    blocks = [head.weight.detach()[:text_rows], head.weight.detach()[text_rows:]]
    lm.lm_head = SplitHead(bounds, [_fp32(w) if fp32_heads else _int8(w, None, per_channel) for w in blocks])
    if per_channel:  # per-row scales: fused q/k/v and gate/up products equal the separate ones
        lean_blocks(lm, lambda weight, bias: _int8(weight, bias, per_channel=True))
    done = set(lm.lm_head.modules())
    keep = {"audio_head"} if fp32_heads else set()
    for parent in list(lm.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child not in done and name not in keep:
                setattr(parent, name, _int8(child.weight.detach(), child.bias, per_channel))
    return lm


def quantize_int8(lm: OmniLM) -> OmniLM:
    """`omnivox chat --int8`: quantize(lm, DEFAULT_SCHEME)."""
    return quantize(lm, DEFAULT_SCHEME)


def _int8(weight: torch.Tensor, bias: torch.Tensor | None, per_channel: bool) -> nn.Module:
    """A dynamic-quantised int8 Linear with `weight` (out, in): scales per row or per tensor."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    plain = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    plain.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        plain.bias = nn.Parameter(bias.detach(), requires_grad=False)
    plain.qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return Int8Linear.from_float(plain)


def _fp32(weight: torch.Tensor) -> nn.Module:
    plain = FewRowsLinear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    plain.weight = nn.Parameter(weight, requires_grad=False)
    return plain


# ---- quality guard --------------------------------------------------------------------------------------
def teacher_forced_agreement(reference: OmniLM, candidate: OmniLM, ids: torch.Tensor,
                             audio_features: torch.Tensor | None = None,
                             audio_lengths: Sequence[int] | None = None,
                             positions: slice = slice(None), answer_from: int | None = None) -> dict[str, float]:
    """Both models read the same ids (B, S, T) [+ features]; per stream ("text", "audio 0", ...), the
    fraction of compared positions (of every row) where their top-1 ids are equal.

    `answer_from=P`: read as decoding does (what a deployed model computes): ids[..., :P] as one prefill
    (features included), then every later position one step at a time on the KV cache; the P - 1 ... T - 1
    positions are compared (`positions` is then ignored). Dynamic int8 quantises each call's activations
    with one scale, so one forward over the whole sequence (answer_from=None, all of `positions`) measures
    a different, coarser model than the one that decodes."""
    with torch.inference_mode():
        if answer_from is None:
            ref = _logits(reference(ids, audio_features, audio_lengths), positions)
            new = _logits(candidate(ids, audio_features, audio_lengths), positions)
        else:
            ref = _stepwise_logits(reference, ids, audio_features, audio_lengths, answer_from)
            new = _stepwise_logits(candidate, ids, audio_features, audio_lengths, answer_from)
    out = {"text": _same_top1(ref[0], new[0])}
    if ref[1] is not None:
        for i in range(ref[1].shape[1]):
            out[f"audio {i}"] = _same_top1(ref[1][:, i], new[1][:, i])
    return out


def _logits(out, positions: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(text (B, T', V), audio (B, A, T', V_a) or None) at `positions`."""
    audio = None if out.audio_logits is None else out.audio_logits[:, :, positions]
    return out.text_logits[:, positions], audio


def _stepwise_logits(lm: OmniLM, ids: torch.Tensor, features, lengths, answer_from: int):
    """Prefill ids[..., :answer_from], then one position per call: logits of positions answer_from - 1 ..."""
    cache = lm.new_cache()
    outs = [lm(ids[..., :answer_from], features, lengths, cache=cache, last_only=True)]
    for t in range(answer_from, ids.shape[-1]):
        outs.append(lm(ids[..., t : t + 1], cache=cache))
    text = torch.cat([o.text_logits for o in outs], dim=1)  # (B, T - answer_from + 1, V)
    audio = None if outs[0].audio_logits is None else torch.cat([o.audio_logits for o in outs], dim=2)
    return text, audio


def greedy_agreement(reference_tokens: torch.Tensor, candidate_tokens: torch.Tensor) -> int:
    """Answer grids (S, L) of two greedy runs -> how many leading columns are identical."""
    n = min(reference_tokens.shape[-1], candidate_tokens.shape[-1])
    same = (reference_tokens[:, :n] == candidate_tokens[:, :n]).all(dim=0)  # (n,)
    return n if bool(same.all()) else int(same.long().argmin())


def _same_top1(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()
