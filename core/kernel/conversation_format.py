"""How a model lays a conversation out as prompt ids: the `ConversationFormat` it declares in its config.

    [context segment] [turn 1: its prompt, its answer columns as fed] ... [turn n: its prompt] ──► turn n's answer
    context segment (rows, S, n + 2): text [context_t, context ids..., eot], every audio stream pad_a
    result segment  (rows, S, n + 2): text [result_t, ids of a device's action result..., eot], audio pad_a; it
                    enters the history just before the turn that follows the result (Conversation.add_result)

`context_t` is the text special `eot + context_token` (default 5, the first special Mini-Omni leaves unused),
`result_t` is `eot + result_token` (default 6). A
turn's answer columns "as fed" are the ids each column fed back to the model (`StepRule.feed`; a batch parallel
turn is kept as its row 0 fed it, in both rows), i.e. what the KV cache holds; the column that stopped the turn
(eoa/eot) is never appended, and the last column of a turn cut by its step budget or a cancel is never fed.

A model declares its format in its config (`conversation:` in model_config.yaml / config.yaml, a mapping of the
fields below); one that declares nothing gets the defaults: whole turns concatenated, `memory: false`. Mini-Omni
checkpoints declare nothing (they were trained on single turns), so memory is opt-in for them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from omnivox.core.errors import ConfigError
from omnivox.core.kernel.spoken_numbers import spell_numbers
from omnivox.core.kernel.tokens import Prompt, TokenLayout

HISTORY_LAYOUTS = ("concat",)
CONTEXT_NUMBERS = ("as-is", "words")
RESERVED_SPECIALS = 5  # eot, pad_t, input_t, answer_t, asr (eot + 0..4)
SPECIALS = 64


@dataclass(frozen=True)
class TurnRecord:
    """One past turn as the cache holds it: its own prompt (no context, no history) and the answer ids fed after it."""

    prompt: Prompt  # ids (rows, S, T)
    features: torch.Tensor | None  # (rows, frames, F) the turn's audio features (audio-in tasks)
    answer: torch.Tensor  # (rows, S, n) the ids fed back after the prompt, column by column
    columns: int  # answer columns the turn appended (n, or n + 1 when its last one was never fed)
    task: str
    turn_id: Any = None  # the caller's label of the turn (LMStage: the event's turn_id)

    @property
    def length(self) -> int:
        return self.prompt.length + self.answer.shape[-1]


@dataclass(frozen=True)
class ConversationFormat:
    """A model's declared conversation layout (see the module docstring)."""

    history: str = "concat"  # past turns: each turn's prompt, then its answer columns as fed
    memory: bool = False  # trained on conversations: an LM stage given `memory: null` keeps memory
    context_token: int = 5  # context segment opener: the text special eot + context_token
    result_token: int = 6  # action result segment opener: the text special eot + result_token
    answer_reserve: int | None = None  # positions a turn keeps free for its answer (at most its max_steps); None:
    # its max_steps. A model whose answers are short declares it, so a large max_steps does not push out the history
    context_numbers: str = "as-is"  # "words": numbers in context text are spelled out before tokenizing
    # ("battery: 45%" -> "battery: forty five percent"), for models trained on words (the demo model)

    @classmethod
    def from_dict(cls, data: Any, source: str = "conversation") -> ConversationFormat:
        """The format from a config mapping; unknown fields or bad values raise a ConfigError naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}",
                              "write e.g. `conversation: {memory: true}`")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}",
                              f"remove them; valid fields: {', '.join(sorted(known))}")
        fmt = cls(**data)
        if fmt.history not in HISTORY_LAYOUTS:
            raise ConfigError(f"{source}: history {fmt.history!r} is unknown",
                              f"use one of: {', '.join(HISTORY_LAYOUTS)}")
        if not isinstance(fmt.memory, bool):
            raise ConfigError(f"{source}: memory should be true or false, got {fmt.memory!r}", "write memory: true")
        for key in ("context_token", "result_token"):
            token = getattr(fmt, key)
            if isinstance(token, bool) or not isinstance(token, int) or not RESERVED_SPECIALS <= token < SPECIALS:
                raise ConfigError(f"{source}: {key} {token!r} is not a free text special",
                                  f"use an integer {RESERVED_SPECIALS}..{SPECIALS - 1} (0..4 are eot, pad_t, "
                                  "input_t, answer_t, asr)")
        reserve = fmt.answer_reserve
        if reserve is not None and (isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 1):
            raise ConfigError(f"{source}: answer_reserve {reserve!r} is not a positive number of positions",
                              "give the longest answer in LM steps, e.g. answer_reserve: 160, or leave it out")
        if fmt.context_numbers not in CONTEXT_NUMBERS:
            raise ConfigError(f"{source}: context_numbers {fmt.context_numbers!r} is unknown",
                              f"use one of: {', '.join(CONTEXT_NUMBERS)}")
        if fmt.context_token == fmt.result_token:
            raise ConfigError(f"{source}: context_token and result_token are both {fmt.context_token}",
                              "give them two different specials, e.g. 5 and 6")
        return fmt

    @classmethod
    def of(cls, model) -> ConversationFormat:
        """The format `model` (OmniModel or OmniLM) declares, or the default."""
        lm = model.lm if hasattr(model, "lm") else model
        declared = getattr(lm.config, "conversation", None)
        return cls() if declared is None else cls.from_dict(declared, "model config: field 'conversation'")

    def context_text(self, text: str) -> str:
        """Context text as the model reads it (numbers in words when the model declares `context_numbers: words`)."""
        return spell_numbers(text) if self.context_numbers == "words" else text

    def context_segment(self, layout: TokenLayout, context_ids: list[int], rows: int) -> torch.Tensor:
        """(rows, S, n + 2) the context segment; (rows, S, 0) for no context."""
        return self.segment(layout, self.context_token, context_ids, rows)

    def result_segment(self, layout: TokenLayout, ids: list[int], rows: int) -> torch.Tensor:
        """(rows, S, n + 2) a device's action result (the ids of ActionFormat.render_result) as the history holds it."""
        return self.segment(layout, self.result_token, ids, rows)

    @staticmethod
    def segment(layout: TokenLayout, opener: int, ids: list[int], rows: int) -> torch.Tensor:
        """(rows, S, n + 2): text [eot + opener, ids..., eot], every audio stream pad_a; (rows, S, 0) for no ids."""
        if not ids:
            return torch.empty(rows, layout.n_streams, 0, dtype=torch.long)
        text = [layout.eot + opener, *ids, layout.eot]
        segment = torch.tensor([[layout.pad_a] * len(text)] * layout.audio_streams + [text])  # (S, n + 2)
        return segment.unsqueeze(0).expand(rows, -1, -1)

    def render(self, layout: TokenLayout, context_ids: list[int], turns: list[TurnRecord], prompt: Prompt,
               features: torch.Tensor | None) -> tuple[Prompt, torch.Tensor | None]:
        """The whole conversation as one prompt: context segment, the past turns, then `prompt` (the new turn's
        own, with its `features` (rows, frames, F)). Returns the prompt (audio at `audio_spans`) and its features
        (rows, frames of every audio turn, F), or None without audio."""
        rows = prompt.ids.shape[0]
        parts = [self.context_segment(layout, context_ids, rows)]
        feats, spans, at = [], [], parts[0].shape[-1]
        for turn_ids, turn_feats, answer in [(t.prompt, t.features, t.answer) for t in turns] + [
                (prompt, features, None)]:
            if turn_feats is not None:
                feats.append(turn_feats)
                spans.append((at + 1, turn_feats.shape[1]))  # audio prompts hold their frames at 1..frames
            parts.append(turn_ids.ids)
            at += turn_ids.length
            if answer is not None:
                parts.append(answer)
                at += answer.shape[-1]
        ids = torch.cat([p.to(prompt.ids) for p in parts], dim=-1)  # (rows, S, total)
        whole = Prompt(ids=ids, audio_lengths=None, tasks=prompt.tasks,
                       audio_spans=tuple(tuple(spans) for _ in range(rows)) if feats else None)
        return whole, torch.cat(feats, dim=1) if feats else None
