"""Independent re-statement of upstream Mini-Omni (litgpt) for tests: fabricate checkpoints in the exact
upstream format with tiny random weights, and a reference forward written from the upstream formulas
(fused grouped q/k/v, RoPE, RMSNorm, SwiGLU, mean of the stream embeddings, adapter injection).
Nothing here imports omnivox's model code."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import yaml

# Every field of upstream litgpt Config (litgpt/config.py) as written to model_config.yaml.
UPSTREAM_FIELDS = dict(
    name="Qwen2-0.5B", hf_config={"name": "Qwen2-0.5B", "org": "Qwen"}, scale_embeddings=False,
    block_size=2048, vocab_size=50254, padding_multiple=512, padded_vocab_size=181120, n_layer=24,
    n_head=14, head_size=64, n_embd=896, rotary_percentage=1.0, parallel_residual=False, bias=False,
    lm_head_bias=False, n_query_groups=2, shared_attention_norm=False, norm_class_name="RMSNorm",
    norm_eps=1e-06, mlp_class_name="LLaMAMLP", gelu_approximate="none", intermediate_size=4864,
    rope_condense_ratio=1, rope_base=1000000, n_expert=0, n_expert_per_token=0, add_qkv_bias=True,
    prompt_vocab_size=None, attn_dropout=0.0, pos_type="rope", force_align=False,
    use_pretrain_phoneme_emb=False, tie_word_embeddings=False, text_vocab_size=152000,
    cat_audio_vocab_size=29120, audio_vocab_size=4160, whisper_adapter_dim=768, post_adapter=False,
    post_adapter_layers=6, asr_adapter="llamamlp",
)


def tiny_fields(**overrides) -> dict:
    """A tiny upstream config: 7 audio streams of 64+64 ids, 256+64 text ids, 2 layers, GQA 4 heads/2 groups."""
    fields = dict(UPSTREAM_FIELDS)
    fields.update(name="tiny", n_layer=2, n_head=4, n_query_groups=2, head_size=16, n_embd=64,
                  intermediate_size=96, block_size=512, text_vocab_size=320, audio_vocab_size=128,
                  cat_audio_vocab_size=7 * 128, padded_vocab_size=320 + 7 * 128, whisper_adapter_dim=24)
    fields.update(overrides)
    return fields


def upstream_state_dict(cfg: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random tensors under litgpt's key names and shapes (GPT in litgpt/model.py)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    d, hs, inter = cfg["n_embd"], cfg["head_size"], cfg["intermediate_size"]
    qkv = (cfg["n_head"] + 2 * cfg["n_query_groups"]) * hs
    sd = {"transformer.wte.weight": rand(cfg["padded_vocab_size"], d, scale=1.0),
          "transformer.ln_f.weight": 1 + rand(d, scale=0.1),
          "lm_head.weight": rand(cfg["padded_vocab_size"], d)}

    def block(prefix):
        sd[prefix + "norm_1.weight"] = 1 + rand(d, scale=0.1)
        sd[prefix + "norm_2.weight"] = 1 + rand(d, scale=0.1)
        sd[prefix + "attn.attn.weight"] = rand(qkv, d)
        sd[prefix + "attn.attn.bias"] = rand(qkv)
        sd[prefix + "attn.proj.weight"] = rand(d, cfg["n_head"] * hs)
        sd[prefix + "mlp.fc_1.weight"] = rand(inter, d)
        sd[prefix + "mlp.fc_2.weight"] = rand(inter, d)
        sd[prefix + "mlp.proj.weight"] = rand(d, inter)

    for i in range(cfg["n_layer"]):
        block(f"transformer.h.{i}.")
    w = cfg["whisper_adapter_dim"]
    if cfg["asr_adapter"] == "llamamlp":
        sd["whisper_adapter.fc_1.weight"] = rand(inter, w)
        sd["whisper_adapter.fc_2.weight"] = rand(inter, w)
        sd["whisper_adapter.proj.weight"] = rand(d, inter)
    else:
        sd["whisper_adapter.weight"] = rand(d, w)
        sd["whisper_adapter.bias"] = rand(d)
    if cfg["post_adapter"]:
        for i in range(cfg["post_adapter_layers"]):
            block(f"transformer.post_adapter.{i}.")
        sd["transformer.post_adapter_audio_ln.weight"] = 1 + rand(d, scale=0.1)
        sd["transformer.post_adapter_audio_lm_head.weight"] = rand(cfg["cat_audio_vocab_size"], d)
    return sd


def write_upstream_checkpoint(directory: Path, cfg: dict, seed: int = 0,
                              dtype=torch.float32) -> dict[str, torch.Tensor]:
    """lit_model.pth + model_config.yaml (+ a byte-level tokenizer.json), as in HF gpt-omni/mini-omni."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    sd = upstream_state_dict(cfg, seed, dtype)
    torch.save(sd, directory / "lit_model.pth")
    (directory / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(directory / "tokenizer.json"))
    return sd


# ---- upstream token layout (inference.py / utils/snac_utils.py) ----------------------------------------
def specials(cfg: dict) -> dict:
    t, a = cfg["text_vocab_size"] - 64, cfg["audio_vocab_size"] - 64
    return dict(eot=t, pad_t=t + 1, input_t=t + 2, answer_t=t + 3, asr=t + 4,
                eoa=a, pad_a=a + 1, input_a=a + 2, answer_a=a + 3)


def layershift(cfg: dict, token: int, layer: int) -> int:
    return token + cfg["text_vocab_size"] + layer * cfg["audio_vocab_size"]


def upstream_audio_prompt(cfg, T: int, special_a: str, special_t: str) -> list[list[int]]:
    """`get_input_ids_whisper`: 7 absolute audio rows + the text row, each of length T + 3."""
    s = specials(cfg)
    rows = [[layershift(cfg, s["input_a"], i)] + [layershift(cfg, s["pad_a"], i)] * T
            + [layershift(cfg, s["eoa"], i), layershift(cfg, s[special_a], i)] for i in range(7)]
    rows.append([s["input_t"]] + [s["pad_t"]] * T + [s["eot"], s[special_t]])
    return rows


def upstream_text_prompt(cfg, tokens: list[int], speech: bool) -> list[list[int]]:
    """`get_input_ids_TA` (speech=True) / `get_input_ids_TT`."""
    s = specials(cfg)
    n = len(tokens)
    if speech:
        rows = [[layershift(cfg, s["pad_a"], i)] * (n + 2) + [layershift(cfg, s["answer_a"], i)] for i in range(7)]
    else:
        rows = [[layershift(cfg, s["pad_a"], i)] * (n + 3) for i in range(7)]
    rows.append([s["input_t"]] + list(tokens) + [s["eot"], s["answer_t"]])
    return rows


# ---- reference forward (litgpt/model.py GPT.forward without KV cache) ---------------------------------
def _rms(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt((x32 * x32).mean(-1, keepdim=True) + eps)) * w


def _rope(x, cos, sin):
    half = x.size(-1) // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _block(sd, prefix, x, cfg, cos, sin):
    B, T, _ = x.shape
    G, hs, H = cfg["n_query_groups"], cfg["head_size"], cfg["n_head"]
    q_per_kv = H // G
    h = _rms(x, sd[prefix + "norm_1.weight"], cfg["norm_eps"])
    qkv = h @ sd[prefix + "attn.attn.weight"].T + sd[prefix + "attn.attn.bias"]
    qkv = qkv.view(B, T, G, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4)  # (B, G, q_per_kv+2, T, hs)
    q, k, v = qkv.split((q_per_kv, 1, 1), dim=2)
    k = k.expand(B, G, q_per_kv, T, hs)
    v = v.expand(B, G, q_per_kv, T, hs)
    q, k, v = (t.reshape(B, H, T, hs) for t in (q, k, v))
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * hs)
    x = x + y @ sd[prefix + "attn.proj.weight"].T
    h = _rms(x, sd[prefix + "norm_2.weight"], cfg["norm_eps"])
    a = torch.nn.functional.silu(h @ sd[prefix + "mlp.fc_1.weight"].T) * (h @ sd[prefix + "mlp.fc_2.weight"].T)
    return x + a @ sd[prefix + "mlp.proj.weight"].T


def reference_forward(sd, cfg, rows, audio_features=None, whisper_lens=None):
    """rows: list of 8 LongTensors (B, T) of ABSOLUTE ids (7 audio + text); audio_features (B, Ta, F).
    Returns (audio logits list of 7 x (B, T, audio_vocab), text logits (B, T, text_vocab)) like GPT.forward."""
    embs = [sd["transformer.wte.weight"][r] for r in rows]
    if audio_features is not None:
        if cfg["asr_adapter"] == "llamamlp":
            f = audio_features
            x_a = (torch.nn.functional.silu(f @ sd["whisper_adapter.fc_1.weight"].T)
                   * (f @ sd["whisper_adapter.fc_2.weight"].T)) @ sd["whisper_adapter.proj.weight"].T
        else:
            x_a = audio_features @ sd["whisper_adapter.weight"].T + sd["whisper_adapter.bias"]
        for j, n in enumerate(whisper_lens):
            for i in range(7):
                embs[i] = embs[i].clone()
                embs[i][j, 1:n + 1, :] = x_a[j][:n]
    x = sum(embs[1:], embs[0]) / 8
    T = x.shape[1]
    hs = cfg["head_size"]
    theta = 1.0 / (cfg["rope_base"] ** (torch.arange(0, hs, 2).float() / hs))
    angles = torch.outer(torch.arange(T).float(), theta).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    h = x
    for i in range(cfg["n_layer"]):
        h = _block(sd, f"transformer.h.{i}.", h, cfg, cos, sin)
    logits = _rms(h, sd["transformer.ln_f.weight"], cfg["norm_eps"]) @ sd["lm_head.weight"].T
    tv, av = cfg["text_vocab_size"], cfg["audio_vocab_size"]
    text = logits[..., :tv]
    if cfg["post_adapter"]:
        p = h
        for i in range(cfg["post_adapter_layers"]):
            p = _block(sd, f"transformer.post_adapter.{i}.", p, cfg, cos, sin)
        pa = _rms(p, sd["transformer.post_adapter_audio_ln.weight"], cfg["norm_eps"])
        pa = pa @ sd["transformer.post_adapter_audio_lm_head.weight"].T
        audio = [pa[..., av * i: av * (i + 1)] for i in range(7)]
    else:
        audio = [logits[..., tv + av * i: tv + av * (i + 1)] for i in range(7)]
    return audio, text
