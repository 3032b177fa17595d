"""Token layout of the multi-stream Mini-Omni vocabulary, and the prompt builders of every task.

Every sequence position carries `audio_streams + 1` ids: audio streams 0..A-1, then the text stream (last).
omnivox keeps ids LOCAL per stream (audio: 0..audio_vocab_size-1, text: 0..text_vocab_size-1); the model adds
each stream's offset into the shared embedding table ("layershift": text rows first, then audio stream i at
text_vocab_size + i * audio_vocab_size). All sizes come from the model config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnivox.core.errors import InputError, unknown_name
from omnivox.core.kernel.config import SPECIAL_TOKENS, OmniConfig

TASKS = ("A1A2", "A1T2", "A1T1", "T1A2", "T1T2")
AUDIO_IN_TASKS = ("A1A2", "A1T2", "A1T1")
AUDIO_OUT_TASKS = ("A1A2", "T1A2")


@dataclass(frozen=True)
class TokenLayout:
    text_vocab_size: int  # padded text vocab (Qwen ids + 64 specials)
    audio_vocab_size: int  # padded per audio stream (codebook + 64 specials)
    audio_streams: int  # number of audio streams (codec slots per coarse frame)

    @classmethod
    def from_config(cls, config: OmniConfig) -> TokenLayout:
        return cls(config.text_vocab_size, config.audio_vocab_size, config.audio_streams)

    # ---- specials (upstream values for Mini-Omni in comments) ----------------------------------------
    @property
    def eot(self) -> int:  # 151936
        return self.text_vocab_size - SPECIAL_TOKENS

    @property
    def pad_t(self) -> int:  # 151937
        return self.eot + 1

    @property
    def input_t(self) -> int:  # 151938
        return self.eot + 2

    @property
    def answer_t(self) -> int:  # 151939
        return self.eot + 3

    @property
    def asr(self) -> int:  # 151940
        return self.eot + 4

    @property
    def codebook_size(self) -> int:
        return self.audio_vocab_size - SPECIAL_TOKENS

    @property
    def eoa(self) -> int:  # 4096
        return self.codebook_size

    @property
    def pad_a(self) -> int:  # 4097 (upstream also calls it `end_of_audio`)
        return self.eoa + 1

    @property
    def input_a(self) -> int:  # 4098
        return self.eoa + 2

    @property
    def answer_a(self) -> int:  # 4099
        return self.eoa + 3

    @property
    def split(self) -> int:  # 4100
        return self.eoa + 4

    # ---- streams -------------------------------------------------------------------------------------
    @property
    def n_streams(self) -> int:
        return self.audio_streams + 1

    @property
    def text_stream(self) -> int:
        return self.audio_streams

    @property
    def total_vocab(self) -> int:
        return self.text_vocab_size + self.audio_streams * self.audio_vocab_size

    def audio_offset(self, stream: int) -> int:
        """Row of local id 0 of audio stream `stream` in the shared table (upstream `layershift`)."""
        return self.text_vocab_size + stream * self.audio_vocab_size

    def stream_offsets(self) -> torch.Tensor:
        """(S,) offsets to add to local ids to get embedding rows; the text stream's is 0."""
        return torch.tensor([self.audio_offset(i) for i in range(self.audio_streams)] + [0])

    def is_text_special(self, token: int) -> bool:
        return token >= self.eot

    # ---- prompts -------------------------------------------------------------------------------------
    def audio_prompt(self, n_frames: int, task: str) -> Prompt:
        """Audio-in prompt (A1A2 / A1T2 / A1T1) over `n_frames` encoder frames, as upstream builds it:
        audio stream i: [input_a, pad_a * T, eoa, X_a]; text: [input_t, pad_t * T, eot, X_t]."""
        check_task(task, AUDIO_IN_TASKS)
        if n_frames < 1:
            raise InputError(f"an audio prompt needs at least 1 encoder frame, got {n_frames}",
                             "pass non-empty audio")
        x_a, x_t = {"A1A2": (self.answer_a, self.answer_t), "A1T2": (self.pad_a, self.answer_t),
                    "A1T1": (self.pad_a, self.asr)}[task]
        audio_row = [self.input_a] + [self.pad_a] * n_frames + [self.eoa, x_a]
        text_row = [self.input_t] + [self.pad_t] * n_frames + [self.eot, x_t]
        ids = torch.tensor([audio_row] * self.audio_streams + [text_row]).unsqueeze(0)
        return Prompt(ids=ids, audio_lengths=(n_frames,), tasks=(task,))

    def text_prompt(self, text_ids: Sequence[int], task: str) -> Prompt:
        """Text-in prompt (T1A2 / T1T2): text [input_t, ids..., eot, answer_t]; audio streams
        pad_a * (n + 2) then answer_a (T1A2) or pad_a * (n + 3) (T1T2)."""
        check_task(task, ("T1A2", "T1T2"))
        text_ids = [int(t) for t in text_ids]
        if not text_ids:
            raise InputError("the text prompt is empty", "pass at least one text token")
        bad = [t for t in text_ids if not 0 <= t < self.eot]
        if bad:
            raise InputError(f"text ids {bad[:5]} are outside the text vocabulary 0..{self.eot - 1}",
                             "tokenize with the model's tokenizer")
        n = len(text_ids)
        audio_row = [self.pad_a] * (n + 2) + ([self.answer_a] if task == "T1A2" else [self.pad_a])
        text_row = [self.input_t] + text_ids + [self.eot, self.answer_t]
        ids = torch.tensor([audio_row] * self.audio_streams + [text_row]).unsqueeze(0)
        return Prompt(ids=ids, audio_lengths=None, tasks=(task,))


@dataclass
class Prompt:
    """A multi-stream prompt. `ids`: (B, S, T) local ids, S = audio streams + 1 (text last).
    `audio_lengths[b]`: encoder frames injected at positions 1..L of row b (None for text prompts).
    `audio_spans[b]` (a conversation's whole history, instead of `audio_lengths`): the (start, frames) spans of
    row b that its features fill, in order."""

    ids: torch.Tensor
    audio_lengths: tuple[int, ...] | None
    tasks: tuple[str, ...]
    audio_spans: tuple[tuple[tuple[int, int], ...], ...] | None = None

    @property
    def length(self) -> int:
        return self.ids.shape[-1]


def check_task(task: str, allowed: Sequence[str] = TASKS) -> None:
    if task not in allowed:
        raise unknown_name("task", task, allowed)
