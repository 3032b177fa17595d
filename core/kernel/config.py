"""Model configuration in upstream Mini-Omni (litgpt `model_config.yaml`) field names.

One dataclass serves both the upstream import and omnivox's native format, so a converted checkpoint keeps
the exact upstream numbers. Unknown or missing fields, wrong types and architectures the Qwen2 backbone
cannot express are rejected with a `ConfigError` naming the file, the field and the fix."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omnivox.core.errors import ConfigError, PluginError
from omnivox.core.kernel.actions import ActionFormat
from omnivox.core.yaml_files import read_yaml

SPECIAL_TOKENS = 64  # specials appended to the text vocab and to every audio codebook (upstream)

# Fields a model_config.yaml must name: without them the model's shape is unknown.
REQUIRED = ("n_layer", "n_head", "n_embd", "intermediate_size", "padded_vocab_size")


@dataclass
class OmniConfig:
    """Mini-Omni/litgpt config. Defaults are litgpt's, except where noted; shapes: see REQUIRED."""

    n_layer: int
    n_head: int
    n_embd: int
    intermediate_size: int
    padded_vocab_size: int  # text_vocab_size + audio streams * audio_vocab_size (181,120 for Mini-Omni)
    name: str = ""
    hf_config: dict = field(default_factory=dict)
    head_size: int | None = None
    n_query_groups: int | None = None
    block_size: int = 4096
    vocab_size: int = 50254
    padding_multiple: int = 512
    scale_embeddings: bool = False
    rotary_percentage: float = 1.0
    parallel_residual: bool = False
    bias: bool = False
    lm_head_bias: bool = False
    add_qkv_bias: bool | None = True
    shared_attention_norm: bool = False
    norm_class_name: str = "RMSNorm"
    norm_eps: float = 1e-6
    mlp_class_name: str = "LLaMAMLP"
    gelu_approximate: str = "none"
    rope_condense_ratio: int = 1
    rope_base: int = 1_000_000
    n_expert: int = 0
    n_expert_per_token: int = 0
    prompt_vocab_size: int | None = None
    attn_dropout: float = 0.0
    pos_type: str = "rope"
    force_align: bool = False
    use_pretrain_phoneme_emb: bool = False
    tie_word_embeddings: bool = False
    # Mini-Omni additions
    text_vocab_size: int = 152_000  # padded: 151,936 Qwen ids + 64 specials
    cat_audio_vocab_size: int = 29_120  # audio streams * audio_vocab_size
    audio_vocab_size: int = 4_160  # padded per stream: codebook + 64 specials
    whisper_adapter_dim: int = 768
    post_adapter: bool = False
    post_adapter_layers: int = 6
    asr_adapter: str = "llamamlp"
    # omnivox addition: the action markup the model emits in its text (core/kernel/actions.py ActionFormat
    # fields: open, close, max_chars, names, ...); None: the model has no actions
    actions: dict | None = None
    # omnivox addition: how a conversation's history and context are laid out (core/kernel/conversation_format.py
    # ConversationFormat fields: history, memory, context_token); None: the default (whole turns, memory off)
    conversation: dict | None = None
    # omnivox addition: the decoding strategy the model answers best with (a registered name, e.g.
    # batch-parallel), used wherever the user names none; None: text-delay (what upstream Mini-Omni decodes A1A2 with)
    decoding: str | None = None

    def __post_init__(self) -> None:
        if self.head_size is None:
            self.head_size = self.n_embd // self.n_head
        if self.n_query_groups is None:
            self.n_query_groups = self.n_head
        if self.add_qkv_bias is None:
            self.add_qkv_bias = self.bias

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def audio_streams(self) -> int:
        """Number of audio token streams (7 for SNAC 24 kHz); the text stream comes on top."""
        return (self.padded_vocab_size - self.text_vocab_size) // self.audio_vocab_size

    @property
    def codebook_size(self) -> int:
        return self.audio_vocab_size - SPECIAL_TOKENS

    @property
    def raw_text_vocab_size(self) -> int:
        return self.text_vocab_size - SPECIAL_TOKENS

    # ---- validation --------------------------------------------------------------------------------
    def validate(self, source: str = "config") -> OmniConfig:
        """Reject values the omnivox model cannot represent; returns self."""

        def bad(name: str, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{source}: field {name!r} {problem}", fix)

        for name in ("n_layer", "n_head", "n_embd", "intermediate_size", "padded_vocab_size",
                     "text_vocab_size", "audio_vocab_size", "block_size"):
            if getattr(self, name) <= 0:
                raise bad(name, f"must be positive, got {getattr(self, name)}", "use the value of the trained model")
        if self.n_head % self.n_query_groups:
            raise bad("n_query_groups", f"={self.n_query_groups} does not divide n_head={self.n_head}",
                      "set n_query_groups to a divisor of n_head")
        if self.audio_vocab_size <= SPECIAL_TOKENS or self.text_vocab_size <= SPECIAL_TOKENS:
            raise bad("audio_vocab_size", f"must exceed the {SPECIAL_TOKENS} special tokens",
                      "audio_vocab_size = codebook size + 64, text_vocab_size = text ids + 64")
        extra = self.padded_vocab_size - self.text_vocab_size
        if extra <= 0 or extra % self.audio_vocab_size:
            raise bad("padded_vocab_size",
                      f"={self.padded_vocab_size} is not text_vocab_size ({self.text_vocab_size}) plus a whole "
                      f"number of audio_vocab_size ({self.audio_vocab_size}) blocks",
                      "padded_vocab_size = text_vocab_size + audio_streams * audio_vocab_size")
        if self.cat_audio_vocab_size != extra:
            raise bad("cat_audio_vocab_size", f"={self.cat_audio_vocab_size} but the vocab holds {extra} audio rows",
                      f"set cat_audio_vocab_size: {extra}")
        supported = {
            "mlp_class_name": "LLaMAMLP", "norm_class_name": "RMSNorm", "parallel_residual": False,
            "shared_attention_norm": False, "rotary_percentage": 1.0, "bias": False, "lm_head_bias": False,
            "add_qkv_bias": True, "scale_embeddings": False, "n_expert": 0, "pos_type": "rope",
            "rope_condense_ratio": 1, "tie_word_embeddings": False,
        }
        for name, want in supported.items():
            if getattr(self, name) != want:
                raise bad(name, f"={getattr(self, name)!r} is not supported (the Qwen2 backbone needs {want!r})",
                          f"set {name}: {want} or use a Qwen2-architecture checkpoint")
        if self.actions is not None:
            ActionFormat.from_dict(self.actions, f"{source}: field 'actions'")
        if self.conversation is not None:
            from omnivox.core.kernel.conversation_format import ConversationFormat  # it imports this module

            ConversationFormat.from_dict(self.conversation, f"{source}: field 'conversation'")
        if self.decoding is not None:
            from omnivox.core.kernel.strategies import get_strategy  # they import this module

            try:
                get_strategy(self.decoding)
            except PluginError as exc:
                raise bad("decoding", f"={self.decoding!r} names no decoding strategy", exc.fix) from None
        if self.asr_adapter not in ("llamamlp", "mlp"):
            raise bad("asr_adapter", f"={self.asr_adapter!r} is unknown", "use 'llamamlp' (SwiGLU) or 'mlp' (linear)")
        if self.head_size * self.n_head <= 0 or self.head_size % 2:
            raise bad("head_size", f"={self.head_size} must be a positive even number", "fix head_size")
        return self

    # ---- (de)serialisation -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> OmniConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of config fields, got {type(data).__name__}",
                              "write the file as 'field: value' lines (litgpt model_config.yaml format)")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}",
                              f"remove them; valid fields: {', '.join(sorted(known))}")
        missing = [name for name in REQUIRED if data.get(name) is None]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)}",
                              "add them with the values of the trained model")
        for name, value in data.items():
            _check_type(name, value, known[name].type, source)
        return cls(**data).validate(source)

    @classmethod
    def from_file(cls, path: str | Path) -> OmniConfig:
        data = read_yaml(path, "config file", "point at the checkpoint's model_config.yaml")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_file(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=True), encoding="utf-8")

    @classmethod
    def tiny(cls, audio_streams: int = 7, codebook_size: int = 64, text_ids: int = 256, **overrides) -> OmniConfig:
        """A small random-testable config with Mini-Omni's structure (for tests and the no-checkpoint demo)."""
        text_vocab = text_ids + SPECIAL_TOKENS
        audio_vocab = codebook_size + SPECIAL_TOKENS
        data = dict(
            name="omnivox-tiny", n_layer=2, n_head=4, n_query_groups=2, n_embd=64, head_size=16,
            intermediate_size=128, block_size=1024, text_vocab_size=text_vocab, audio_vocab_size=audio_vocab,
            cat_audio_vocab_size=audio_streams * audio_vocab,
            padded_vocab_size=text_vocab + audio_streams * audio_vocab, whisper_adapter_dim=32,
        )
        data.update(overrides)
        return cls.from_dict(data, source="tiny config")

    @classmethod
    def mini_omni(cls) -> OmniConfig:
        """The released Mini-Omni shape (Qwen2-0.5B backbone, 7 SNAC streams)."""
        return cls.from_dict(dict(
            name="Qwen2-0.5B", hf_config={"name": "Qwen2-0.5B", "org": "Qwen"}, n_layer=24, n_head=14,
            n_query_groups=2, n_embd=896, head_size=64, intermediate_size=4864, block_size=2048,
            padded_vocab_size=181_120, rope_base=1_000_000,
        ), source="mini-omni config")


_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,), dict: (dict,)}


def _check_type(name: str, value: Any, annotation: str, source: str) -> None:
    """Checks a YAML value against the dataclass annotation (a string under `from __future__`)."""
    optional = "None" in annotation
    if value is None:
        if optional:
            return
        raise ConfigError(f"{source}: field {name!r} is null", f"give {name} a value of type {annotation}")
    base = annotation.split("|")[0].strip()
    py_type = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict}[base]
    ok = isinstance(value, _TYPES[py_type]) and not (py_type in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{source}: field {name!r} should be {base}, got {type(value).__name__} {value!r}",
                          f"write {name} as a {base}")
