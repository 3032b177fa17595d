"""Generation API: `generate` (whole answer) and `stream` (events as soon as they exist) over any strategy, and
the one turn decoder that they and core/kernel/batching.py's BatchEngine decode with.

    prepare(model, **stream kwargs) ──► TurnSetup (checked arguments) ──► TurnDecoder(setup, state=None)
    prefill(): the prompt's forward ──► advance(out): sample, append the column, TextPiece / FramePiece, stop?
    each step: the forward of the column fed back ──► advance(out)     (alone: `step()`; batched: BatchEngine)
    finish(reason) ──► Done(GenerationResult); the DecodeState (KV cache + positions) outlives the turn
    streaming input: EarlyPrefill.extend(frames so far) while the audio arrives ──► TurnDecoder(..., early=)
    whose prefill feeds only the rest of the prompt

One KV-cached prefill, then one forward per step of the single new column; only the head rows the step
samples: the last position (`last_only`), the text row's text logits and the audio row's audio logits
(batch parallel decoding: row 1 and row 0; text-output tasks: no audio), and no text logits once the text
stream is finished and its pad is forced (greedy decoding, whose samples use no random numbers: a seeded
sampler keeps drawing as upstream does). One host sync per step, no autograd (`torch.inference_mode`
around each forward, never held across a `yield`).

Stop reasons: "eoa" (last audio stream emitted eoa), "eot" (text-output task emitted eot), "max_steps",
"context" (the next position would exceed block_size), "cancelled"."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from omnivox.core.errors import InputError
from omnivox.core.kernel.model import OmniCache, OmniLM, OmniOutput
from omnivox.core.kernel.sampling import SamplingConfig, sample
from omnivox.core.kernel.strategies import DecodingStrategy, StepRule, declared_strategy, get_strategy
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, Prompt

STOP_REASONS = ("eoa", "eot", "max_steps", "context", "cancelled")


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (S, L) every generated column as appended and fed back (text last), incl. pads
    text_ids: list[int]  # answer text: text stream before the first eot, specials dropped
    frames: torch.Tensor  # (N, A) long: complete codec frames in slot order
    stop_reason: str  # one of STOP_REASONS
    task: str
    strategy: str
    audio_output: bool

    @property
    def steps(self) -> int:
        return self.tokens.shape[-1]

    @property
    def text_tokens(self) -> list[int]:
        """The raw text stream (upstream's last list; for text-output tasks upstream's whole output)."""
        return self.tokens[-1].tolist()

    @property
    def audio_tokens(self) -> list[list[int]] | None:
        """Raw per-stream audio tokens (upstream's first A lists); None for text-output tasks."""
        return self.tokens[:-1].tolist() if self.audio_output else None


@dataclass(frozen=True)
class TextPiece:
    step: int  # answer column (0 = the prefill's step)
    token: int  # a text id (< eot), before the first eot


@dataclass(frozen=True)
class FramePiece:
    step: int  # column whose sampling completed the frame
    index: int  # frame number k
    codes: tuple[int, ...]  # one code per audio stream, slot order


@dataclass(frozen=True)
class Done:
    result: GenerationResult


Piece = TextPiece | FramePiece
Event = TextPiece | FramePiece | Done


def generate(
    model,
    *,
    task: str,
    audio_features: torch.Tensor | None = None,
    text_ids: Sequence[int] | str | None = None,
    strategy: str | DecodingStrategy | None = None,
    sampling: SamplingConfig | None = None,
    max_steps: int | None = None,
    force_layout: bool = False,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> GenerationResult:
    """Generate one answer. `model`: OmniModel or OmniLM. Audio-in tasks (A1A2, A1T2, A1T1) take
    `audio_features` (frames, F) or (1, frames, F); text-in tasks (T1A2, T1T2) take `text_ids` (or a string
    when the model has a tokenizer). `max_steps` bounds the generated columns (upstream's
    max_returned_tokens - prompt length); default: until the context is full. `strategy` None: the one the model
    declares (its config's `decoding`; text-delay when it declares none or that one cannot decode `task`)."""
    events = stream(
        model,
        task=task,
        audio_features=audio_features,
        text_ids=text_ids,
        strategy=strategy,
        sampling=sampling,
        max_steps=max_steps,
        force_layout=force_layout,
        cancel=cancel,
    )
    return deque(events, maxlen=1)[0].result  # the last event is always Done


def stream(
    model,
    *,
    task: str,
    audio_features: torch.Tensor | None = None,
    text_ids: Sequence[int] | str | None = None,
    strategy: str | DecodingStrategy | None = None,
    sampling: SamplingConfig | None = None,
    max_steps: int | None = None,
    force_layout: bool = False,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Iterator[Event]:
    """Like `generate`, as an iterator: a TextPiece as soon as a text id is sampled, a FramePiece as soon as
    all slots of a frame exist, then Done(result). `cancel` (Event or callable) is checked before every
    forward; a cancelled turn ends with Done(stop_reason="cancelled"). Bad input raises here, eagerly."""
    setup = prepare(model, task=task, audio_features=audio_features, text_ids=text_ids, strategy=strategy,
                    sampling=sampling, max_steps=max_steps, force_layout=force_layout, cancel=cancel)
    return TurnDecoder(setup).run()


def prepare(model, *, task: str, audio_features=None, text_ids=None,
            strategy: str | DecodingStrategy | None = None, sampling: SamplingConfig | None = None,
            max_steps: int | None = None, force_layout: bool = False, cancel=None) -> TurnSetup:
    """`stream`'s arguments checked and resolved (bad input raises here): a TurnDecoder's setup."""
    lm = model.lm if hasattr(model, "lm") else model
    if not isinstance(lm, OmniLM):
        raise InputError(
            f"model is a {type(model).__name__}, not an OmniModel or OmniLM",
            "load one with omnivox.OmniModel.from_pretrained",
        )
    strat = declared_strategy(model, task) if strategy is None else get_strategy(strategy)
    strat.check_task(task)
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise InputError(
            f"max_steps must be a positive integer or None, got {max_steps!r}",
            "pass the largest number of answer steps to generate",
        )
    prompt, features = _build_prompt(lm, getattr(model, "tokenizer", None), strat, task, audio_features, text_ids)
    if prompt.length > lm.config.block_size:
        raise InputError(
            f"the prompt has {prompt.length} positions but the model's context is {lm.config.block_size}",
            "shorten the audio or text input",
        )
    rule = strat.step_rule(lm.layout, task, force_layout)
    return TurnSetup(lm, strat, rule, prompt, features, task, sampling or SamplingConfig(), max_steps,
                     _cancel_check(cancel))


def _build_prompt(
    lm: OmniLM, tokenizer, strat: DecodingStrategy, task: str, audio_features, text_ids
) -> tuple[Prompt, torch.Tensor | None]:
    layout = lm.layout
    if task in AUDIO_IN_TASKS:
        if text_ids is not None:
            raise InputError(
                f"task {task} takes audio, but text_ids were given",
                "pass audio_features, or use a text-in task (T1A2, T1T2)",
            )
        features = _check_features(lm, audio_features, task)
        prompt = strat.prompt(layout, task, n_frames=features.shape[1])
        return prompt, features.expand(prompt.ids.shape[0], -1, -1)
    if audio_features is not None:
        raise InputError(
            f"task {task} takes text, but audio_features were given",
            "pass text_ids, or use an audio-in task (A1A2, A1T2, A1T1)",
        )
    if text_ids is None:
        raise InputError(f"task {task} takes text, but no text_ids were given", "pass text_ids (or a string)")
    if isinstance(text_ids, str):
        if tokenizer is None:
            raise InputError(
                "text was given as a string, but the model has no tokenizer",
                "pass token ids, or load the model with its tokenizer.json",
            )
        text_ids = tokenizer.encode(text_ids)
    return strat.prompt(layout, task, text_ids=text_ids), None


def _check_features(lm: OmniLM, features, task: str) -> torch.Tensor:
    width = lm.config.whisper_adapter_dim
    if features is None:
        raise InputError(
            f"task {task} takes audio, but no audio_features were given",
            f"pass the encoder's features as a (frames, {width}) tensor",
        )
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise InputError(
            f"audio_features must be a float tensor, got {type(features).__name__}",
            f"pass the encoder's features as a (frames, {width}) float tensor",
        )
    if features.dim() == 2:
        features = features.unsqueeze(0)
    if features.dim() != 3 or features.shape[0] != 1 or features.shape[-1] != width:
        raise InputError(
            f"audio features have shape {tuple(features.shape)}, expected (frames, {width}) or (1, frames, {width})",
            f"use the encoder the model was trained with (whisper_adapter_dim = {width})",
        )
    if features.shape[1] < 1:
        raise InputError("the audio features have 0 frames (empty prompt)", "pass non-empty audio")
    return features.to(lm.device)


def _check_continues(state: DecodeState, setup: TurnSetup) -> None:
    """A turn can continue `state`: its cache is here, has the turn's rows, and leaves room for the prompt."""
    if state.cache is None:
        raise InputError("the decode state holds no cache (a BatchEngine holds its rows, or a batched step failed)",
                         "continue a state only after its turn's Done; after an error start a fresh one")
    rows = setup.prompt.ids.shape[0]
    if state.rows is not None and state.rows != rows:
        raise InputError(f"the decode state holds {state.rows} rows but this turn's prompt has {rows} "
                         f"({setup.strategy.name})",
                         "continue a state with the strategy that made it (a conversation keeps one strategy)")
    block = setup.lm.config.block_size
    if state.length + setup.prompt.length > block:
        raise InputError(f"the history ({state.length} positions) and the prompt ({setup.prompt.length}) exceed "
                         f"the model's context of {block}",
                         "drop old turns (a Conversation does) or start a fresh state")


def _cancel_check(cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise InputError(
        f"cancel must be a threading.Event or a callable, got {type(cancel).__name__}",
        "pass threading.Event() and set it to stop the turn",
    )


@dataclass(frozen=True)
class TurnSetup:
    """One turn's checked and resolved arguments (`prepare`); decoded once (its step rule keeps the turn's state)."""

    lm: OmniLM
    strategy: DecodingStrategy
    rule: StepRule
    prompt: Prompt
    features: torch.Tensor | None  # (rows, frames, F) audio features of an audio-in task
    task: str
    sampling: SamplingConfig
    max_steps: int | None
    cancelled: Callable[[], bool]


@dataclass
class DecodeState:
    """The KV cache of a turn's rows and the positions they have seen, apart from the turn so that it outlives it.

    `TurnDecoder(setup)` starts a fresh state (position 0); `TurnDecoder(setup, state)` continues one: its
    prompt follows the state's positions (a conversation's history, core/kernel/conversation.py). After `finish`
    the state also holds the turn's positions: prompt + the columns fed back (all appended columns when the turn
    stopped on eoa/eot; all but the last after max_steps, context or a cancel). `cache` is None while a
    BatchEngine holds the rows in its batch cache (it hands them back when the turn ends) and after a failed
    batched step; `length` always counts the positions. A text-output turn decoded alone on a post-adapter model
    skips the post-adapter (upstream's cost), so `cache.post` misses that turn's positions, unless its decoder
    was made with `fill_post_cache` (conversations do; a BatchEngine always fills it)."""

    cache: OmniCache | None
    length: int = 0

    @property
    def rows(self) -> int | None:
        """Batch rows the cache holds (2 for batch parallel decoding); None while it holds none."""
        if self.cache is None or not self.cache.backbone.layers or not self.cache.backbone.layers[0].is_initialized:
            return None
        return self.cache.backbone.layers[0].keys.shape[0]


class TurnDecoder:
    """Decodes one turn: `prefill`, then one `advance` per forward until `reason` is set, then `finish`.

    `advance(out)` samples the rows of `head_rows` from the logits of the forward that fed the turn, appends the
    column (`rule.apply`) and returns its TextPiece / FramePiece; when the turn stops it sets `reason` and feeds
    nothing more. Alone, `step` runs that forward on the state's own cache (`run` is `stream`'s loop); in a
    BatchEngine one forward (`OmniLM.step`) serves every turn's `next_ids`. `done` holds the turn's Done once
    finished, `error` the exception that ended it otherwise (set by `run` and by a BatchEngine).
    `fill_post_cache`: a post-adapter runs at every forward even when the turn samples no audio, so that the
    state's `cache.post` holds every position (a conversation continues it)."""

    def __init__(self, setup: TurnSetup, state: DecodeState | None = None, fill_post_cache: bool = False,
                 early: EarlyPrefill | None = None):
        self.setup = setup
        self.lm, self.rule, self.sampling = setup.lm, setup.rule, setup.sampling
        if state is not None:
            _check_continues(state, setup)
        # the prompt's first positions, prefilled while the audio arrived (on a copy of `state`'s cache, when given):
        # `prefill` continues it when it is usable, else `state` (or a fresh one)
        self.early = early
        self.skipped = 0  # positions of the prompt the early prefill had done (set by `prefill`)
        self.state = state if state is not None else early.state if early is not None else DecodeState(
            setup.lm.new_cache())
        self._fallback = state
        self.fill_post_cache = fill_post_cache
        self.done: Done | None = None
        self.error: BaseException | None = None
        self.generator = setup.sampling.generator(self.lm.device)
        self.delay = max(setup.strategy.delays(self.lm.layout))
        self.columns: list[list[int]] = []
        self.text_open, self.frames_open, self.n_frames = True, self.rule.audio_output, 0
        self.next_ids: torch.Tensor | None = None  # (rows, S, 1) the column fed back at the next forward
        self.reason: str | None = None  # why the turn stopped (STOP_REASONS); None while it decodes

    @property
    def rows(self) -> int:
        return self.setup.prompt.ids.shape[0]

    def cancelled(self) -> bool:
        return self.setup.cancelled()

    def head_rows(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(text rows, audio rows) whose logits the next forward computes: the text row's text logits (none once
        the text pad is forced and sampling is greedy) and the audio row's audio logits (none for text output)."""
        rule = self.rule
        text = () if rule.text_end and self.sampling.greedy else (rule.text_row,)
        return text, (rule.audio_row,) if rule.audio_output else ()

    def run(self) -> Iterator[Event]:
        """Decodes the turn alone (a batch of one): `prefill`, then `step` until it stops or is cancelled
        (checked before every forward); Done last. A caller that stops reading ends the turn as "cancelled"."""
        try:
            first = True
            while self.reason is None and not self.cancelled():
                yield from self.prefill(self.fill_post_cache) if first else self.step()
                first = False
            yield self.finish(self.reason or "cancelled")
        except GeneratorExit:
            if self.done is None:
                self.finish("cancelled")
            raise
        except BaseException as error:
            self.error = error
            raise

    def prefill(self, fill_post_cache: bool = False) -> list[Piece]:
        """The prompt's forward on the state's cache (after its positions), then `advance`: column 0's pieces.
        `fill_post_cache`: run a post-adapter over the prompt even when the turn samples no audio (a batch runs
        it on every row at every step, so each row's post-adapter cache must hold its prompt)."""
        lm, prompt = self.lm, self.setup.prompt
        text_rows, audio_rows = self.head_rows()
        if fill_post_cache and lm.config.post_adapter:
            audio_rows = (self.rule.audio_row,)
        ids, features, lengths, spans = prompt.ids, self.setup.features, prompt.audio_lengths, prompt.audio_spans
        frames = self.early.usable(self.setup) if self.early is not None else 0
        if frames:  # the early prefill holds positions 0..frames: the rest of the prompt follows them
            self.state, self.skipped = self.early.state, 1 + frames
            ids, features, lengths = ids[..., self.skipped:], features[:, frames:], None
            spans = tuple(((0, features.shape[1]),) for _ in range(ids.shape[0]))
        elif self.early is not None:  # nothing usable: the state given, or a fresh one
            self.state = self._fallback if self._fallback is not None else DecodeState(lm.new_cache())
        with torch.inference_mode():
            out = lm(ids.to(lm.device), features, lengths, cache=self.state.cache, last_only=True,
                     text_rows=text_rows, audio_rows=audio_rows, audio_spans=spans)
            return self.advance(out)

    def step(self) -> list[Piece]:
        """Alone: the forward of `next_ids` on the state's own cache, then `advance`."""
        text_rows, audio_rows = self.head_rows()
        if self.fill_post_cache and self.lm.config.post_adapter:
            audio_rows = (self.rule.audio_row,)  # runs the post-adapter (its logits go unused by a text turn)
        with torch.inference_mode():
            out = self.lm(self.next_ids, cache=self.state.cache, last_only=True, text_rows=text_rows,
                          audio_rows=audio_rows)
            return self.advance(out)

    def advance(self, out: OmniOutput) -> list[Piece]:
        """Samples `out` (the logits of `head_rows` at the last position of the forward that fed this turn), appends
        the column and returns its pieces; sets `reason` when the turn stops, else `next_ids`."""
        # one column fed, or the prompt (less what an early prefill had put there)
        self.state.length += 1 if self.columns else self.setup.prompt.length - self.skipped
        audio, text = self._sample(out)
        column = self.rule.apply(len(self.columns), audio, text)
        if column is None:
            self.reason = self.rule.stop_reason
            return []
        self.columns.append(column)
        step, layout, pieces = len(self.columns) - 1, self.lm.layout, []
        if self.text_open:
            if column[-1] == layout.eot:
                self.text_open = False
            elif column[-1] < layout.eot:
                pieces.append(TextPiece(step, column[-1]))
        if self.frames_open and step >= self.delay + self.n_frames:
            codes = self.setup.strategy.complete_frame(layout, self.columns, self.n_frames)
            if codes is None:
                self.frames_open = False
            else:
                pieces.append(FramePiece(step, self.n_frames, codes))
                self.n_frames += 1
        if self.setup.max_steps is not None and len(self.columns) >= self.setup.max_steps:
            self.reason = "max_steps"
        elif self.state.length >= self.lm.config.block_size:
            self.reason = "context"
        else:
            self.next_ids = self.rule.feed(column).to(self.lm.device)
        return pieces

    def finish(self, reason: str) -> Done:
        """Ends the turn for `reason` (the stop `advance` detected, or e.g. "cancelled"): Done with the result.
        The state stays behind with the turn's positions."""
        self.reason = reason
        setup, layout = self.setup, self.lm.layout
        grid = (torch.tensor(self.columns, dtype=torch.long).T if self.columns
                else torch.empty(layout.n_streams, 0, dtype=torch.long))  # (S, steps)
        text_ids, frames = setup.strategy.extract(layout, grid)
        self.done = Done(GenerationResult(grid, text_ids, frames, reason, setup.task, setup.strategy.name,
                                          self.rule.audio_output))
        return self.done

    def _sample(self, out: OmniOutput) -> tuple[list[int] | None, int]:
        """Ids of the last position (the forward computed only the text row's text logits and the audio row's audio
        logits): (A audio ids or None, text id; pad_t when the text logits were skipped, as the rule forces)."""
        rule, sampling, generator = self.rule, self.sampling, self.generator
        if not rule.audio_output:
            return None, int(sample(out.text_logits[0, -1:], sampling, generator).item())
        parts = [sample(out.audio_logits[0, :, -1], sampling, generator)]  # (A,) from (A, Va)
        if out.text_logits is not None:
            parts.append(sample(out.text_logits[0, -1:], sampling, generator))  # (1,) from (1, Vt)
        ids = torch.cat(parts).tolist()
        return ids[: rule.layout.audio_streams], ids[-1] if out.text_logits is not None else rule.layout.pad_t


class EarlyPrefill:
    """An audio-in turn's prompt prefilled while its audio still arrives (streaming input, core/chunked_encoder.py).

        EarlyPrefill(model, task=, strategy=, base=) ──► extend(features (n, F)) per FeaturesPart: the prompt's
        next positions (the input marker first, then one per frame) into a fresh DecodeState, or into a copy of
        `base` (a conversation's history: its cache is copied when this is made, and never written)
        TurnDecoder(setup, base, early=it) ──► its prefill checks the frames are the first ones of the turn's
        features and feeds only the rest of the prompt (the last frames, eoa, the answer markers)

    An audio prompt's first 1 + f positions do not depend on its length T (core/kernel/tokens.py audio_prompt), and
    the LM is causal, so prefilling them early gives the keys and values of one whole prefill (the same greedy
    tokens, tests/test_stream_input.py). A failed extend leaves it unusable: the turn prefills whole."""

    def __init__(self, model, *, task: str, strategy: str | DecodingStrategy, base: DecodeState | None = None):
        self.lm: OmniLM = model.lm if hasattr(model, "lm") else model
        self.strategy = get_strategy(strategy)
        self.strategy.check_task(task)
        if task not in AUDIO_IN_TASKS:
            raise InputError(f"task {task} takes text: nothing to prefill while audio arrives",
                             "prefill early only audio-in turns (A1A2, A1T2, A1T1)")
        self.task = task
        self.base = base  # the state the turn would continue (None: a fresh one)
        self.start = base.length if base is not None else 0  # positions before the turn's prompt
        self.state = DecodeState(_copied(base.cache, self.lm), base.length) if base is not None else DecodeState(
            self.lm.new_cache())
        self.parts: list[torch.Tensor] = []  # (n, F) each, in order
        self.frames = 0
        self.failed: BaseException | None = None
        rule = self.strategy.step_rule(self.lm.layout, task, False)
        # the post-adapter's cache must hold every position too (TurnDecoder's fill_post_cache)
        self._audio_rows = (rule.audio_row,) if self.lm.config.post_adapter else ()

    def extend(self, features: torch.Tensor) -> None:
        """Prefills the next `features` (n, F) frames (runs the LM: call it where the model's forwards run)."""
        if self.failed is not None:
            return
        try:
            features = _check_features(self.lm, features, self.task)  # (1, n, F)
            n, done = features.shape[1], self.state.length - self.start  # done: the prompt's positions so far
            prompt = self.strategy.prompt(self.lm.layout, self.task, n_frames=self.frames + n)
            ids = prompt.ids[..., done:1 + self.frames + n]  # (rows, S, positions): the marker first, then frames
            if self.state.length + ids.shape[-1] + 3 > self.lm.config.block_size:
                raise InputError("the audio so far fills the model's context", "ask a shorter question")
            rows = ids.shape[0]
            spans = tuple(((1 if done == 0 else 0, n),) for _ in range(rows))
            with torch.inference_mode():
                self.lm(ids.to(self.lm.device), features.expand(rows, -1, -1), cache=self.state.cache,
                        last_only=True, text_rows=(), audio_rows=self._audio_rows, audio_spans=spans)
            self.state.length += ids.shape[-1]
            self.frames += n
            self.parts.append(features[0].detach())
        except Exception as error:  # noqa: BLE001 - the turn then prefills whole
            self.failed = error

    def usable(self, setup: TurnSetup) -> int:
        """Frames prefilled that `setup` (the turn as finally asked) starts with: 0 when none, or when the task,
        the strategy or the frames differ (the turn then prefills whole, on the state it was given or a fresh one)."""
        if self.failed is not None or not self.frames or setup.task != self.task or (
                setup.strategy.name != self.strategy.name) or setup.features is None:
            return 0
        if setup.features.shape[1] <= self.frames:
            return 0
        early = torch.cat(self.parts).to(setup.features)
        return self.frames if torch.equal(early, setup.features[0, :self.frames]) else 0


def _copied(cache: OmniCache | None, lm: OmniLM) -> OmniCache:
    """A copy of `cache` (every layer's keys and values), so that extending it leaves the original as it was."""
    if cache is None:
        raise InputError("the decode state to continue holds no cache (its turn still decodes)",
                         "prefill early only once the previous turn has ended")
    copy = lm.new_cache()
    copy.length = cache.length
    for theirs, mine in ((cache.backbone, copy.backbone), (cache.post, copy.post)):
        for layer, own in zip(theirs.layers if theirs is not None else (), mine.layers if mine is not None else (),
                              strict=True):
            if layer.is_initialized:
                own.lazy_initialization(layer.keys, layer.values)
                own.keys, own.values = layer.keys.clone(), layer.values.clone()
    return copy
