"""Stages that wrap the model components for the event bus: encoder, LM + decoding strategy, codec.

    AudioStart/AudioChunk.../AudioStop ──► EncoderStage ──► Features ──► LMStage ──► TextToken, CodecFrame
                     (a streaming encoder: FeaturesPart per chunk ──► prefilled early, during speech)
    TextIn ─────────────────────────────────────────────────────────────┘                     │
    CodecFrame ──► CodecStage (streaming decode, flush at TurnEnd) ──► AudioOut ◄─────────────┘

Heavy work runs off the event loop, one thread per heavy stage with its own torch thread budget (torch's
intra-op thread count is per thread), so the LM and the codec overlap instead of oversubscribing the cores:
the encoder and the codec each own a one-thread executor, the LM owns a `BatchEngine` thread
(core/kernel/batching.py) that decodes the active turns of ALL sessions in one batched forward per step
(continuous batching: turns join and leave between steps; an interrupted turn leaves at the next step).
Sessions run concurrently (see stage.py), so all per-turn state here is keyed by (session, turn).
These are the stage adapters the pipeline uses for components of kind encoders, strategies and codecs; an LMStage
given a `checkpoint` gets its model from the speech kit (core/runtime/speech_kit.py: a registered name or a
checkpoint directory)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from omnivox.core import audio
from omnivox.core.contracts.codec import push_frames
from omnivox.core.errors import ConfigError, InputError
from omnivox.core.kernel.actions import ActionFormat, ActionIssue, ActionParser, ParsedAction, check_names
from omnivox.core.kernel.threads import set_threads
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS
from omnivox.core.runtime.conversations import SessionConversations
from omnivox.core.runtime.events import (
    Action,
    ActionResult,
    ActionWarning,
    AudioChunk,
    AudioOut,
    AudioStart,
    AudioStop,
    Cancel,
    CodecFrame,
    Event,
    Features,
    FeaturesPart,
    Interruption,
    Played,
    ResetConversation,
    SetContext,
    TextIn,
    TextToken,
    TurnEnd,
    Withdrawn,
    same_turn,
)
from omnivox.core.runtime.speech_kit import SpeechKit
from omnivox.core.runtime.stage import Stage

log = logging.getLogger(__name__)
KEEP_RESULTS = 64  # LMStage.results keeps the GenerationResult of this many recent turns
KEEP_EARLY = 16  # LMStage keeps the early prefills of at most this many turns still being spoken
KEEP_PREVIOUS = 16  # EncoderStage keeps the last streamed turn of at most this many sessions (for a re-asked one)


def default_lm_threads() -> int:
    """The LM's torch threads: every core but one, which the codec's thread keeps (1 on a 1-core machine)."""
    return max(1, (os.cpu_count() or 1) - 1)


def torch_executor(name: str, threads: int | None) -> ThreadPoolExecutor:
    """One worker thread whose torch intra-op thread count is `threads` (None: the calling thread's count), set
    with `set_threads` so that later settings in other threads do not replace it (core/kernel/threads.py)."""
    threads = torch.get_num_threads() if threads is None else threads
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=set_threads, initargs=(threads,))


async def _off_loop(executor: ThreadPoolExecutor, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def _in_own_thread(name: str, threads: int, fn, *args):
    """fn(*args) in a new thread with `threads` torch threads, awaited. The thread, and the OpenMP team it starts,
    end with the call: while it runs, the LM's team sleeps between regions; after, it spins again
    (core/kernel/threads.py)."""
    future: Future = Future()

    def run():
        if not future.set_running_or_notify_cancel():  # the awaiting turn was interrupted before it started
            return
        set_threads(threads)
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # noqa: BLE001 - raised again in the awaiting coroutine
            future.set_exception(error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await asyncio.wrap_future(future)  # (a loop closed meanwhile is not told)


def _turn_keys(per_turn: dict, event: Interruption) -> list[tuple[str, int]]:
    """The keys of `per_turn` that an Interruption (one turn, or all turns of its session) covers."""
    return [k for k in per_turn if k[0] == event.session_id and event.turn_id in (None, k[1])]


class EncoderStage(Stage):
    """Collects a turn's audio between AudioStart and AudioStop, then emits its Features (T, F).
    With a streaming encoder (core/chunked_encoder.py ChunkedEncoder) and mono audio at its rate, each chunk is
    encoded as soon as its audio has arrived and sent on as a FeaturesPart (the LM prefills it during speech); the
    Features at AudioStop are the same frames, the last chunk's added. Each encoding runs in a thread of its own
    on `threads` torch threads (default: every core), which ends with it (core/kernel/threads.py: a thread that
    lived on with its team would make the LM's steps sleep between regions).
    A turn whose audio begins with all of the session's previous turn's (a VAD's guess withdrawn and the utterance
    asked again whole: plugins/silero_vad.py) takes that turn's whole chunks' features instead of encoding them
    again: a chunk's features are a function of its audio and the audio before it."""

    consumes = (AudioStart, AudioChunk, AudioStop)

    def __init__(self, encoder, *, name: str | None = None, threads: int | None = None):
        super().__init__(name or "encoder")
        self.encoder = encoder
        self.threads = threads or os.cpu_count() or 1
        self._chunks: dict[tuple[str, int], list[np.ndarray]] = {}
        self._rate: dict[tuple[str, int], int] = {}
        self._parts: dict[tuple[str, int], list[torch.Tensor]] = {}  # streaming: the chunks' features so far
        self._received: dict[tuple[str, int], int] = {}  # streaming: samples so far
        self._previous: dict[str, tuple] = {}  # session -> its last streamed turn's (audio, whole chunks' features)

    async def process(self, event: Event) -> AsyncIterator[Event]:
        key = event.turn
        if isinstance(event, AudioStart):
            self._chunks[key], self._rate[key] = [], event.rate
            self._parts[key], self._received[key] = [], 0
        elif isinstance(event, AudioChunk):
            if self._rate.setdefault(key, event.rate) != event.rate:
                raise InputError(f"audio rate changed within a turn ({self._rate[key]} -> {event.rate} Hz)",
                                 "send one AudioStart per rate change")
            chunk = event.to_float32().T  # (channels, frames)
            self._chunks.setdefault(key, []).append(chunk)
            if self._streams(key, chunk):
                self._received[key] += chunk.shape[1]
                for part in self._reused_parts(key):
                    yield part
                async for part in self._ready_parts(key):
                    yield part
        else:  # AudioStop
            chunks, rate = self._chunks.pop(key, []), self._rate.pop(key, None)
            parts, _ = self._parts.pop(key, None), self._received.pop(key, None)
            if not chunks:
                raise InputError("the turn ended without audio",
                                 "send at least one chunk of audio before ending the turn")
            pcm = np.concatenate(chunks, axis=1)
            if parts:  # the chunks not encoded yet, the last one ending with the audio
                rest = await self._off_loop(self.encoder.encode_from, pcm[0], len(parts))  # (T - len * F, F)
                features = torch.cat([*parts, rest])
                size = self.encoder.chunk_frames
                whole = (len(rest) - 1) // size  # the chunks of `rest` before the last one
                self._previous[key[0]] = (pcm[0], [*parts, *(rest[:whole * size].split(size) if whole else ())])
                while len(self._previous) > KEEP_PREVIOUS:
                    self._previous.pop(next(iter(self._previous)))
            else:
                features = await self._off_loop(self.encoder.encode, pcm, rate)  # (T, F)
            yield Features(features=features, frames_per_second=self.encoder.frame_rate, **same_turn(event))

    def _streams(self, key: tuple[str, int], chunk: np.ndarray) -> bool:
        """Encode this turn's chunks as they arrive? A streaming encoder, mono audio at its rate."""
        if not hasattr(self.encoder, "chunk_ready") or key not in self._parts:
            return False
        if chunk.shape[0] != 1 or self._rate[key] != self.encoder.sample_rate:
            self._parts.pop(key)  # not streamable: encoded whole at AudioStop
            return False
        return True

    def _reused_parts(self, key: tuple[str, int]) -> list[Event]:
        """At a turn's first chunk: the previous turn's chunk features, when this turn's audio begins with all of
        its audio (sent on as FeaturesParts); the previous turn is forgotten either way."""
        previous = self._previous.pop(key[0], None)
        parts = self._parts[key]
        if previous is None or parts:
            return []
        audio_before, its_parts = previous
        x = np.concatenate(self._chunks[key], axis=1)[0]
        if len(x) < len(audio_before) or not np.array_equal(x[:len(audio_before)], audio_before):
            return []
        parts += its_parts
        return [FeaturesPart(features=f, start=k * self.encoder.chunk_frames, session_id=key[0], turn_id=key[1])
                for k, f in enumerate(its_parts)]

    async def _ready_parts(self, key: tuple[str, int]) -> AsyncIterator[Event]:
        parts, encoder = self._parts[key], self.encoder
        while encoder.chunk_ready(len(parts), self._received[key]):
            x = np.concatenate(self._chunks[key], axis=1)[0]  # (samples,) mono at the encoder's rate
            features = await self._off_loop(encoder.encode_chunk, x, len(parts))  # (F, feature_dim)
            if self._parts.get(key) is not parts:  # interrupted meanwhile
                return
            parts.append(features)
            yield FeaturesPart(features=features, start=(len(parts) - 1) * encoder.chunk_frames, session_id=key[0],
                               turn_id=key[1])

    async def _off_loop(self, fn, *args):
        return await _in_own_thread("omnivox-encoder", self.threads, fn, *args)

    async def on_interrupt(self, event: Interruption) -> None:
        for key in _turn_keys(self._chunks, event):
            self._chunks.pop(key, None)
            self._rate.pop(key, None)
            self._parts.pop(key, None)
            self._received.pop(key, None)


class IncrementalText:
    """Detokenizes a growing id list, returning only the new text (holds back a partial UTF-8 char)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.done = tokenizer, [], ""

    def push(self, token: int) -> str:
        if self.tokenizer is None:
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.done = text[len(self.done):], text
        return new


class ActionText:
    """One turn's text through the action parser of the model's declared format (core/kernel/actions.py): the
    plain text as TextTokens (only non-empty ones, with the id and step of the token that released them), an
    Action as soon as one closes, an ActionWarning as soon as one fails; no character of an action in a TextToken."""

    def __init__(self, fmt: ActionFormat, names: list[str] | None):
        self.parser, self.count = ActionParser(fmt, names), 0
        self.token, self.step = 0, 0  # the last text token: a flush at the turn's end is attributed to it

    @classmethod
    def of(cls, model, names: list[str] | None) -> ActionText | None:
        fmt = ActionFormat.of(model)
        return None if fmt is None else cls(fmt, names)

    def push(self, token: int, step: int, text: str, event: Event) -> list[Event]:
        self.token, self.step = token, step
        return self._events(self.parser.feed(text), event)

    def finish(self, event: Event) -> list[Event]:
        return self._events(self.parser.finish(), event)

    def _events(self, items, event: Event) -> list[Event]:
        out: list[Event] = []
        for item in items:
            if isinstance(item, ParsedAction):
                out.append(Action(item.name, item.arguments, index=self.count, step=self.step, **same_turn(event)))
                self.count += 1
            elif isinstance(item, ActionIssue):
                out.append(ActionWarning(item.code, item.message, markup=item.markup, step=self.step,
                                         **same_turn(event)))
            else:
                out.append(TextToken(self.token, item, step=self.step, **same_turn(event)))
        return out


class LMStage(Stage):
    """Runs the LM with a decoding strategy on each Features (audio in) or TextIn (text in) event.
    Emits a TextToken per text id and a CodecFrame per complete codec frame, as soon as each exists. A model that
    declares actions (its config's `actions`) has its text parsed (`ActionText`): TextTokens carry the plain text
    only, actions come as Action events, malformed or unknown ones (not in `action_names`, when given) as
    ActionWarnings, and the turn goes on.
    All sessions' turns decode together in one BatchEngine (`max_rows` batch rows at once; a batch-parallel
    turn takes 2), in a thread with `threads` torch threads (default: every core but one).
    It also consumes a transport's conversation controls (SetContext, ResetConversation, Played, Withdrawn,
    ActionResult:
    docs/conversations.md), in the session's order, so they act between turns; they go no further.
    `strategy` None decodes with the one the model declares (its config's `decoding`; else text-delay)."""

    consumes = (Features, FeaturesPart, TextIn, SetContext, ResetConversation, Played, Withdrawn, ActionResult)
    replaces = (FeaturesPart, SetContext, ResetConversation, Played, Withdrawn, ActionResult)
    queue_size = 8

    def __init__(self, strategy=None, *, name: str | None = None, checkpoint: str | None = None, model=None,
                 task: str | None = None, max_steps: int | None = 600, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float = 1.0, seed: int | None = None,
                 force_layout: bool = False, int8: bool = False, threads: int | None = None, max_rows: int = 16,
                 action_names: list[str] | None = None, memory: bool | None = False, context: str | None = None):
        from omnivox.core.kernel.sampling import SamplingConfig
        from omnivox.core.kernel.strategies import get_strategy

        super().__init__(name or "lm")
        # None: the model's declared strategy, resolved once the model is loaded (setup)
        self.strategy = None if strategy is None else get_strategy(strategy)
        self.checkpoint, self.model = checkpoint, model
        self.task, self.max_steps, self.force_layout, self.int8 = task, max_steps, force_layout, int8
        self.sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        self.threads = default_lm_threads() if threads is None else threads
        self.max_rows = max_rows
        # actions accepted (others: ActionWarning unknown-action); None: those the model declares
        self.action_names = None if action_names is None else list(check_names(action_names, "lm: action_names"))
        self.engine = None  # BatchEngine, created at setup
        # session memory (core/runtime/conversations.py): `memory` true keeps each session's turns as one
        # conversation (None: as the model declares; default off), `context` is each new session's context text
        self.conversations = SessionConversations(memory, context)
        self.generating: set[tuple[str, int]] = set()  # turns whose generation is running now
        self.early: dict[tuple[str, int], list] = {}  # [EarlyPrefill, frames] of turns still being spoken
        # GenerationResult of the most recent turns (bounded: a service runs turns without end)
        self.results: OrderedDict[tuple[str, int], object] = OrderedDict()

    async def setup(self) -> None:
        if self.model is None:
            if self.checkpoint is None:
                raise ConfigError("the LM stage has no model",
                                  "give it `checkpoint: DIR` or the name of a registered model "
                                  "(`omnivox plugins` lists them under models, e.g. tiny-random)")
            # on every core, in a thread that ends with the load (its team with it: core/kernel/threads.py)
            self.model = await _in_own_thread("omnivox-load", os.cpu_count() or 1, SpeechKit.load_model,
                                              self.checkpoint, self.sampling.seed or 0)
        if self.strategy is None:
            from omnivox.core.kernel.strategies import declared_strategy

            self.strategy = declared_strategy(self.model, self.task)
        if self.int8:
            from omnivox.core.kernel.quantize import quantize_int8

            quantize_int8(self.model.lm)
        self._start_engine()

    def _start_engine(self) -> None:
        from omnivox.core.kernel.batching import BatchEngine

        if self.engine is None:
            self.engine = BatchEngine(self.model, max_rows=self.max_rows)
        self.engine.start(self.threads)

    async def teardown(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.stop)

    async def process(self, event: Event) -> AsyncIterator[Event]:
        from omnivox.core.kernel.generation import Done, FramePiece, TextPiece

        if isinstance(event, SetContext | ResetConversation | Played | Withdrawn | ActionResult):
            self._control(event)
            return
        if isinstance(event, FeaturesPart):
            self._prefill_early(event)
            return
        key, loop = event.turn, asyncio.get_running_loop()
        self._start_engine()  # started at setup; again after a teardown
        pieces: asyncio.Queue = asyncio.Queue()

        def deliver(piece) -> None:  # called in the engine's thread
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except RuntimeError:  # the event loop closed: nobody waits for this turn any more
                left.set()

        left = threading.Event()  # this turn's consumer is gone (interrupted, failed, stopped)
        options = dict(strategy=self.strategy, sampling=self.sampling, max_steps=self.max_steps,
                       force_layout=self.force_layout, cancel=lambda: left.is_set() or self.interrupted(event))
        conversation = await self.conversations.begin(event.session_id, self.model, self.strategy)
        if conversation is not None:  # the turn continues the session's conversation
            options.update(conversation=conversation, turn_id=event.turn_id)
            deliver = self.conversations.watch(event.session_id, deliver, loop)
        held = self.early.pop(key, None)
        early = held[0] if held is not None else None
        if isinstance(event, Features):
            features = torch.as_tensor(event.features, dtype=torch.float32)
            self.engine.submit(deliver, task=self.task or "A1A2", audio_features=features, early=early, **options)
        else:
            task = self.task if self.task in ("T1A2", "T1T2") else "T1A2"
            self.engine.submit(deliver, task=task, text_ids=event.text, **options)
        text = IncrementalText(getattr(self.model, "tokenizer", None))
        actions = ActionText.of(self.model, self.action_names)  # None: the model declares no actions
        self.generating.add(key)
        piece, delivered = None, 0  # the last piece received; answer columns produced so far
        try:
            while True:
                piece = await pieces.get()
                delivered = max(delivered, getattr(piece, "step", -1) + 1)
                if isinstance(piece, Exception):
                    raise piece
                if isinstance(piece, TextPiece):
                    if actions is None:
                        yield TextToken(piece.token, text.push(piece.token), step=piece.step, **same_turn(event))
                    else:
                        for out in actions.push(piece.token, piece.step, text.push(piece.token), event):
                            yield out
                elif isinstance(piece, FramePiece):
                    yield CodecFrame(piece.codes, step=piece.step, **same_turn(event))
                elif isinstance(piece, Done):
                    for out in actions.finish(event) if actions is not None else ():
                        yield out
                    self.results[key] = piece.result
                    while len(self.results) > KEEP_RESULTS:
                        self.results.popitem(last=False)
                    break
        finally:
            self.generating.discard(key)
            left.set()  # a turn still decoding leaves the batch at the engine's next step
            if not isinstance(piece, Done):  # cut: the session's history keeps what this turn produced
                self.conversations.cut(event.session_id, event.turn_id, delivered)

    def _prefill_early(self, event: FeaturesPart) -> None:
        """Frames of a turn still being spoken: prefilled in the engine's thread (streaming input). A session's
        conversation continues a copy of its cache (when its previous turn has ended: else the turn prefills at
        its end, as it does when the history changes meanwhile)."""
        from omnivox.core.kernel.generation import EarlyPrefill

        task = self.task or "A1A2"
        if task not in AUDIO_IN_TASKS:
            return
        key = event.turn
        held = self.early.get(key)  # [its EarlyPrefill, frames queued]
        if held is None:
            if event.start != 0:  # its first frames went by (its previous turn was decoding then)
                return
            conversation = self.conversations.get(event.session_id, self.model, self.strategy)
            early = (EarlyPrefill(self.model, task=task, strategy=self.strategy) if conversation is None
                     else conversation.early_prefill(task))
            if early is None:
                return
            held = self.early[key] = [early, 0]
            while len(self.early) > KEEP_EARLY:  # turns that never ended (their audio was dropped)
                self.early.pop(next(iter(self.early)))
        if event.start != held[1]:  # a part is missing: the turn prefills whole
            self.early.pop(key)
            return
        held[1] += len(event.features)
        self._start_engine()
        self.engine.prefill_early(held[0], torch.as_tensor(event.features, dtype=torch.float32))

    async def on_interrupt(self, event: Interruption | Cancel) -> None:
        for key in _turn_keys(self.early, event):
            self.early.pop(key, None)
        if isinstance(event, Cancel):  # the session ended: its conversation goes
            self.conversations.free(event.session_id)

    def _control(self, event: SetContext | ResetConversation | Played | Withdrawn | ActionResult) -> None:
        """A transport's conversation control (a bad one is logged: it belongs to no turn that could fail)."""
        sid = event.session_id
        try:
            if isinstance(event, SetContext):
                self.set_context(sid, event.text)
            elif isinstance(event, ResetConversation):
                self.reset_conversation(sid)
            elif isinstance(event, Played):
                self.played(sid, event.turn_id, event.columns)
            elif isinstance(event, Withdrawn):
                self.withdrawn(sid, event.turn_id)
            else:
                self.add_result(sid, event.name, event.result, event.turn_id)
        except InputError as exc:
            log.warning("session %s: %s ignored: %s (%s)", sid, type(event).__name__, exc.problem, exc.fix)

    # ---- session memory: what a transport calls (docs/conversations.md) -------------------------------
    def reset_conversation(self, session_id: str) -> None:
        """Drops the session's history (its context stays); the next turn starts afresh."""
        conversation = self.conversations.sessions.get(session_id)
        if conversation is not None:
            conversation.reset()

    def set_context(self, session_id: str, context: str | None) -> None:
        """Sets the session's context text (its next turn sees it); makes the session's conversation if needed."""
        self.conversations.get(session_id, self.model, self.strategy, create=True).set_context(context)

    def add_result(self, session_id: str, name: str, result, turn_id: int | None = None) -> bool:
        """A device's result of action `name` enters the session's conversation (its next turn's prefill puts it
        first); False when the session keeps no conversation (memory off, no context): nothing to enter."""
        conversation = self.conversations.get(session_id, self.model, self.strategy)
        if conversation is None:
            return False
        conversation.add_result(name, result, turn_id=turn_id)
        return True

    def played(self, session_id: str, turn_id: int, columns: int) -> None:
        """Turn `turn_id` was cut after `columns` answer columns were played: the history keeps only those."""
        self.conversations.cut(session_id, turn_id, columns)

    def withdrawn(self, session_id: str, turn_id: int) -> None:
        """Turn `turn_id` was taken back (asked on a guess; the speaker went on): it leaves the history."""
        self.conversations.forget(session_id, turn_id)


@dataclass
class _CodecTurn:
    """One turn's streaming decode: its decoder, frames held back, and the audio it has returned."""

    decoder: object
    pending: list = field(default_factory=list)  # codes of frames not decoded yet
    started: float | None = None  # time.monotonic() of its first audio: playback is assumed to start there
    emitted: int = 0  # samples returned


class CodecStage(Stage):
    """Decodes CodecFrames with the codec's streaming decoder (one per turn) into s16le AudioOut chunks;
    flushes the tail at the turn's TurnEnd. Each frame is decoded as it arrives until the audio returned is
    ahead of playback (assumed to start at the turn's first audio, in real time); then frames are held back
    and decoded up to `max_chunk` at a time (one `push_frames` call: fewer weight re-reads and less
    speculative work), as long as the audio ahead outlasts waiting for them. `max_chunk=1`: frame by frame."""

    consumes = (CodecFrame, TurnEnd)
    queue_size = 8

    def __init__(self, codec, *, name: str | None = None, threads: int | None = 1, max_chunk: int = 4):
        super().__init__(name or "codec")
        if max_chunk < 1:
            raise ConfigError(f"codec stage max_chunk={max_chunk}", "give max_chunk >= 1 (1: decode frame by frame)")
        self.codec = codec
        self.threads = threads  # torch threads of its executor: 1 leaves the other cores to the LM
        self.max_chunk = max_chunk
        self.frame_s = codec.grid.samples_per_frame / codec.grid.sample_rate
        self._executor: ThreadPoolExecutor | None = None
        self._decoders: dict[tuple[str, int], _CodecTurn] = {}

    async def process(self, event: Event) -> AsyncIterator[Event]:
        key = event.turn
        if self._executor is None:
            self._executor = torch_executor("omnivox-codec", self.threads)
        if isinstance(event, CodecFrame):
            turn = self._decoders.get(key)
            if turn is None:
                turn = self._decoders[key] = _CodecTurn(self.codec.stream_decoder())
            turn.pending.append(event.codes)
            if not self._due(turn):
                return
            pcm, step = await _off_loop(self._executor, self._decode, turn, False), event.step
        else:
            turn = self._decoders.pop(key, None)
            if turn is None or event.reason != "done":
                return
            pcm, step = await _off_loop(self._executor, self._decode, turn, True), None
        if pcm.numel():
            turn.started = turn.started or time.monotonic()
            turn.emitted += pcm.numel()
            yield self._audio_out(pcm, step, event)

    def _due(self, turn: _CodecTurn) -> bool:
        """Decode the held frames now, or wait for one more? Wait only while the audio ahead of playback lasts
        for the next frame to arrive and for this chunk to decode (two frames' time beyond the chunk)."""
        held = len(turn.pending)
        if held >= self.max_chunk or turn.started is None:
            return True
        ahead = turn.emitted / self.codec.grid.sample_rate - (time.monotonic() - turn.started)
        return ahead < (held + 2) * self.frame_s

    @staticmethod
    def _decode(turn: _CodecTurn, last: bool) -> torch.Tensor:
        """The held frames through the turn's decoder (and its tail when `last`); runs in the codec thread."""
        parts = []
        if turn.pending:
            parts.append(push_frames(turn.decoder, torch.tensor(turn.pending, dtype=torch.long)))  # (n, n_slots)
            turn.pending = []
        if last:
            parts.append(turn.decoder.flush())
        return torch.cat(parts) if parts else torch.zeros(0)

    def _audio_out(self, pcm: torch.Tensor, step: int | None, event: Event) -> AudioOut:
        fmt = audio.AudioFormat(rate=self.codec.grid.sample_rate, width=2, channels=1)
        data = audio.to_bytes(pcm.detach().float().cpu().numpy().reshape(1, -1), fmt)
        return AudioOut(audio=data, rate=fmt.rate, width=2, channels=1, step=step, **same_turn(event))

    async def on_interrupt(self, event: Interruption) -> None:
        for key in _turn_keys(self._decoders, event):
            self._decoders.pop(key, None)

    async def teardown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

