"""Lean Qwen2 blocks for quantised CPU decoding: fewer, larger calls per decode step.

A Mini-Omni decode step at one thread spends ~23 ms reading int8 weights and, with transformers' modules,
another ~6.5 ms in ~400 small ops (SDPA's setup ~0.1 ms a layer, rotate_half's slices and cat, RMSNorm's
seven ops). `lean_blocks(lm, linear)` turns every Qwen2 block of `lm` (backbone and post-adapter), in place, into:
  - one `linear` for q/k/v and one for gate/up (their weights concatenated by rows: with per-row int8 scales
    the products are bit-identical to the separate Linears', in 4 calls a block instead of 7);
  - rotary embedding of q and k together in 4 ops (rotate_half as a flip of the two halves times a signed sin,
    made once a forward for all blocks);
  - single-position attention (a decode step) as two matmuls and a softmax over the cache, grouped-query heads
    read in place; longer inputs (prefill) keep transformers' attention function;
  - RMSNorm as one `F.rms_norm` call.
Numerics differ from the transformers blocks in the last bits (sum order of the norm and the attention), so
this is for the quantised path only (core/kernel/quantize.py): fp32 decoding stays exactly upstream's."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2MLP,
    Qwen2RMSNorm,
    eager_attention_forward,
)

LinearFactory = Callable[[torch.Tensor, torch.Tensor | None], nn.Module]  # (weight (out, in), bias) -> module


class LeanAttention(Qwen2Attention):
    """Qwen2Attention whose q/k/v projections are one module `qkv` (rows: q heads, k heads, v heads)."""

    qkv: nn.Module
    n_heads: int
    n_kv_heads: int
    rope: dict  # shared by the model's blocks: {"sin": this forward's sin, "factors": (cos, signed sin) (B, 1, T, Dh)}

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None, cache=None, **kwargs):
        cache = kwargs.pop("past_key_values", cache)  # transformers < 5.40 may pass the older name
        B, T, _ = hidden_states.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        heads = self.qkv(hidden_states).view(B, T, H + 2 * Hkv, Dh).transpose(1, 2)  # (B, H + 2Hkv, T, Dh)
        qk = _rotate(heads[:, :H + Hkv], *self._rope_factors(*position_embeddings))  # (B, H + Hkv, T, Dh)
        q, k, v = qk[:, :H], qk[:, H:], heads[:, H + Hkv:]
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, Hkv, L, Dh)
        if T == 1:
            out = _attend_one(q, k, v, attention_mask, self.scaling)  # (B, H, 1, Dh)
            out = out.transpose(1, 2)
        else:
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                           eager_attention_forward)
            out, _ = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling,
                            sliding_window=self.sliding_window, **kwargs)  # (B, T, H, Dh)
        return self.o_proj(out.reshape(B, T, H * Dh)), None

    def _rope_factors(self, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' (cos, sin) (B, T, Dh) of this forward -> (cos, signed sin) (B, 1, T, Dh), computed by the
        first block and reused by the others (the same `sin` object is passed to every block of a forward)."""
        if self.rope.get("sin") is not sin:
            half = sin.shape[-1] // 2
            signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
            self.rope.update(sin=sin, factors=(cos[:, None], signed[:, None]))
        return self.rope["factors"]


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, N, T, Dh): x * cos + rotate_half(x) * sin, where rotate_half(x) = (-x2, x1) is
    the flip of x's halves times the sign (-1, +1) that `signed_sin` carries."""
    swapped = x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)  # (x2, x1)
    return x * cos + swapped * signed_sin


def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scaling: float) -> torch.Tensor:
    """Attention of one position: q (B, H, 1, Dh) over k, v (B, Hkv, L, Dh); query heads h*G..h*G+G-1 read kv
    head h. mask: None, or (B, 1, 1, L) bool (True = attend) or additive float. Returns (B, H, 1, Dh)."""
    B, H, _, Dh = q.shape
    Hkv = k.shape[1]
    grouped = q.reshape(B, Hkv, H // Hkv, Dh)  # (B, Hkv, G, Dh)
    scores = torch.matmul(grouped, k.transpose(-1, -2)) * scaling  # (B, Hkv, G, L)
    if mask is not None:
        mask = mask[..., -k.shape[-2]:]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.matmul(weights, v).reshape(B, H, 1, Dh)


class LeanMLP(Qwen2MLP):
    """Qwen2MLP whose gate and up projections are one module `gate_up` (gate rows, then up rows)."""

    gate_up: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class LeanRMSNorm(Qwen2RMSNorm):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)


def lean_blocks(lm: nn.Module, linear: LinearFactory) -> None:
    """Every Qwen2 attention, MLP and RMSNorm under `lm` becomes its lean form, in place; the fused projections
    are built by `linear(weight, bias)` from the concatenated weights (the separate ones are dropped)."""
    rope: dict = {}
    for module in list(lm.modules()):
        if type(module) is Qwen2Attention:
            parts = (module.q_proj, module.k_proj, module.v_proj)
            module.n_heads = module.q_proj.out_features // module.head_dim
            module.n_kv_heads = module.k_proj.out_features // module.head_dim
            module.rope = rope
            module.qkv = linear(torch.cat([p.weight.detach() for p in parts]),
                                torch.cat([p.bias.detach() for p in parts]))
            del module.q_proj, module.k_proj, module.v_proj
            module.__class__ = LeanAttention
        elif type(module) is Qwen2MLP:
            module.gate_up = linear(torch.cat([module.gate_proj.weight.detach(), module.up_proj.weight.detach()]),
                                    None)
            del module.gate_proj, module.up_proj
            module.__class__ = LeanMLP
        elif type(module) is Qwen2RMSNorm:
            module.__class__ = LeanRMSNorm
