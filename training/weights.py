"""Weights in and out of a training run: the tokenizer, `init_from` (partial load from an omnivox, Mini-Omni or
Qwen2 directory, reported) and the native inference files (model.safetensors + model_config.yaml +
tokenizer.json) that checkpoints and exports hold."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omnivox.core.errors import CheckpointError, ConfigError
from omnivox.core.kernel.checkpoint import (
    CONFIG_FILE,
    NATIVE_WEIGHTS,
    TOKENIZER_FILE,
    load_torch_state_dict,
    upstream_to_native,
)
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.model import OmniLM
from omnivox.core.kernel.tokenizer import TextTokenizer

VOCAB_KEYS = ("backbone.embed_tokens.weight", "lm_head.weight")  # rows may be extended (text -> +audio)


def resolve_tokenizer(spec: str | None, init_from: str | None, config: OmniConfig) -> TextTokenizer:
    if spec == "byte-level":
        tokenizer = TextTokenizer.byte_level()
    elif spec is not None:
        tokenizer = TextTokenizer.from_file(spec, first_special=config.raw_text_vocab_size)
    elif init_from and (Path(init_from) / TOKENIZER_FILE).is_file():
        tokenizer = TextTokenizer.from_file(Path(init_from) / TOKENIZER_FILE, first_special=config.raw_text_vocab_size)
    else:
        raise ConfigError("the recipe names no tokenizer and init_from has no tokenizer.json",
                          "set tokenizer: byte-level (tiny models) or tokenizer: PATH/tokenizer.json")
    if tokenizer.vocab_size > config.raw_text_vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's text vocabulary holds "
                          f"{config.raw_text_vocab_size}", "use the model's tokenizer, or a larger text_vocab_size")
    return tokenizer


def read_init_state(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    """State dict in OmniLM key names from an omnivox (native or training checkpoint), upstream Mini-Omni
    or Hugging Face Qwen2 directory; returns (state, kind)."""
    from safetensors.torch import load_file

    if not directory.is_dir():
        raise CheckpointError(f"init_from directory {directory} not found", "point at a previous stage's export "
                              "or checkpoint, a Mini-Omni or a Qwen2 directory")
    if (directory / NATIVE_WEIGHTS).is_file() and (directory / CONFIG_FILE).is_file():
        return load_file(str(directory / NATIVE_WEIGHTS)), "omnivox"
    if (directory / "lit_model.pth").is_file():
        config = OmniConfig.from_file(directory / CONFIG_FILE)
        return upstream_to_native(load_torch_state_dict(directory / "lit_model.pth"), config), "mini-omni"
    files = sorted(directory.glob("*.safetensors"))
    if (directory / "config.json").is_file() and files:
        state: dict[str, torch.Tensor] = {}
        for file in files:
            for key, value in load_file(str(file)).items():
                state["backbone." + key[len("model."):] if key.startswith("model.") else key] = value
        tied = json.loads((directory / "config.json").read_text()).get("tie_word_embeddings", False)
        if tied and "lm_head.weight" not in state and "backbone.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["backbone.embed_tokens.weight"]  # Qwen2-0.5B ties them
        return state, "qwen2"
    raise CheckpointError(f"{directory} holds no weights omnivox can read",
                          "point at a directory with model.safetensors + model_config.yaml (omnivox), "
                          "lit_model.pth (Mini-Omni) or config.json + *.safetensors (Qwen2)")


def load_init(model: OmniLM, directory: str | Path) -> list[str]:
    """Partial load of `directory` into `model`: equal shapes are copied, vocabulary tables with fewer rows
    fill the first rows (a text-only LM into the multi-stream table); other shape mismatches raise
    CheckpointError before any step. Returns the report lines."""
    state, kind = read_init_state(Path(directory))
    own = model.state_dict()
    loaded, rows, misfit = [], [], []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            loaded.append(key)
        elif key in VOCAB_KEYS and value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
            rows.append(f"{key} rows 0..{value.shape[0] - 1} of {target.shape[0]}")
        else:
            misfit.append(f"{key} {tuple(value.shape)} != model {tuple(target.shape)}")
    if misfit:
        more = f" (+{len(misfit) - 6} more)" if len(misfit) > 6 else ""
        raise CheckpointError(f"init_from {directory}: {len(misfit)} tensor(s) do not fit the model: "
                              f"{'; '.join(misfit[:6])}{more}",
                              "use init_from weights of the same model shape (model.config / overrides)")
    if not loaded and not rows:
        raise CheckpointError(f"init_from {directory}: no tensor name matches the model",
                              "point at weights of an OmniLM, a Mini-Omni or a Qwen2 model")
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key])
        for key in VOCAB_KEYS:
            if key in state and state[key].shape != own[key].shape and key in own:
                own[key][: state[key].shape[0]].copy_(state[key])
    missing = sorted(set(own) - set(state))
    ignored = sorted(set(state) - set(own))
    lines = [f"init_from {directory} ({kind}): loaded {len(loaded)} of {len(own)} tensors"]
    lines += [f"  partial: {r}" for r in rows]
    if missing:
        lines.append(f"  kept at initialisation ({len(missing)}): {', '.join(missing[:8])}"
                     + (" ..." if len(missing) > 8 else ""))
    if ignored:
        lines.append(f"  ignored, not in this model ({len(ignored)}): {', '.join(ignored[:8])}"
                     + (" ..." if len(ignored) > 8 else ""))
    return lines


def write_native(directory: Path, state: dict[str, torch.Tensor], config: OmniConfig,
                 tokenizer: TextTokenizer) -> None:
    """The native inference files (as core/checkpoint.save_native) from a full state dict."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / NATIVE_WEIGHTS),
              metadata={"format": "pt", "producer": "omnivox"})
    config.to_file(directory / CONFIG_FILE)
    tokenizer.save(directory / TOKENIZER_FILE)
