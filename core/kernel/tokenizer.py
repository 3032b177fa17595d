"""Text tokenizer: the checkpoint's `tokenizer.json` (Qwen2 BPE for Mini-Omni) through `tokenizers`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omnivox.core.errors import CheckpointError


class TextTokenizer:
    """encode: text -> ids without specials (as upstream's litgpt Tokenizer for Qwen2); decode stops at
    nothing and skips ids that are not real text (>= `first_special`)."""

    def __init__(self, backend, first_special: int | None = None):
        self.backend = backend
        self.first_special = first_special

    @classmethod
    def from_file(cls, path: str | Path, first_special: int | None = None) -> TextTokenizer:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"tokenizer file {path} not found",
                                  "copy the checkpoint's tokenizer.json next to the weights")
        try:
            return cls(Tokenizer.from_file(str(path)), first_special)
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise CheckpointError(f"{path} is not a valid tokenizer.json ({exc})",
                                  "use the tokenizer.json shipped with the checkpoint") from None

    @classmethod
    def byte_level(cls) -> TextTokenizer:
        """A 256-id byte-level BPE without merges: any text round-trips; used by tiny models."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return cls(tok, first_special=256)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        keep = [int(i) for i in ids if self.first_special is None or int(i) < self.first_special]
        return self.backend.decode(keep, skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))
