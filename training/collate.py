"""Examples -> teacher-forced multi-stream sequences, laid out by the decoding strategy, and batches of them.

The strategy that drives inference builds both the prompt and the target (`strategy.prompt`,
`strategy.layout_target`), and `teacher_forcing` joins them, so training and inference cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.conversation_format import ConversationFormat, TurnRecord
from omnivox.core.kernel.strategies.base import Target
from omnivox.core.kernel.tokens import Prompt, TokenLayout
from omnivox.training.data import Example

IGNORE = -100


@dataclass
class TrainSequence:
    input_ids: torch.Tensor  # (S, L) local ids
    labels: torch.Tensor  # (S, L) next-position ids, IGNORE where no loss
    features: torch.Tensor | None  # (Ta, F) encoder features of every audio turn in order (when loaded)
    source: str  # manifest FILE:LINE
    audio_spans: list[tuple[int, int]] = field(default_factory=list)  # (start, frames) per audio turn

    @property
    def length(self) -> int:
        return self.input_ids.shape[-1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, S, L) right-padded with pad_a / pad_t
    labels: torch.Tensor  # (B, S, L) IGNORE on padding
    features: torch.Tensor | None  # (B, Ta_max, F) zero-padded, None when no row has audio in
    audio_lengths: list[int]  # (B,) feature frames per row (every audio turn), 0 for rows without audio
    audio_spans: list[list[tuple[int, int]]] = field(default_factory=list)  # (B,) per row its (start, frames)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.labels.to(device),
                     None if self.features is None else self.features.to(device), self.audio_lengths,
                     self.audio_spans)

    @property
    def spans(self) -> list[list[tuple[int, int]]] | None:
        """The model's `audio_spans` when a row's audio is not one span at position 1 (a conversation with
        several audio turns, or a context/history before it); None: `audio_lengths` says it all."""
        if all(len(row) <= 1 and all(start == 1 for start, _ in row) for row in self.audio_spans):
            return None
        return self.audio_spans


def build_sequence(example: Example, tokenizer, strategy, layout: TokenLayout, block_size: int,
                   feature_dim: int, load_features: bool = True,
                   format: ConversationFormat | None = None) -> TrainSequence:
    """One example -> its teacher-forced sequence; too long for the context, or features/frames that do
    not fit the model, raise InputError naming the manifest line. Without `load_features` only the
    features' shape is read (the check pass over a whole data set).

    A conversation line (history / context, see data.py) is laid out as inference prefills it:
    `format.render` (the model's ConversationFormat; default: the default format) of the context segment, each
    history turn (its prompt, then `fed_answer` of its target; the last one's first `history_cut` share when
    given) and this line's prompt, then this line's answer
    as teacher forcing appends it; only this answer has labels. Strategies with several prompt rows (batch
    parallel decoding) train row 0, as for a single turn."""
    from omnivox.core.kernel.strategies.base import teacher_forcing

    format = format or ConversationFormat()
    prompt, features, target = _turn(example, tokenizer, strategy, layout, feature_dim, load_features)
    rows = prompt.ids.shape[0]
    turns = []
    for n, past in enumerate(example.history, 1):
        if past.task not in strategy.tasks:
            raise InputError(f"{example.source}: history line {past.id!r} ({past.source}) is a {past.task} turn, "
                             f"which strategy {strategy.name} does not decode",
                             f"give this line history turns of tasks {', '.join(strategy.tasks)}")
        p, f, t = _turn(past, tokenizer, strategy, layout, feature_dim, load_features)
        answer = fed_answer(strategy, layout, past, t, rows)  # (rows, S, columns)
        if n == len(example.history) and example.history_cut is not None:  # cut by a barge-in: what was played
            answer = answer[..., :max(1, round(answer.shape[-1] * example.history_cut))]
        turns.append(TurnRecord(p, f, answer, answer.shape[-1], past.task, past.id))
    context = []
    if example.context:
        context = [int(t) for t in tokenizer.encode(format.context_text(example.context))]
        bad = [t for t in context if not 0 <= t < layout.eot]
        if bad:
            raise InputError(f"{example.source}: context encodes to ids {bad[:5]} outside the text vocabulary "
                             f"0..{layout.eot - 1}", "use the model's tokenizer")
    whole, features = format.render(layout, context, turns, prompt, features)
    input_ids, labels = teacher_forcing(whole.ids[0], target)  # (S, L) each
    if input_ids.shape[-1] > block_size:
        what = "question audio and answer" if example.audio_in or example.audio_out else "question and answer"
        if turns or context:
            what = f"context, {len(turns)} history turn(s), {what}"
        raise InputError(f"{example.source}: the {what} need {input_ids.shape[-1]} positions but the model's "
                         f"context is {block_size}", "use shorter audio/text for this example, or a model with a "
                         "larger block_size")
    spans = [tuple(span) for span in whole.audio_spans[0]] if whole.audio_spans else []
    loaded = features[0] if features is not None and load_features else None  # (Ta, F)
    return TrainSequence(input_ids, labels, loaded, example.source, spans)


def _turn(example: Example, tokenizer, strategy, layout: TokenLayout, feature_dim: int,
          load_features: bool) -> tuple[Prompt, torch.Tensor | None, Target]:
    """One line's own prompt (rows, S, T), features (rows, Ta, F; F = 0 without `load_features`) and target."""
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
        features = example.features() if load_features else torch.zeros(n_frames, 0)  # (Ta, F)
        prompt = strategy.prompt(layout, example.task, n_frames=n_frames)
        features = features.unsqueeze(0).expand(prompt.ids.shape[0], -1, -1)  # (rows, Ta, F)
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
    return prompt, features, strategy.layout_target(layout, answer_ids, frames, example.task)


def fed_answer(strategy, layout: TokenLayout, example: Example, target: Target, rows: int) -> torch.Tensor:
    """(rows, S, L - 1): what a conversation records as the answer of a turn whose generated ids are `target`
    (S, L): the strategy's step rule applied to each target column (as TurnDecoder.advance does), each appended
    column as `rule.feed` feeds it back; the last column must be the one that stops the turn (it is never
    fed), as for every built-in strategy's layout (eoa of the last audio stream, or eot)."""
    rule = strategy.step_rule(layout, example.task)
    columns = target.ids.T.tolist()  # L columns of S ids
    fed = []
    for j, column in enumerate(columns):
        appended = rule.apply(j, column[:layout.audio_streams] if rule.audio_output else None, column[-1])
        if appended is None:
            break
        fed.append(rule.feed(appended))  # (rows, S, 1)
    if len(fed) != len(columns) - 1:
        raise InputError(f"{example.source}: as a history turn, strategy {strategy.name}'s step rule stops this "
                         f"answer after {len(fed)} of its {len(columns)} columns, not on its last",
                         "train conversations with a strategy whose step rule stops on the last column of its "
                         "layout_target (text-delay, parallel, batch-parallel)")
    answer = torch.cat(fed, dim=-1) if fed else torch.empty(rows, layout.n_streams, 0, dtype=torch.long)
    if answer.shape[0] != rows:
        raise InputError(f"{example.source}: strategy {strategy.name} feeds {answer.shape[0]} row(s) but its "
                         f"prompt has {rows}", "use a strategy whose step rule feeds its prompt's rows")
    return answer


def collate(sequences: Sequence[TrainSequence], layout: TokenLayout) -> Batch:
    """Right-pad to the longest sequence: inputs with each stream's pad id, labels with IGNORE; each row's
    features (every audio turn's, in order) are zero-padded to the longest, with the row's spans."""
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
    return Batch(input_ids, labels, features, lengths, [list(s.audio_spans) for s in sequences])


def corrupt_audio(batch: Batch, layout: TokenLayout, share: float, generator: torch.Generator) -> None:
    """Training noise, in place: each fed audio code (answers' and history's; specials and padding untouched)
    becomes a uniformly random code with probability `share`. Labels are kept, so the model learns to speak the
    next code from the text and the question even after a wrong code of its own (free-running speech drifts
    otherwise)."""
    audio = batch.input_ids[:, : layout.audio_streams]  # (B, A, L) view
    codes = audio < layout.codebook_size
    hit = codes & (torch.rand(audio.shape, generator=generator) < share)
    noise = torch.randint(0, layout.codebook_size, audio.shape, generator=generator)
    audio[hit] = noise[hit]
