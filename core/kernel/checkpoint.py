"""Checkpoints: import of upstream Mini-Omni directories, omnivox's native format, and `OmniModel`.

Upstream (HF `gpt-omni/mini-omni`): `lit_model.pth` (litgpt state dict, fused q/k/v grouped per KV group),
`model_config.yaml`, `tokenizer.json` (+ `tokenizer_config.json`, Whisper `small.pt`).
Native: `model.safetensors` (OmniLM state dict), `model_config.yaml` (same fields), `tokenizer.json`."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from omnivox.core.errors import CheckpointError
from omnivox.core.kernel.config import OmniConfig
from omnivox.core.kernel.model import OmniLM
from omnivox.core.kernel.tokenizer import TextTokenizer
from omnivox.core.progress import bar as progress_bar

UPSTREAM_WEIGHTS = "lit_model.pth"
NATIVE_WEIGHTS = "model.safetensors"
CONFIG_FILE = "model_config.yaml"
TOKENIZER_FILE = "tokenizer.json"
HUB_REPO = "gpt-omni/mini-omni"
UPSTREAM_EXTRA_FILES = ("tokenizer.json", "tokenizer_config.json", "small.pt")

# litgpt block key -> omnivox (transformers Qwen2) block key; q/k/v are split separately.
_BLOCK_KEYS = {
    "norm_1.weight": "input_layernorm.weight",
    "norm_2.weight": "post_attention_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "mlp.fc_1.weight": "mlp.gate_proj.weight",
    "mlp.fc_2.weight": "mlp.up_proj.weight",
    "mlp.proj.weight": "mlp.down_proj.weight",
}
_TOP_KEYS = {
    "transformer.wte.weight": "backbone.embed_tokens.weight",
    "transformer.ln_f.weight": "backbone.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "whisper_adapter.fc_1.weight": "adapter.gate_proj.weight",
    "whisper_adapter.fc_2.weight": "adapter.up_proj.weight",
    "whisper_adapter.proj.weight": "adapter.down_proj.weight",
    "whisper_adapter.weight": "adapter.weight",
    "whisper_adapter.bias": "adapter.bias",
    "transformer.post_adapter_audio_ln.weight": "post_adapter.norm.weight",
    "transformer.post_adapter_audio_lm_head.weight": "audio_head.weight",
}
_BLOCK_RE = re.compile(r"^transformer\.(h|post_adapter)\.(\d+)\.(.+)$")
_STACKS = {"h": "backbone", "post_adapter": "post_adapter"}
_NATIVE_BLOCK_RE = re.compile(r"^(backbone|post_adapter)\.layers\.(\d+)\.(.+)$")
_TOP_INV = {v: k for k, v in _TOP_KEYS.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK_KEYS.items()}
_STACKS_INV = {v: k for k, v in _STACKS.items()}


# ---- upstream <-> omnivox state dicts ---------------------------------------------------------------
def split_fused_qkv(fused: torch.Tensor, config: OmniConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """litgpt's fused q/k/v ((n_head + 2 * groups) * hs, ...) is laid out per KV group as
    [q_per_kv query heads, 1 key head, 1 value head]; returns q (n_head*hs, ...), k, v (groups*hs, ...)."""
    g, hs = config.n_query_groups, config.head_size
    q_per_kv = config.n_head // g
    grouped = fused.reshape(g, q_per_kv + 2, hs, *fused.shape[1:])
    q = grouped[:, :q_per_kv].reshape(g * q_per_kv * hs, *fused.shape[1:])
    k = grouped[:, q_per_kv].reshape(g * hs, *fused.shape[1:])
    v = grouped[:, q_per_kv + 1].reshape(g * hs, *fused.shape[1:])
    return q, k, v


def upstream_to_native(state: dict[str, torch.Tensor], config: OmniConfig,
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename/split a litgpt Mini-Omni state dict into OmniLM keys. Unknown keys are kept under their
    upstream name so that the shape check reports them as unexpected."""
    fused_rows = (config.n_head + 2 * config.n_query_groups) * config.head_size
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        match = _BLOCK_RE.match(key)
        if not match:
            out[key] = value
            continue
        stack, index, rest = match.groups()
        prefix = f"{_STACKS[stack]}.layers.{index}."
        if rest in ("attn.attn.weight", "attn.attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            if value.shape[0] != fused_rows or (kind == "weight" and tuple(value.shape[1:]) != (config.n_embd,)):
                want = (fused_rows, config.n_embd) if kind == "weight" else (fused_rows,)
                raise CheckpointError(f"{source} does not fit its model_config.yaml: mis-shaped: {key} "
                                      f"{tuple(value.shape)} != {want}",
                                      "use the weights and model_config.yaml of the same checkpoint")
            q, k, v = split_fused_qkv(value, config)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{prefix}self_attn.{name}.{kind}"] = part
        elif rest in _BLOCK_KEYS:
            out[prefix + _BLOCK_KEYS[rest]] = value
        else:
            out[key] = value
    return out


# ---- reading files ----------------------------------------------------------------------------------
def load_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True, mmap=True)` with errors that name the file and the fix."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found",
                              f"download the checkpoint (omnivox download mini-omni {path.parent})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch state dict ({first})",
                              "re-download the file; it must be a torch.save()d dict of tensors") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # litgpt training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors",
                              "point at the model weights file (lit_model.pth)")
    return state


def check_state_dict(state: dict[str, torch.Tensor], model: OmniLM, source: str,
                     rename: Callable[[str], str] = lambda k: k) -> None:
    """Missing, unexpected or mis-shaped tensors -> one CheckpointError listing them."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [f"{rename(k)} {tuple(state[k].shape)} != {tuple(expected[k])}"
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k]]
    problems = []
    for label, items in (("missing", [rename(k) for k in missing]), ("unexpected", [rename(k) for k in unexpected]),
                         ("mis-shaped", misshaped)):
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            problems.append(f"{label}: {', '.join(items[:6])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit its model_config.yaml: " + "; ".join(problems),
                              "use the weights and model_config.yaml of the same checkpoint")


def _meta_model(config: OmniConfig) -> OmniLM:
    with torch.device("meta"):
        return OmniLM(config)


def _materialize(config: OmniConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> OmniLM:
    model = _meta_model(config)
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_buffers(model, config)  # non-persistent buffers were created on the meta device
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _rebuild_buffers(model: OmniLM, config: OmniConfig) -> None:
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.stream_offsets = model.layout.stream_offsets()
    model.backbone.rotary_emb = Qwen2RotaryEmbedding(config=model.backbone.config)
    if config.post_adapter:
        model.post_adapter.rotary_emb = Qwen2RotaryEmbedding(config=model.post_adapter.config)


def upstream_name(key: str) -> str:
    """The litgpt name of an OmniLM key (q/k/v projections all come from the fused `attn.attn`)."""
    match = _NATIVE_BLOCK_RE.match(key)
    if not match:
        return _TOP_INV.get(key, key)
    stack, index, rest = match.groups()
    prefix = f"transformer.{_STACKS_INV[stack]}.{index}."
    qkv = re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", rest)
    if qkv:
        return f"{prefix}attn.attn.{qkv.group(1)}"
    return prefix + _BLOCK_INV.get(rest, rest)


# ---- the public model bundle ------------------------------------------------------------------------
@dataclass
class OmniModel:
    """An OmniLM with its config, token layout and text tokenizer, as loaded from a checkpoint."""

    lm: OmniLM
    tokenizer: TextTokenizer | None
    source: str = ""

    @property
    def config(self) -> OmniConfig:
        return self.lm.config

    @property
    def layout(self):
        return self.lm.layout

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None,
                        device: str | torch.device = "cpu") -> OmniModel:
        """Load an upstream Mini-Omni dir, a native omnivox dir, or (online) a hub repo id."""
        directory = resolve_checkpoint_dir(path)
        if (directory / NATIVE_WEIGHTS).is_file():
            model = load_native(directory, dtype)
        elif (directory / UPSTREAM_WEIGHTS).is_file():
            model = load_upstream(directory, dtype)
        else:
            present = sorted(p.name for p in directory.iterdir())[:10]
            raise CheckpointError(
                f"{directory} holds neither {NATIVE_WEIGHTS} (omnivox) nor {UPSTREAM_WEIGHTS} (Mini-Omni); "
                f"found: {', '.join(present) or 'nothing'}",
                f"point at a checkpoint directory, or run: omnivox download mini-omni {directory}")
        model.lm.to(device)
        return model

    @classmethod
    def random(cls, config: OmniConfig, seed: int = 0) -> OmniModel:
        """A randomly initialised model (tests and the no-checkpoint demo) with a byte-level tokenizer."""
        torch.manual_seed(seed)
        lm = OmniLM(config).eval()
        tokenizer = TextTokenizer.byte_level() if config.raw_text_vocab_size >= 256 else None
        return cls(lm, tokenizer, source=f"random {config.name or 'model'} (seed {seed})")

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_native(self, directory)


def resolve_checkpoint_dir(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if directory.is_dir():
        return directory
    if directory.exists():
        raise CheckpointError(f"{directory} is a file, not a checkpoint directory",
                              "pass the directory that holds the weights and model_config.yaml")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not str(path).startswith("."):
        return download(str(path), progress=True)
    raise CheckpointError(f"checkpoint directory {directory} not found",
                          f"check the path, or download one: omnivox download mini-omni {directory}")


def read_upstream(directory: Path) -> tuple[OmniConfig, dict[str, torch.Tensor]]:
    """The config and the (renamed, q/k/v-split, shape-checked) OmniLM state dict of an upstream dir."""
    if not (directory / CONFIG_FILE).is_file():
        raise CheckpointError(f"{directory / CONFIG_FILE} not found",
                              "an upstream checkpoint needs its model_config.yaml next to lit_model.pth")
    config = OmniConfig.from_file(directory / CONFIG_FILE)
    weights = directory / UPSTREAM_WEIGHTS
    state = upstream_to_native(load_torch_state_dict(weights), config, str(weights))
    check_state_dict(state, _meta_model(config), str(weights), upstream_name)
    return config, state


def load_upstream(directory: Path, dtype: torch.dtype | None = None) -> OmniModel:
    config, state = read_upstream(directory)
    return OmniModel(_materialize(config, state, dtype), _load_tokenizer(directory, config), str(directory))


def load_native(directory: Path, dtype: torch.dtype | None = None) -> OmniModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = OmniConfig.from_file(directory / CONFIG_FILE)
    try:
        state = load_file(str(directory / NATIVE_WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / NATIVE_WEIGHTS} is not a readable safetensors file ({exc})",
                              "re-export the checkpoint with omnivox convert") from None
    check_state_dict(state, _meta_model(config), str(directory / NATIVE_WEIGHTS))
    return OmniModel(_materialize(config, state, dtype), _load_tokenizer(directory, config), str(directory))


def _load_tokenizer(directory: Path, config: OmniConfig) -> TextTokenizer | None:
    path = directory / TOKENIZER_FILE
    return TextTokenizer.from_file(path, first_special=config.raw_text_vocab_size) if path.is_file() else None


def save_native(model: OmniModel, directory: str | Path) -> Path:
    """Write model.safetensors + model_config.yaml (+ tokenizer.json); loads back bit-exactly."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_safetensors({k: v.detach().cpu() for k, v in model.lm.state_dict().items()}, directory / NATIVE_WEIGHTS)
    model.config.to_file(directory / CONFIG_FILE)
    if model.tokenizer is not None:
        model.tokenizer.save(directory / TOKENIZER_FILE)
    return directory


_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}
_CHUNK = 64 << 20  # bytes written between progress updates


def _write_safetensors(state: dict[str, torch.Tensor], path: Path, progress: bool = False) -> None:
    """The safetensors format (8-byte little-endian header length, JSON header, the tensors' bytes back to
    back), written tensor by tensor so that a progress bar can follow (mmap'd tensors are read as they are
    written); atomic (temp file + rename), so a crash never leaves a half-written weights file."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt", "producer": "omnivox"}}
    offset = 0
    for name, tensor in state.items():
        if tensor.dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"cannot save {name}: dtype {tensor.dtype} has no safetensors name",
                                  "convert the model to float32/float16/bfloat16 first")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # tensor data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f, progress_bar(total=offset, desc=f"write {path.name}", unit="B", unit_scale=True,
                                            unit_divisor=1024, enabled=progress, leave=False) as bar:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for tensor in state.values():
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()  # (bytes,)
            for start in range(0, len(data), _CHUNK):
                f.write(data[start:start + _CHUNK].data)
                bar.update(min(_CHUNK, len(data) - start))
    tmp.replace(path)


def convert_upstream(src: str | Path, dst: str | Path, progress: bool = False) -> Path:
    """Upstream Mini-Omni dir -> native dir, without building the model in memory (mmap'd tensors are
    renamed/split and streamed into safetensors). Copies tokenizer files and Whisper's small.pt if present.
    `progress`: a bar (bytes written) on stderr when it is a terminal."""
    src, dst = resolve_checkpoint_dir(src), Path(dst)
    if not (src / UPSTREAM_WEIGHTS).is_file():
        raise CheckpointError(f"{src} has no {UPSTREAM_WEIGHTS}", "point at an upstream Mini-Omni directory")
    if src.resolve() == dst.resolve():
        raise CheckpointError("source and destination are the same directory", "choose a new destination")
    config, state = read_upstream(src)
    dst.mkdir(parents=True, exist_ok=True)
    _write_safetensors(state, dst / NATIVE_WEIGHTS, progress)
    config.to_file(dst / CONFIG_FILE)
    for name in UPSTREAM_EXTRA_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def download(repo_id: str = HUB_REPO, directory: str | Path | None = None, progress: bool = False) -> Path:
    """Snapshot a hub repo (online users). Offline: a CheckpointError that says how to proceed.
    `progress`: the hub's per-file bars on stderr when it is a terminal (none otherwise)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        quiet, was_quiet = not (progress and sys.stderr.isatty()), are_progress_bars_disabled()
        if quiet:
            disable_progress_bars()
        try:
            return Path(snapshot_download(repo_id, local_dir=str(directory) if directory else None))
        finally:
            if quiet and not was_quiet:
                enable_progress_bars()
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"could not download {repo_id} from the Hugging Face hub ({type(exc).__name__}: {reason})",
            f"on a machine with network run 'omnivox download mini-omni DIR' and copy DIR here, then pass "
            f"--checkpoint DIR; the directory needs {UPSTREAM_WEIGHTS} and {CONFIG_FILE}") from None
