"""OmniLM: the Mini-Omni language model on a transformers Qwen2 backbone.

    ids (B, S, T) local per-stream ids ──► + stream offsets ──► shared embedding ──► (B, S, T, D)
    audio features (B, Ta, F) ──► adapter ──► (B, Ta, D) replaces the AUDIO streams at positions 1..L
    mean over the S streams ──► (B, T, D) ──► Qwen2 blocks (KV cache) ──► final norm ──► lm_head (B, T, V)
    V = text_vocab + A * audio_vocab; text logits = [:text_vocab], audio stream i = its own block.

With `post_adapter` (upstream's optional "TTS adapter"), the audio logits instead come from extra blocks on
the backbone's hidden states (before the final norm), their own norm and an audio head.

Decoding speed (exact fp32): every Linear is a `FewRowsLinear`, which runs decode steps (a few rows) as
W @ x^T, and `forward(text_rows=, audio_rows=)` computes only the head rows a step samples (batch parallel
decoding: audio of row 0, text of row 1; no text at all once the text stream is finished). `forward` runs a
prompt or the next positions of one cache; `step` runs one position of many turns' rows at once, each at its
own position behind its own left padding (continuous batching, core/kernel/batching.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2Model
from transformers.cache_utils import DynamicCache

from omnivox.core.errors import InputError
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.tokens import TokenLayout


def qwen2_config(config: OmniConfig, n_layer: int | None = None, vocab_size: int | None = None) -> Qwen2Config:
    """The transformers Qwen2 config equivalent to an upstream litgpt config."""
    qwen = Qwen2Config(
        vocab_size=config.padded_vocab_size if vocab_size is None else vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.n_layer if n_layer is None else n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_query_groups,
        max_position_embeddings=config.block_size,
        rms_norm_eps=config.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_base)},
        tie_word_embeddings=False,
        attention_dropout=config.attn_dropout,
    )
    qwen.head_dim = config.head_size
    qwen._attn_implementation = "sdpa"
    return qwen


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T as (W @ x^T)^T: with the weight as the left operand MKL streams it once
    at memory speed for a few rows, where F.linear's x @ W^T re-packs it on every call (2-4x slower per
    decode step on an AVX2 CPU, measured by benchmarks/bench_decode.py). Same products, same sums."""
    rows = x.reshape(-1, x.shape[-1]).t()  # (in, R)
    y = torch.mm(weight, rows) if bias is None else torch.addmm(bias[:, None], weight, rows)  # (out, R)
    return y.t().reshape(*x.shape[:-1], weight.shape[0])


FEW_ROWS = 4  # decode steps: 1 or 2 rows x 1 position


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """few_rows_linear for inference calls with at most FEW_ROWS rows on the CPU; F.linear for training
    (autograd), prefill and other devices."""
    if x.device.type == "cpu" and not torch.is_grad_enabled() and x.numel() <= FEW_ROWS * x.shape[-1]:
        return few_rows_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class FewRowsLinear(nn.Linear):
    """nn.Linear (same parameters and state dict) computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_few_rows_linear(module: nn.Module) -> None:
    """Turn every plain nn.Linear under `module` into a FewRowsLinear, in place (no copy of the weights)."""
    for sub in module.modules():
        if type(sub) is nn.Linear:
            sub.__class__ = FewRowsLinear


class SwiGLUAdapter(nn.Module):
    """Upstream `whisperMLP` ("llamamlp"): down(silu(gate(x)) * up(x)), F -> intermediate -> D, no bias."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(in_dim, hidden, bias=False)
        self.up_proj = nn.Linear(in_dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class OmniCache:
    """KV caches of the backbone (and post-adapter) plus the number of positions already seen (a batch of
    left-padded rows: the cached columns, padding included)."""

    backbone: DynamicCache
    post: DynamicCache | None
    length: int = 0


@dataclass
class OmniOutput:
    text_logits: torch.Tensor | None  # (B, T, text_vocab), B = len(text_rows) when given; None for no rows
    audio_logits: torch.Tensor | None  # (B, A, T, audio_vocab), B = len(audio_rows) when given; None: no rows
    cache: OmniCache | None


class OmniLM(nn.Module):
    def __init__(self, config: OmniConfig):
        super().__init__()
        self.config = config.validate()
        self.layout = TokenLayout.from_config(config)
        self.backbone = Qwen2Model(qwen2_config(config))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.asr_adapter == "llamamlp":
            self.adapter: nn.Module = SwiGLUAdapter(config.whisper_adapter_dim, config.intermediate_size,
                                                    config.n_embd)
        else:  # "mlp": one Linear with bias, as upstream's nn.Linear default
            self.adapter = nn.Linear(config.whisper_adapter_dim, config.n_embd)
        if config.post_adapter:
            # Extra blocks on the backbone's hidden states; their Qwen2Model.norm is the audio norm. They
            # take embeddings, so their own token embedding is dropped.
            self.post_adapter = Qwen2Model(qwen2_config(config, n_layer=config.post_adapter_layers, vocab_size=1))
            self.post_adapter.embed_tokens = None
            self.audio_head = nn.Linear(config.n_embd, config.cat_audio_vocab_size, bias=False)
        self.register_buffer("stream_offsets", self.layout.stream_offsets(), persistent=False)
        use_few_rows_linear(self)
        self._hook_backbone_norm()

    def _hook_backbone_norm(self) -> None:
        """The post-adapter reads the backbone's hidden states before its final norm: capture them."""
        self._pre_norm: torch.Tensor | None = None
        if self.config.post_adapter:  # a bound method, so a deepcopy of the model hooks the copy
            self.backbone.norm.register_forward_pre_hook(self._keep_pre_norm)

    def _keep_pre_norm(self, _module: nn.Module, args: tuple) -> None:
        self._pre_norm = args[0]

    # ---- inputs --------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, audio_features: torch.Tensor | None = None,
              audio_lengths: Sequence[int] | None = None,
              audio_spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> torch.Tensor:
        """(B, S, T) local ids [+ (B, Ta, F) features] -> (B, T, D) mean of the stream embeddings."""
        B, S, T = ids.shape
        if S != self.layout.n_streams:
            raise InputError(f"ids carry {S} streams but the model has {self.layout.n_streams}",
                             "build prompts with the model's TokenLayout")
        emb = self.backbone.embed_tokens(ids + self.stream_offsets.view(1, S, 1))  # (B, S, T, D)
        if audio_features is not None:
            emb = self._inject_audio(emb, audio_features, audio_lengths, audio_spans)
        return emb.mean(dim=1)

    def _inject_audio(self, emb: torch.Tensor, features: torch.Tensor, lengths: Sequence[int] | None,
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> torch.Tensor:
        """Adapter(features) replaces the audio streams' embeddings at positions 1..L of each row (`lengths`), or
        per row at each (start, frames) span of `spans`, taking the row's feature frames in order (a
        conversation's history holds several audio turns)."""
        B, S, T, D = emb.shape
        if features.dim() != 3 or features.shape[0] != B or features.shape[-1] != self.config.whisper_adapter_dim:
            raise InputError(
                f"audio features have shape {tuple(features.shape)}, expected (batch={B}, frames, "
                f"{self.config.whisper_adapter_dim})",
                "use the encoder the model was trained with (whisper_adapter_dim in model_config.yaml)")
        if spans is None:
            lengths = [features.shape[1]] * B if lengths is None else list(lengths)
            if any(n > features.shape[1] or n + 1 > T for n in lengths):
                raise InputError(f"audio lengths {lengths} exceed the features ({features.shape[1]} frames) or "
                                 f"the prompt ({T} positions)", "build the prompt from the same audio")
            spans = [[(1, n)] for n in lengths]
        elif len(spans) != B or any(start < 0 or start + n > T for row in spans for start, n in row) or any(
                sum(n for _, n in row) > features.shape[1] for row in spans):
            raise InputError(f"audio spans {[list(row) for row in spans]} do not fit {B} rows of {T} positions and "
                             f"{features.shape[1]} feature frames", "build the prompt from the same audio")
        projected = self.adapter(features.to(emb.dtype))  # (B, Ta, D)
        placed = emb.new_zeros(B, T, D)
        mask = torch.zeros(B, T, dtype=torch.bool, device=emb.device)
        for b, row in enumerate(spans):
            taken = 0
            for start, n in row:
                placed[b, start:start + n] = projected[b, taken:taken + n]
                mask[b, start:start + n] = True
                taken += n
        audio = torch.where(mask[:, None, :, None], placed[:, None], emb[:, :-1])  # (B, A, T, D)
        return torch.cat([audio, emb[:, -1:]], dim=1)

    # ---- forward -------------------------------------------------------------------------------------
    def new_cache(self) -> OmniCache:
        return OmniCache(DynamicCache(config=self.backbone.config),
                         DynamicCache(config=self.post_adapter.config) if self.config.post_adapter else None)

    def forward(self, ids: torch.Tensor, audio_features: torch.Tensor | None = None,
                audio_lengths: Sequence[int] | None = None, cache: OmniCache | None = None,
                last_only: bool = False, text_rows: Sequence[int] | None = None,
                audio_rows: Sequence[int] | None = None,
                audio_spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> OmniOutput:
        """ids (B, S, T). With `cache`, the T positions continue the cached ones (prefill or step).
        `audio_spans` (instead of `audio_lengths`): per row, the (start, frames) spans the features fill.
        `last_only`: logits of the last position only. `text_rows` / `audio_rows`: the batch rows whose text /
        audio logits to compute, in that order (None: all; empty: none, the logits are None, and with a
        post-adapter `audio_rows=()` skips its blocks and cache too); the other rows' head products are skipped."""
        T = ids.shape[-1]
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise InputError(f"sequence of {start + T} positions exceeds the context of {self.config.block_size}",
                             "shorten the input or raise block_size (the model was trained up to it)")
        x = self.embed(ids, audio_features, audio_lengths, audio_spans)  # (B, T, D)
        positions = torch.arange(start, start + T, device=ids.device).unsqueeze(0)  # (1, T)
        run_post = audio_rows is None or len(audio_rows) > 0
        out = self._blocks_and_heads(x, positions, None, cache, last_only, text_rows, audio_rows, run_post)
        if cache is not None:
            cache.length = start + T
        return out

    def step(self, ids: torch.Tensor, cache: OmniCache, positions: torch.Tensor, attention_mask: torch.Tensor,
             text_rows: Sequence[int], audio_rows: Sequence[int]) -> OmniOutput:
        """One decode position of B rows, each at its own position (a batch of turns, core/kernel/batching.py):
        ids (B, S, 1); `cache` holds the rows' L columns, left padding included; positions (B, 1);
        attention_mask (B, L + 1) bool, False on each row's padding. Logits as `forward(last_only=True)` for
        `text_rows` / `audio_rows`; every cache advances one column (a post-adapter runs on every row even when
        none samples audio). The caller keeps every row within the context."""
        x = self.embed(ids)  # (B, 1, D)
        out = self._blocks_and_heads(x, positions, attention_mask, cache, True, text_rows, audio_rows, True)
        cache.length += 1
        return out

    def _blocks_and_heads(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                          cache: OmniCache | None, last_only: bool, text_rows: Sequence[int] | None,
                          audio_rows: Sequence[int] | None, run_post: bool) -> OmniOutput:
        """Embeddings x (B, T, D) at `positions` through the blocks and the asked head rows (see `forward`);
        `run_post`: run a post-adapter (it and its cache only run for audio, or for every row of a batch)."""
        # Positional `cache` argument: named `past_key_values` before transformers 5.x, `cache` after.
        hidden = self.backbone(None, mask, positions, cache.backbone if cache else None, x,
                               use_cache=cache is not None).last_hidden_state  # (B, T, D), normed
        if last_only:
            hidden = hidden[:, -1:]
        text_logits = self._head(_rows(hidden, text_rows), 0, self.layout.text_vocab_size)
        if not self.config.post_adapter:
            audio = self._head(_rows(hidden, audio_rows), self.layout.text_vocab_size, None)
            audio_logits = None if audio is None else self._split_audio(audio)
        elif run_post:
            audio_logits = self._post_adapter_logits(positions, mask, cache, last_only, audio_rows)
        else:  # no audio rows: the post-adapter and its cache do not run, its captured input is dropped
            audio_logits = self._pre_norm = None
        return OmniOutput(text_logits, audio_logits, cache)

    def _head(self, hidden: torch.Tensor | None, start: int, stop: int | None) -> torch.Tensor | None:
        """(B, T, D) -> logits of lm_head's vocab rows [start, stop) (B, T, stop - start); only those rows'
        products (the 152k text rows are most of the head)."""
        if hidden is None:
            return None
        if isinstance(self.lm_head, nn.Linear):
            return linear(hidden, self.lm_head.weight[start:stop])
        if hasattr(self.lm_head, "partial"):  # a quantised head split in row blocks (core/kernel/quantize.py)
            return self.lm_head.partial(hidden, start, stop)
        return self.lm_head(hidden)[..., start:stop]

    def _split_audio(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, T, A * audio_vocab) -> (B, A, T, audio_vocab)."""
        L = self.layout
        B, T, _ = logits.shape
        return logits.view(B, T, L.audio_streams, L.audio_vocab_size).transpose(1, 2)

    def _post_adapter_logits(self, positions: torch.Tensor, mask: torch.Tensor | None, cache: OmniCache | None,
                             last_only: bool, audio_rows: Sequence[int] | None) -> torch.Tensor | None:
        """Runs the post-adapter blocks (their cache must advance every step) and its audio head on
        `audio_rows`."""
        x, self._pre_norm = self._pre_norm, None
        h = self.post_adapter(None, mask, positions, cache.post if cache else None, x,
                              use_cache=cache is not None).last_hidden_state
        if last_only:
            h = h[:, -1:]
        h = _rows(h, audio_rows)
        return None if h is None else self._split_audio(self.audio_head(h))

    @property
    def device(self) -> torch.device:
        return self.backbone.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.embed_tokens.weight.dtype


def _rows(x: torch.Tensor, rows: Sequence[int] | None) -> torch.Tensor | None:
    """Batch rows `rows` of x (B, ...) in that order; all for None, None for no rows."""
    if rows is None:
        return x
    if not len(rows):
        return None
    return x[rows[0] : rows[0] + 1] if len(rows) == 1 else x[list(rows)]
