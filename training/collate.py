"""Examples -> teacher-forced multi-stream sequences, laid out by the decoding strategy, and batches of them.

The strategy that drives inference builds both the prompt and the target (`strategy.prompt`,
`strategy.layout_target`), and `teacher_forcing` joins them, so training and inference cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.tokens import TokenLayout
from omnivox.training.data import Example

IGNORE = -100


@dataclass
class TrainSequence:
    input_ids: torch.Tensor  # (S, L) local ids
    labels: torch.Tensor  # (S, L) next-position ids, IGNORE where no loss
    features: torch.Tensor | None  # (Ta, F) encoder features of the question (audio-in tasks, when loaded)
    source: str  # manifest FILE:LINE

    @property
    def length(self) -> int:
        return self.input_ids.shape[-1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S, L) right-padded with pad_a / pad_t
    labels: torch.Tensor  # (B, S, L) IGNORE on padding
    features: torch.Tensor | None  # (B, Ta_max, F) zero-padded, None when no row has audio in
    audio_lengths: list[int]  # (B,) feature frames per row, 0 for text-in rows

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.labels.to(device),
                     None if self.features is None else self.features.to(device), self.audio_lengths)


def build_sequence(example: Example, tokenizer, strategy, layout: TokenLayout, block_size: int,
                   feature_dim: int, load_features: bool = True) -> TrainSequence:
    """One example -> its teacher-forced sequence; too long for the context, or features/frames that do
    not fit the model, raise InputError naming the manifest line. Without `load_features` only the
    features' shape is read (the check pass over a whole data set)."""
    from omnivox.core.kernel.strategies.base import teacher_forcing

    answer_ids = tokenizer.encode(example.answer_text)
    if not answer_ids:
        raise InputError(f"{example.source}: answer_text encodes to no tokens", "give a non-empty answer")
    features = frames = None
    if example.audio_in:
        n_frames, dim = example.feature_shape()
        if dim != feature_dim:
            raise InputError(f"{example.source}: question_features have {dim} dims but the model's "
                             f"adapter takes {feature_dim}", "prepare with the encoder the model uses "
                             "(whisper_adapter_dim)")
        features = example.features() if load_features else None  # (Ta, F)
        prompt = strategy.prompt(layout, example.task, n_frames=n_frames)
    else:
        prompt = strategy.prompt(layout, example.task, text_ids=tokenizer.encode(example.question_text))
    if example.audio_out:
        frames = example.frames()  # (N, A)
        if frames.shape[1] != layout.audio_streams:
            raise InputError(f"{example.source}: answer_frames have {frames.shape[1]} slots but the model has "
                             f"{layout.audio_streams} audio streams", "prepare with the codec the model uses")
        if frames.min() < 0 or frames.max() >= layout.codebook_size:
            raise InputError(f"{example.source}: answer_frames hold codes outside 0..{layout.codebook_size - 1}",
                             "prepare with the codec the model uses (codebook size)")
    target = strategy.layout_target(layout, answer_ids, frames, example.task)
    input_ids, labels = teacher_forcing(prompt.ids[0], target)  # (S, L) each
    if input_ids.shape[-1] > block_size:
        what = "question audio and answer" if example.audio_in or example.audio_out else "question and answer"
        raise InputError(f"{example.source}: the {what} need {input_ids.shape[-1]} positions but the model's "
                         f"context is {block_size}", "use shorter audio/text for this example, or a model with a "
                         "larger block_size")
    return TrainSequence(input_ids, labels, features, example.source)


def collate(sequences: Sequence[TrainSequence], layout: TokenLayout) -> Batch:
    """Right-pad to the longest sequence: inputs with each stream's pad id, labels with IGNORE."""
    B, S, L = len(sequences), layout.n_streams, max(s.length for s in sequences)
    pads = torch.tensor([layout.pad_a] * layout.audio_streams + [layout.pad_t]).view(S, 1)
    input_ids = pads.expand(S, L).repeat(B, 1, 1)  # (B, S, L)
    labels = torch.full((B, S, L), IGNORE, dtype=torch.long)
    lengths = [s.features.shape[0] if s.features is not None else 0 for s in sequences]
    features = None
    if any(lengths):
        dim = next(s.features.shape[1] for s in sequences if s.features is not None)
        features = torch.zeros(B, max(lengths), dim)
    for b, seq in enumerate(sequences):
        input_ids[b, :, : seq.length] = seq.input_ids
        labels[b, :, : seq.length] = seq.labels
        if seq.features is not None:
            features[b, : lengths[b]] = seq.features
    return Batch(input_ids, labels, features, lengths)
