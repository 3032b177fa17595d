"""A session's conversation: the DecodeState its turns continue and the history of what each turn put there.

    Conversation(model, strategy=, context=) ──► turn(task=, audio_features= | text_ids=, ...) ──► TurnDecoder
        run it alone (`decoder.run()`) or through `BatchEngine.submit(emit, conversation=...)`; after its Done
        the next `turn` records it (its prompt and the answer columns fed back) and continues:
    continue:   the cache holds [context][turn 1]...[turn n-1] ──► only turn n's prompt is prefilled after it
    re-prefill: one fresh cache, filled by the new turn's own prefill (context segment + kept turns + its prompt,
                laid out by the model's ConversationFormat), when the context text changed, the history would not
                fit (the oldest whole turns are dropped), or the cache was lost (a failed turn, `reset`)

Context-full policy: a turn needs `history + prompt + reserve` positions within the model's block_size, `reserve`
being the turn's `max_steps` (or the conversation's `reserve` when it has none), at most the `answer_reserve` the
model's ConversationFormat declares; while it would not fit, the oldest whole turn is dropped (the context segment
always stays), and once one is, older turns keep going until the context and the kept turns take at most
`low_water` of the block (default half; this cut never takes the latest turn): the rest is prefilled once, and the
next turns continue that cache instead of each re-prefilling a full one (measured: docs/conversations.md). An
answer that outgrows its reserve stops at the end of the context (stop reason "context").
Interruption: `truncate(columns)` keeps only the answer columns of the last turn that were delivered (played or
sent); the cache is cropped to match. `reset()` drops the history and keeps the context.
Action results: `add_result(name, result)` writes a device's result (ActionFormat.render_result, as a result segment
of the model's ConversationFormat) into the history, where the next turn's prefill puts it before its own prompt.

One strategy per conversation: its rows (2 for batch parallel decoding) are those of every turn. Not thread-safe:
call it from one thread (an LMStage calls it from its event loop; the decoder itself runs in the engine's thread,
which sets the decoder's `done` or `error` before emitting the turn's end)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.conversation_format import ConversationFormat, TurnRecord
from omnivox.core.kernel.generation import DecodeState, EarlyPrefill, TurnDecoder, prepare
from omnivox.core.kernel.model import OmniCache, OmniLM
from omnivox.core.kernel.strategies import DecodingStrategy, declared_strategy, get_strategy
from omnivox.core.kernel.tokens import TASKS, Prompt


@dataclass
class _OpenTurn:
    """The turn handed out last, until it is recorded: its decoder and what the history will need of it."""

    decoder: TurnDecoder
    prompt: Prompt  # the turn's own prompt (rows, S, T)
    features: torch.Tensor | None  # (rows, frames, F)
    task: str
    turn_id: object
    start: int  # the state's positions before the turn's prefill
    cut: int | None = None  # answer columns to keep (truncate called while the turn was open)
    forget: bool = False  # leaves the history when it ends (forget called while the turn was open)


class Conversation:
    """The turns of one session as one conversation (see the module docstring). `context`: text (str, with the
    model's tokenizer) or text ids; `memory=False` keeps only the context (every turn sees the context segment
    and no earlier turn); `reserve`: positions kept free for the answer of a turn without `max_steps`;
    `low_water`: the share of the block that the context and the kept turns are cut to when turns must go;
    `strategy` (one for the whole conversation) None: the one the model declares (its config's `decoding`)."""

    def __init__(self, model, *, strategy: str | DecodingStrategy | None = None,
                 context: str | Sequence[int] | None = None, memory: bool = True, reserve: int = 64,
                 format: ConversationFormat | None = None, low_water: float = 0.5):
        self.model = model
        self.lm: OmniLM = model.lm if hasattr(model, "lm") else model
        if not isinstance(self.lm, OmniLM):
            raise InputError(f"model is a {type(model).__name__}, not an OmniModel or OmniLM",
                             "load one with omnivox.OmniModel.from_pretrained")
        if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
            raise InputError(f"reserve must be a non-negative integer, got {reserve!r}",
                             "pass the positions to keep free for an answer")
        if isinstance(low_water, bool) or not isinstance(low_water, (int, float)) or not 0 < low_water <= 1:
            raise InputError(f"low_water must be a share of the context in (0, 1], got {low_water!r}",
                             "pass e.g. 0.5 (cut the history to half the context when it is full)")
        self.strategy = declared_strategy(model) if strategy is None else get_strategy(strategy)
        self.format = format or ConversationFormat.of(model)
        self.memory, self.reserve, self.low_water = memory, reserve, low_water
        self.turns: list[TurnRecord] = []  # the kept history, oldest first
        self.state: DecodeState | None = None  # the cache the next turn continues (None: re-prefill)
        self.context_ids: list[int] = []
        self._state_context: list[int] | None = None  # the context the state's cache starts with
        self._open: _OpenTurn | None = None
        self.results: list[TurnRecord] = []  # action results waiting for the next turn (task "result")
        self.set_context(context)

    # ---- what the conversation holds ---------------------------------------------------------------
    @property
    def history(self) -> list[TurnRecord]:
        """The kept turns, oldest first (a finished last turn included)."""
        self._settle(strict=False)
        return list(self.turns)

    @property
    def decoding(self) -> bool:
        """The turn handed out last has not ended yet (neither its Done nor an error)."""
        return self._open is not None and self._open.decoder.done is None and self._open.decoder.error is None

    @property
    def last_turn_id(self) -> object:
        """The `turn_id` of the last turn (the open one, else the last kept); None without turns."""
        if self._open is not None:
            return self._open.turn_id
        return self.turns[-1].turn_id if self.turns else None

    @property
    def context_length(self) -> int:
        return len(self.context_ids) + 2 if self.context_ids else 0

    @property
    def length(self) -> int:
        """Positions of the conversation as a prompt: the context segment and every kept turn."""
        self._settle(strict=False)
        return self.context_length + sum(t.length for t in self.turns)

    def prompt(self, prompt: Prompt, features: torch.Tensor | None = None) -> tuple[Prompt, torch.Tensor | None]:
        """The whole conversation followed by `prompt` (a new turn's own, with its features) as one prompt: what a
        re-prefill feeds."""
        self._settle(strict=False)
        return self.format.render(self.lm.layout, self.context_ids, self.turns, prompt, features)

    # ---- changes ----------------------------------------------------------------------------------
    def set_context(self, context: str | Sequence[int] | None) -> None:
        """Sets the context text (None or "": none); the next turn re-prefills when it changed."""
        if context is None or (isinstance(context, str) and not context):
            self.context_ids = []
            return
        if isinstance(context, str):
            tokenizer = getattr(self.model, "tokenizer", None)
            if tokenizer is None:
                raise InputError("the context was given as text, but the model has no tokenizer",
                                 "pass the context as text ids, or load the model with its tokenizer.json")
            context = tokenizer.encode(self.format.context_text(context))
        ids = [int(t) for t in context]
        eot = self.lm.layout.eot
        bad = [t for t in ids if not 0 <= t < eot]
        if bad:
            raise InputError(f"context ids {bad[:5]} are outside the text vocabulary 0..{eot - 1}",
                             "tokenize the context with the model's tokenizer")
        self.context_ids = ids

    def reset(self) -> None:
        """Drops the history and waiting results (a turn still decoding is not kept); the context stays."""
        self.turns, self.state, self._open, self._state_context, self.results = [], None, None, None, []

    def add_result(self, name: str, result=None, *, turn_id: object = None) -> TurnRecord:
        """A device's result of action `name` (any JSON value) enters the history: its result segment (the text of
        ActionFormat.render_result, the model's format or the default) is prefilled by the next turn, before that
        turn's prompt. Returns the record (task "result")."""
        from omnivox.core.kernel.actions import ActionFormat

        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise InputError("an action result needs the model's tokenizer to enter the conversation",
                             "load the model with its tokenizer.json")
        fmt = ActionFormat.of(self.model) or ActionFormat()
        try:
            text = fmt.render_result(name, result)
        except (TypeError, ValueError) as exc:
            raise InputError(f"the result of action {name!r} is not JSON: {exc}",
                             "send a JSON value (an object such as {\"ok\": true})") from None
        ids = [int(t) for t in tokenizer.encode(text)]
        rows = 2 if self.strategy.name == "batch-parallel" else 1
        segment = self.format.result_segment(self.lm.layout, ids, rows)
        record = TurnRecord(Prompt(ids=segment, audio_lengths=None, tasks=("result",) * rows), None,
                            torch.empty(rows, self.lm.layout.n_streams, 0, dtype=torch.long), 0, "result", turn_id)
        self.results.append(record)
        return record

    def truncate(self, columns: int, turn_id: object = None) -> None:
        """The last turn keeps only its first `columns` answer columns (those delivered before an interruption);
        its later columns leave the history and the cache. While the turn decodes, this applies when it ends.
        `turn_id`, when given, must name the last turn."""
        if isinstance(columns, bool) or not isinstance(columns, int) or columns < 0:
            raise InputError(f"columns must be a non-negative integer, got {columns!r}",
                             "pass how many answer columns were delivered")
        self._settle(strict=False)
        if self._open is not None:
            last_id = self._open.turn_id
        elif self.turns:
            last_id = self.turns[-1].turn_id
        else:
            raise InputError("the conversation has no turn to truncate", "truncate after a turn was decoded")
        if turn_id is not None and turn_id != last_id:
            raise InputError(f"turn {turn_id!r} is not the conversation's last turn ({last_id!r})",
                             "only the last turn can be truncated")
        if self._open is not None:
            cut = self._open.cut
            self._open.cut = columns if cut is None else min(cut, columns)
        else:
            self._cut_last(columns)

    def forget(self, turn_id: object) -> bool:
        """Turn `turn_id` leaves the history and the cache as if it had never been asked (its question was taken
        back); while it decodes, this applies when it ends. False when it is not the last turn: nothing changes."""
        self._settle(strict=False)
        if self._open is not None:
            if self._open.turn_id != turn_id:
                return False
            self._open.forget = True
            return True
        if not self.turns or self.turns[-1].turn_id != turn_id:
            return False
        before = self.length
        self.turns.pop()
        if self.state is not None and self.state.length == before:
            self._crop(self.length)
        else:
            self.state = None  # the cache does not match the history: the next turn re-prefills
        return True

    # ---- turns ------------------------------------------------------------------------------------
    def early_prefill(self, task: str) -> EarlyPrefill | None:
        """An EarlyPrefill for the next turn (streaming input: its prompt prefilled while its audio arrives) on a
        copy of the cache as it is now; None while a turn decodes or when the next turn cannot continue the cache
        (no cache, a changed context, action results waiting): that turn prefills at its end."""
        self._settle(strict=False)
        state = self.state
        if self.decoding or self.results:
            return None
        if state is None and not self.turns and not self.context_ids:  # the first turn: nothing before its prompt
            return EarlyPrefill(self.model, task=task, strategy=self.strategy)
        if state is None or state.cache is None or state.length != self.length or (
                self._state_context != self.context_ids):
            return None
        return EarlyPrefill(self.model, task=task, strategy=self.strategy, base=state)

    def turn(self, *, task: str, audio_features=None, text_ids=None, strategy=None, sampling=None,
             max_steps: int | None = None, force_layout: bool = False, cancel=None,
             turn_id: object = None, early: EarlyPrefill | None = None) -> TurnDecoder:
        """The next turn's decoder (`generation.stream`'s arguments; `strategy`, when given, must be the
        conversation's). It continues the conversation's cache, or re-prefills it (see the module docstring).
        `early`: the turn's prompt prefilled while its audio arrived, on a copy of the cache (`early_prefill`); used
        when the turn continues the cache as it was then. The previous turn must have ended (its Done, or its
        error)."""
        self._settle(strict=True)
        if strategy is not None and get_strategy(strategy).name != self.strategy.name:
            raise InputError(f"this conversation decodes with {self.strategy.name}, not {get_strategy(strategy).name}",
                             "keep one strategy per conversation, or start a new Conversation")
        if task in TASKS and task not in self.strategy.tasks:  # an unknown task is prepare's error
            raise InputError(f"this conversation decodes with {self.strategy.name}, which cannot answer {task}",
                             f"use one of {', '.join(self.strategy.tasks)}, or start the conversation with "
                             "Conversation(model, strategy='text-delay') for text answers")
        setup = prepare(self.model, task=task, audio_features=audio_features, text_ids=text_ids,
                        strategy=self.strategy, sampling=sampling, max_steps=max_steps,
                        force_layout=force_layout, cancel=cancel)
        own, own_features, block = setup.prompt, setup.features, self.lm.config.block_size
        if self.context_length + own.length > block:
            raise InputError(f"the context ({self.context_length} positions) and the prompt ({own.length}) exceed "
                             f"the model's context of {block}", "shorten the context text or the input")
        reserve = max_steps if max_steps is not None else self.reserve
        if self.format.answer_reserve is not None:
            reserve = min(reserve, self.format.answer_reserve)
        results = self.results  # action results enter the history before this turn
        waiting = sum(r.length for r in results)
        if self.context_length + waiting + own.length > block:
            raise InputError(f"the context, {len(results)} action result(s) ({waiting} positions) and the prompt "
                             f"({own.length}) exceed the model's context of {block}",
                             "send shorter action results (or fewer)")
        self.results = []
        dropped = False
        while self.turns and (self.length + waiting + own.length + reserve > block
                              or dropped and len(self.turns) > 1 and self.length > self.low_water * block):
            self.turns.pop(0)  # context full: the oldest whole turn goes, then more down to the low-water mark
            dropped = True
        state = self.state
        if (dropped or state is None or state.cache is None or state.length != self.length
                or self._state_context != self.context_ids):
            self.turns.extend(results)
            prompt, features = self.format.render(self.lm.layout, self.context_ids, self.turns, own, setup.features)
            setup = replace(setup, prompt=prompt, features=features)
            state = self.state = DecodeState(self.lm.new_cache())
            self._state_context = list(self.context_ids)
            if early is not None and (early.base is not None or prompt.length != own.length):
                early = None  # prefilled after a history that is not the one this prompt has
        elif results:  # continue the cache: the results are prefilled with the turn's own prompt
            prompt, features = self.format.render(self.lm.layout, [], results, own, setup.features)
            setup = replace(setup, prompt=prompt, features=features)
            self.turns.extend(results)
            early = None
        if early is not None and early.base is not None and (early.base is not state or early.start != state.length):
            early = None  # the history changed since it was copied
        decoder = TurnDecoder(setup, state, fill_post_cache=True, early=early)
        self._open = _OpenTurn(decoder, own, own_features, task, turn_id, state.length)
        return decoder

    def _settle(self, strict: bool) -> None:
        """Records the open turn once it ended (Done: its prompt and fed columns join the history; an error: the
        state is dropped, the next turn re-prefills). `strict`: a turn still decoding is an error."""
        open_turn = self._open
        if open_turn is None:
            return
        decoder = open_turn.decoder
        if decoder.done is None and decoder.error is None:
            if strict:
                raise InputError("the conversation's previous turn is still decoding",
                                 "wait for its Done (cancel it to end it sooner) before the next turn")
            return
        self._open = None
        if decoder.error is not None:  # the cache may hold part of the turn, or nothing (a failed batched step)
            self.state = None
            return
        self.state = decoder.state  # the state it continued, or its early prefill's copy of it
        if open_turn.forget:  # taken back: the cache returns to where the turn began
            self._crop(open_turn.start)
            return
        prefilled = self.state.length - open_turn.start
        if prefilled <= 0:  # ended before its prefill: nothing entered the cache
            return
        fed = prefilled - decoder.setup.prompt.length
        rows, streams = open_turn.prompt.ids.shape[:2]
        answer = (torch.cat([decoder.rule.feed(c) for c in decoder.columns[:fed]], dim=-1).cpu() if fed
                  else torch.empty(rows, streams, 0, dtype=torch.long))  # (rows, S, fed)
        prompt = open_turn.prompt
        if rows > 1:  # batch parallel: every row keeps the turn as spoken (see _keep_spoken_row)
            prompt, answer = _keep_spoken_row(self.state.cache, open_turn.start, prompt, answer)
        self.turns.append(TurnRecord(prompt, open_turn.features, answer, len(decoder.columns),
                                     open_turn.task, open_turn.turn_id))
        if open_turn.cut is not None:
            self._cut_last(open_turn.cut)
        if not self.memory:  # context only: the turn leaves the history and the cache
            self.turns = []
            self._crop(self.context_length)

    def _cut_last(self, columns: int) -> None:
        last = self.turns[-1]
        removed = last.answer.shape[-1] - min(columns, last.answer.shape[-1])
        if removed:
            self.turns[-1] = replace(last, answer=last.answer[..., :columns])
            if self.state is not None and self.state.cache is not None:
                self._crop(self.state.length - removed)

    def _crop(self, length: int) -> None:
        """The state keeps its first `length` positions (its cache's keys and values are cut)."""
        state = self.state
        if state is None or state.cache is None or state.length <= length:
            return
        _crop_cache(state.cache, length)
        state.length = length


def _keep_spoken_row(cache: OmniCache, start: int, prompt: Prompt, answer: torch.Tensor
                     ) -> tuple[Prompt, torch.Tensor]:
    """A batch parallel turn's history as every row keeps it: row 0's, the turn as asked and spoken. Row 1 (the
    text twin) fed pad_a on its audio streams while row 0 spoke; a later turn's text row that saw those columns
    would read a history no training conversation has (a spoken turn is trained as spoken). The cache's positions
    from `start` (the turn's) take row 0's keys and values in every row; returns the prompt (rows, S, T) and the
    answer (rows, S, n) with row 0 in every row."""
    rows = prompt.ids.shape[0]

    def spoken(kv: torch.Tensor) -> torch.Tensor:  # (rows, H, L, Dh): row 0's positions from `start` in every row
        return torch.cat([kv[:, :, :start], kv[:1, :, start:].expand(rows, -1, -1, -1)], dim=2)

    for layer in _cache_layers(cache):
        layer.keys, layer.values = spoken(layer.keys), spoken(layer.values)
    spoken_prompt = replace(prompt, ids=prompt.ids[:1].expand(rows, -1, -1).clone(), tasks=(prompt.tasks[0],) * rows)
    return spoken_prompt, answer[:1].expand(rows, -1, -1).clone()


def _crop_cache(cache: OmniCache, length: int) -> None:
    """Every layer's keys/values (rows, H, L, Dh) keep their first `length` positions."""
    for layer in _cache_layers(cache):
        layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
    cache.length = length


def _cache_layers(cache: OmniCache):
    """The initialised layers of the backbone's and the post-adapter's caches (each with keys/values)."""
    for dynamic in (cache.backbone, cache.post):
        for layer in dynamic.layers if dynamic is not None else ():
            if layer.is_initialized:
                yield layer
