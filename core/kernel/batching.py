"""Continuous batching: the active turns of many sessions decode in ONE forward per step.

    turn joins ──► TurnDecoder.prefill alone (own cache) ──► its rows appended to the batch cache (left-padded)
                   (prefill_early: an EarlyPrefill's parts, run in this thread before the turn that uses them joins)
    every step:   ids (B, S, 1) of all active rows ──► OmniLM.step: one forward with per-row positions and a
                  padding mask ──► each turn's decoder advances on its own rows ──► TextPiece / FramePiece to `emit`
    turn ends (stop, max_steps, context, cancel) ──► its rows leave the batch cache back to its DecodeState,
                  Done to `emit`; the other rows are untouched

A turn keeps its own step rule, sampler, position and stop state (`generation.TurnDecoder`, the decoder
`generation.stream` runs alone); a row's attention sees only its own positions (the mask hides the left padding
of rows that joined later or with a shorter prompt), so greedy tokens are those of the same turn decoded alone
(tests/test_batching.py). On a CPU a decode step is bound by reading the weights, which the rows of one forward
share.

`BatchEngine.step()` is synchronous (tests drive it step by step); `start()` runs it in one thread that
sleeps while no turn is active (core/runtime/model_stages.py LMStage owns one)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from omnivox.core.errors import InputError
from omnivox.core.kernel.conversation import Conversation
from omnivox.core.kernel.generation import EarlyPrefill, Event, Piece, TurnDecoder, prepare
from omnivox.core.kernel.model import OmniCache, OmniLM, OmniOutput
from omnivox.core.kernel.threads import set_threads, single_thread_blas, using_threads


@dataclass(eq=False)
class BatchTurn:
    """A submitted turn: its decoder and the callback that receives its events."""

    decoder: TurnDecoder
    emit: Callable[[Event], None]

    def deliver(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self.emit(piece)


class BatchCache:
    """The KV caches of the active rows, left-padded to one length: per layer keys/values (B, H, L, Dh) and
    `valid` (B, L), False on padding; `cache.length` is L. A turn's own positions are the last ones of its rows."""

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
        self.cache.length = length

    def remove(self, start: int, stop: int, length: int) -> OmniCache:
        """Drops rows [start, stop) and the leading columns that are padding in every remaining row. Returns the
        dropped rows' last `length` positions (their own, without padding) as a cache of their own (views)."""
        keep = torch.cat([torch.arange(0, start), torch.arange(stop, self.valid.shape[0])]).to(self.valid.device)
        valid = self.valid.index_select(0, keep)
        used = valid.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else valid.shape[1]
        self.valid = valid[:, first:]
        self.cache.length = self.valid.shape[1]
        dropped = self.lm.new_cache()
        dropped.length = length
        for cache, taken in zip(self._caches(self.cache), self._caches(dropped), strict=True):
            for layer, own in zip(cache.layers, taken.layers, strict=True):
                if layer.is_initialized:
                    own.lazy_initialization(layer.keys, layer.values)
                    own.keys = layer.keys[start:stop, :, -length:]
                    own.values = layer.values[start:stop, :, -length:]
                    layer.keys = layer.keys.index_select(0, keep)[:, :, first:]
                    layer.values = layer.values.index_select(0, keep)[:, :, first:]
        return dropped


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
    audio to decode then), and so are the steps before any active turn has a codec frame (the first 8 of a
    Mini-Omni answer, every step of a text answer); the others run on the engine thread's own count
    (`start(threads)`)."""

    def __init__(self, model, max_rows: int = 16, prefill_threads: int | None = None):
        self.model = model
        self.prefill_threads = prefill_threads or os.cpu_count() or 1
        self.lm: OmniLM = model.lm if hasattr(model, "lm") else model
        self.max_rows = max_rows
        self.active: list[BatchTurn] = []  # in batch-row order
        self.waiting: list[BatchTurn] = []
        self.early: list[tuple[EarlyPrefill, torch.Tensor]] = []  # early prefills to run, in order
        self.batch = BatchCache(self.lm)
        self.steps = 0  # batched forwards run
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- turns ---------------------------------------------------------------------------------------
    def submit(self, emit: Callable[[Event], None], conversation: Conversation | None = None,
               early: EarlyPrefill | None = None, **stream_kwargs) -> TurnDecoder:
        """Queues a turn; returns its decoder, whose `state` holds the turn's cache and positions after Done.
        With a `conversation` (of this engine's model) the turn is that conversation's next turn
        (`Conversation.turn`: it continues the conversation's cache). With an `early` prefill (its `extend`s
        queued by `prefill_early` before this call; for a conversation's turn, from `Conversation.early_prefill`),
        only the rest of the prompt is prefilled."""
        if conversation is None:
            decoder = TurnDecoder(prepare(self.model, **stream_kwargs), early=early)
        elif conversation.lm is not self.lm:
            raise InputError("the conversation decodes with another model than this BatchEngine",
                             "make the Conversation with the engine's model")
        else:
            decoder = conversation.turn(early=early, **stream_kwargs)
        turn = BatchTurn(decoder, emit)
        with self._wake:
            self.waiting.append(turn)
            self._wake.notify()
        return turn.decoder

    def prefill_early(self, early: EarlyPrefill, features: torch.Tensor) -> None:
        """Queues `early.extend(features)` (frames of a turn whose audio still arrives); it runs in the engine's
        thread before the next step's forward, and before the turn joins."""
        with self._wake:
            self.early.append((early, features))
            self._wake.notify()

    @property
    def idle(self) -> bool:
        return not self.active and not self.waiting and not self.early

    def step(self) -> None:
        """Cancelled turns leave, waiting turns join (prefill alone) while rows are free, then one batched
        forward advances every active turn by one column."""
        for turn in [t for t in self.active if t.decoder.cancelled()]:
            self._leave(turn, "cancelled")
        with self._wake:  # early prefills queued before a turn's submit run before it joins
            early, self.early = self.early, []
            joining = []
            rows = sum(t.decoder.rows for t in self.active)
            while self.waiting and (not rows or rows + self.waiting[0].decoder.rows <= self.max_rows):
                rows += self.waiting[0].decoder.rows
                joining.append(self.waiting.pop(0))
        if early:  # alone, they take every core, as a joining turn's prefill does
            with using_threads(self.prefill_threads) if not self.active else nullcontext():
                for prefill, features in early:
                    prefill.extend(features)
        for turn in joining:
            self._join(turn)
        if self.active:
            self._forward()

    def _join(self, turn: BatchTurn) -> None:
        decoder = turn.decoder
        if decoder.cancelled():
            return turn.emit(decoder.finish("cancelled"))
        # alone, the turn has no other turn's steps and no audio to decode beside it: its prefill takes every core
        budget = using_threads(self.prefill_threads) if not self.active else nullcontext()
        try:
            with budget:
                turn.deliver(decoder.prefill(fill_post_cache=True))
        except Exception as error:  # noqa: BLE001 - the turn ends with its error, the others go on
            decoder.error = error
            return turn.emit(error)
        if decoder.reason is not None:
            return turn.emit(decoder.finish(decoder.reason))
        self.batch.add(decoder.state.cache)
        decoder.state.cache = None  # its rows live in the batch until the turn leaves
        self.active.append(turn)

    def _leave(self, turn: BatchTurn, reason: str | None) -> None:
        """The turn's rows leave the batch. With a `reason` the turn ends: its rows go back to its state and it
        emits Done; without (a failed step), its state keeps no cache."""
        start, state = self._first_row(turn), turn.decoder.state
        rows = self.batch.remove(start, start + turn.decoder.rows, state.length)
        self.active.remove(turn)
        if reason is not None:
            state.cache = rows
            turn.emit(turn.decoder.finish(reason))

    def _first_row(self, turn: BatchTurn) -> int:
        start = 0
        for other in self.active:
            if other is turn:
                return start
            start += other.decoder.rows
        raise ValueError("turn is not active")

    def _forward(self) -> None:
        """One OmniLM.step for every active row; each turn's decoder advances on its own rows' logits."""
        lm, turns = self.lm, self.active
        ids = torch.cat([t.decoder.next_ids for t in turns])  # (B, S, 1)
        positions = torch.tensor([[t.decoder.state.length] for t in turns for _ in range(t.decoder.rows)],
                                 device=lm.device)  # (B, 1)
        mask = torch.cat([self.batch.valid, self.batch.valid.new_ones(len(ids), 1)], dim=1)  # (B, L + 1)
        heads = [t.decoder.head_rows() for t in turns]  # per turn: (text rows, audio rows) of its own rows
        text_rows, audio_rows, start = [], [], 0
        for turn, (text, audio) in zip(turns, heads, strict=True):
            text_rows += [start + r for r in text]
            audio_rows += [start + r for r in audio]
            start += turn.decoder.rows
        # no turn has a frame for the codec yet: the step takes every core, as a lone prefill does
        solo = all(t.decoder.n_frames == 0 for t in turns)
        try:
            with torch.inference_mode(), using_threads(self.prefill_threads) if solo else nullcontext():
                out = lm.step(ids, self.batch.cache, positions, mask, text_rows, audio_rows)
        except Exception as error:  # noqa: BLE001 - every turn of the failed step ends with the error
            for turn in list(turns):
                self._leave(turn, None)
                turn.decoder.error = error
                turn.emit(error)
            return
        self.batch.valid, self.steps = mask, self.steps + 1
        t_at = a_at = 0
        for turn, (text, audio) in zip(list(turns), heads, strict=True):
            own = OmniOutput(out.text_logits[t_at:t_at + len(text)] if text else None,
                             out.audio_logits[a_at:a_at + len(audio)] if audio else None, None)
            t_at, a_at = t_at + len(text), a_at + len(audio)
            turn.deliver(turn.decoder.advance(own))
            if turn.decoder.reason is not None:
                self._leave(turn, turn.decoder.reason)

    # ---- the decode thread ---------------------------------------------------------------------------
    def start(self, threads: int | None = None) -> None:
        """Runs `step` in a daemon thread until `stop`; `threads`: torch intra-op threads of that thread. numpy's
        BLAS then runs on one thread (core/kernel/threads.py single_thread_blas: its spinning workers slow the LM)."""
        if self._thread is None:
            single_thread_blas()
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
