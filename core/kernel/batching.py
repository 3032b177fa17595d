"""Continuous batching: the active turns of many sessions decode in ONE forward per step.

    turn joins ──► prefill alone (own cache) ──► its rows appended to the batch cache (left-padded)
    every step:   ids (B, S, 1) of all active rows ──► one forward with per-row positions and a padding mask
                  ──► each turn samples its own rows ──► TextPiece / FramePiece / Done to that turn's `emit`
    turn ends (stop, max_steps, context, cancel) ──► its rows leave the batch cache, the others are untouched

A turn keeps its own step rule, sampler, position and stop state; a row's attention sees only its own
positions (the mask hides the left padding of rows that joined later or with a shorter prompt), so greedy
tokens are those of the same turn decoded alone by `generation.stream` (tests/test_batching.py). On a CPU a
decode step is bound by reading the weights, which the rows of one forward share.

`BatchEngine.step()` is synchronous (tests drive it step by step); `start()` runs it in one thread that
sleeps while no turn is active (core/runtime/model_stages.py LMStage owns one)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import nullcontext

import torch
from transformers.cache_utils import DynamicCache

from omnivox.core.kernel.generation import Done, Event, FramePiece, GenerationResult, TextPiece, _sample, prepare
from omnivox.core.kernel.model import OmniCache, OmniLM, OmniOutput
from omnivox.core.kernel.threads import set_threads, using_threads


class BatchTurn:
    """One turn's decoding state: `generation._decode`'s loop body, one column per `advance`."""

    def __init__(self, setup: tuple, emit: Callable[[Event], None]):
        self.lm, self.strat, self.rule, self.prompt, self.features, self.task, self.sampling, self.max_steps, \
            self.cancelled = setup
        self.emit = emit
        self.generator = self.sampling.generator(self.lm.device)
        self.delay = max(self.strat.delays(self.lm.layout))
        self.columns: list[list[int]] = []
        self.text_open, self.frames_open, self.n_frames = True, self.rule.audio_output, 0
        self.length = 0  # positions in this turn's cache
        self.next_ids: torch.Tensor | None = None  # (rows, S, 1) fed at the next step
        self.done = False

    @property
    def rows(self) -> int:
        return self.prompt.ids.shape[0]

    def head_rows(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(text rows, audio rows) whose logits the next step samples, as in `generation._decode`."""
        rule = self.rule
        text = () if rule.text_end and self.sampling.greedy else (rule.text_row,)
        return text, (rule.audio_row,) if rule.audio_output else ()

    def prefill(self) -> OmniCache:
        """The prompt's forward alone; samples and applies column 0. Returns the turn's cache."""
        lm, cache = self.lm, self.lm.new_cache()
        text_rows, audio_rows = self.head_rows()
        if lm.config.post_adapter:  # its cache must hold the prompt too, even for text-output tasks
            audio_rows = (self.rule.audio_row,)
        with torch.inference_mode():
            out = lm(self.prompt.ids.to(lm.device), self.features, self.prompt.audio_lengths, cache=cache,
                     last_only=True, text_rows=text_rows, audio_rows=audio_rows)
            if not self.rule.audio_output:
                out.audio_logits = None
            self.length = cache.length
            self.advance(out)
        return cache

    def advance(self, out: OmniOutput) -> None:
        """Samples this turn's logits, appends the column, emits its pieces; emits Done when the turn stops."""
        audio, text = _sample(out, self.rule, self.sampling, self.generator)
        column = self.rule.apply(len(self.columns), audio, text)
        if column is None:
            return self.finish(self.rule.stop_reason)
        self.columns.append(column)
        step, layout = len(self.columns) - 1, self.lm.layout
        if self.text_open:
            if column[-1] == layout.eot:
                self.text_open = False
            elif column[-1] < layout.eot:
                self.emit(TextPiece(step, column[-1]))
        if self.frames_open and step >= self.delay + self.n_frames:
            codes = self.strat.complete_frame(layout, self.columns, self.n_frames)
            if codes is None:
                self.frames_open = False
            else:
                self.emit(FramePiece(step, self.n_frames, codes))
                self.n_frames += 1
        if self.max_steps is not None and len(self.columns) >= self.max_steps:
            return self.finish("max_steps")
        if self.length >= self.lm.config.block_size:
            return self.finish("context")
        self.next_ids = self.rule.feed(column).to(self.lm.device)

    def finish(self, reason: str) -> None:
        layout = self.lm.layout
        grid = (torch.tensor(self.columns, dtype=torch.long).T if self.columns
                else torch.empty(layout.n_streams, 0, dtype=torch.long))
        text_ids, frames = self.strat.extract(layout, grid)
        self.done = True
        self.emit(Done(GenerationResult(grid, text_ids, frames, reason, self.task, self.strat.name,
                                        self.rule.audio_output)))


class BatchCache:
    """The KV caches of the active rows, left-padded to one length: per layer keys/values (B, H, L, Dh) and
    `valid` (B, L), False on padding."""

    def __init__(self, lm: OmniLM):
        self.lm = lm
        self.cache = lm.new_cache()
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=lm.device)

    def _caches(self, omni: OmniCache) -> list[DynamicCache]:
        return [omni.backbone] + ([omni.post] if omni.post is not None else [])

    def add(self, turn_cache: OmniCache) -> None:
        """Appends a prefilled turn's rows (their cache is shorter or longer than the batch: both are padded)."""
        rows, new_len = turn_cache.backbone.layers[0].keys.shape[0], turn_cache.length
        length = max(self.valid.shape[1], new_len)
        for mine, theirs in zip(self._caches(self.cache), self._caches(turn_cache), strict=True):
            for layer, joining in zip(mine.layers, theirs.layers, strict=True):
                keys, values = _left_pad(joining.keys, length), _left_pad(joining.values, length)
                if layer.is_initialized and layer.keys.shape[0]:
                    keys = torch.cat([_left_pad(layer.keys, length), keys])
                    values = torch.cat([_left_pad(layer.values, length), values])
                elif not layer.is_initialized:
                    layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys, values
        joining_valid = torch.ones(rows, new_len, dtype=torch.bool, device=self.valid.device)
        self.valid = torch.cat([_left_pad(self.valid, length, dim=1), _left_pad(joining_valid, length, dim=1)])

    def remove(self, start: int, stop: int) -> None:
        """Drops rows [start, stop) and the leading columns that are padding in every remaining row."""
        keep = torch.cat([torch.arange(0, start), torch.arange(stop, self.valid.shape[0])]).to(self.valid.device)
        valid = self.valid.index_select(0, keep)
        used = valid.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else valid.shape[1]
        self.valid = valid[:, first:]
        for cache in self._caches(self.cache):
            for layer in cache.layers:
                if layer.is_initialized:
                    layer.keys = layer.keys.index_select(0, keep)[:, :, first:]
                    layer.values = layer.values.index_select(0, keep)[:, :, first:]


def _left_pad(x: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """x padded with zeros (False) on the left of `dim` to `length`."""
    missing = length - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class BatchEngine:
    """Decodes many turns on one OmniLM, one batched forward per step. `submit` takes `generation.stream`'s
    arguments (bad input raises there) and an `emit` callback that receives the turn's events, Done last.
    At most `max_rows` batch rows decode at once; later turns wait for rows to free up. A turn that joins while
    no other decodes is prefilled on `prefill_threads` torch threads (default: every core; the codec has no
    audio to decode then), the steps on the engine thread's own count (`start(threads)`)."""

    def __init__(self, model, max_rows: int = 16, prefill_threads: int | None = None):
        self.model = model
        self.prefill_threads = prefill_threads or os.cpu_count() or 1
        self.lm: OmniLM = model.lm if hasattr(model, "lm") else model
        self.max_rows = max_rows
        self.active: list[BatchTurn] = []  # in batch-row order
        self.waiting: list[BatchTurn] = []
        self.batch = BatchCache(self.lm)
        self.steps = 0  # batched forwards run
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- turns ---------------------------------------------------------------------------------------
    def submit(self, emit: Callable[[Event], None], **stream_kwargs) -> BatchTurn:
        turn = BatchTurn(prepare(self.model, **stream_kwargs), emit)
        with self._wake:
            self.waiting.append(turn)
            self._wake.notify()
        return turn

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting

    def step(self) -> None:
        """Cancelled turns leave, waiting turns join (prefill alone) while rows are free, then one batched
        forward advances every active turn by one column."""
        for turn in [t for t in self.active if t.cancelled()]:
            self._leave(turn, "cancelled")
        with self._wake:
            joining = []
            rows = sum(t.rows for t in self.active)
            while self.waiting and (not rows or rows + self.waiting[0].rows <= self.max_rows):
                rows += self.waiting[0].rows
                joining.append(self.waiting.pop(0))
        for turn in joining:
            self._join(turn)
        if self.active:
            self._forward()

    def _join(self, turn: BatchTurn) -> None:
        if turn.cancelled():
            return turn.finish("cancelled")
        # alone, the turn has no other turn's steps and no audio to decode beside it: its prefill takes every core
        budget = using_threads(self.prefill_threads) if not self.active else nullcontext()
        try:
            with budget:
                cache = turn.prefill()
        except Exception as error:  # noqa: BLE001 - the turn ends with its error, the others go on
            turn.done = True
            return turn.emit(error)
        if not turn.done:
            self.batch.add(cache)
            self.active.append(turn)

    def _leave(self, turn: BatchTurn, reason: str | None) -> None:
        start = self._first_row(turn)
        self.batch.remove(start, start + turn.rows)
        self.active.remove(turn)
        if reason is not None:
            turn.finish(reason)

    def _first_row(self, turn: BatchTurn) -> int:
        start = 0
        for other in self.active:
            if other is turn:
                return start
            start += other.rows
        raise ValueError("turn is not active")

    def _forward(self) -> None:
        lm, turns = self.lm, self.active
        ids = torch.cat([t.next_ids for t in turns])  # (B, S, 1)
        positions = torch.tensor([[t.length] for t in turns for _ in range(t.rows)], device=lm.device)  # (B, 1)
        mask = torch.cat([self.batch.valid, self.batch.valid.new_ones(len(ids), 1)], dim=1)  # (B, L + 1)
        text_rows, audio_rows, start = [], [], 0
        for t in turns:
            text, audio = t.head_rows()
            text_rows += [start + r for r in text]
            audio_rows += [start + r for r in audio]
            start += t.rows
        try:
            with torch.inference_mode():
                text_logits, audio_logits = self._logits(ids, mask, positions, text_rows, audio_rows)
        except Exception as error:  # noqa: BLE001 - every turn of the failed step ends with the error
            for turn in list(turns):
                self._leave(turn, None)
                turn.done = True
                turn.emit(error)
            return
        self.batch.valid, self.steps = mask, self.steps + 1
        t_at = a_at = 0
        for turn in list(turns):
            text, audio = turn.head_rows()
            out = OmniOutput(text_logits[t_at:t_at + len(text)] if text else None,
                             audio_logits[a_at:a_at + len(audio)] if audio else None, None)
            t_at, a_at = t_at + len(text), a_at + len(audio)
            turn.length += 1
            turn.advance(out)
            if turn.done:
                self._leave(turn, None)

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, text_rows: list[int],
                audio_rows: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One decode position for all rows: (text logits (len(text_rows), 1, Vt), audio logits
        (len(audio_rows), A, 1, Va)); the padding mask hides each row's left padding."""
        lm, cache = self.lm, self.batch.cache
        x = lm.embed(ids)  # (B, 1, D)
        hidden = lm.backbone(None, mask, positions, cache.backbone, x, use_cache=True).last_hidden_state
        text = lm._head(hidden[text_rows], 0, lm.layout.text_vocab_size) if text_rows else None
        if lm.config.post_adapter:
            pre_norm, lm._pre_norm = lm._pre_norm, None
            h = lm.post_adapter(None, mask, positions, cache.post, pre_norm, use_cache=True).last_hidden_state
            audio = lm._split_audio(lm.audio_head(h[audio_rows])) if audio_rows else None
        else:
            audio = (lm._split_audio(lm._head(hidden[audio_rows], lm.layout.text_vocab_size, None))
                     if audio_rows else None)
        return text, audio

    # ---- the decode thread ---------------------------------------------------------------------------
    def start(self, threads: int | None = None) -> None:
        """Runs `step` in a daemon thread until `stop`; `threads`: torch intra-op threads of that thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, args=(threads,), name="omnivox-lm", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        """Re-checks cancellations now (an interrupted turn leaves at the next step anyway)."""
        with self._wake:
            self._wake.notify()

    def _run(self, threads: int | None) -> None:
        if threads is not None:
            set_threads(threads)
        while True:
            with self._wake:
                while self.idle and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            self.step()
