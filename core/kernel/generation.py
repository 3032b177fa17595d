"""Generation API: `generate` (whole answer) and `stream` (events as soon as they exist) over any strategy.

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
from omnivox.core.kernel.model import OmniLM, OmniOutput
from omnivox.core.kernel.sampling import SamplingConfig, sample
from omnivox.core.kernel.strategies import DecodingStrategy, StepRule, get_strategy
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


Event = TextPiece | FramePiece | Done


def generate(
    model,
    *,
    task: str,
    audio_features: torch.Tensor | None = None,
    text_ids: Sequence[int] | str | None = None,
    strategy: str | DecodingStrategy = "text-delay",
    sampling: SamplingConfig | None = None,
    max_steps: int | None = None,
    force_layout: bool = False,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> GenerationResult:
    """Generate one answer. `model`: OmniModel or OmniLM. Audio-in tasks (A1A2, A1T2, A1T1) take
    `audio_features` (frames, F) or (1, frames, F); text-in tasks (T1A2, T1T2) take `text_ids` (or a string
    when the model has a tokenizer). `max_steps` bounds the generated columns (upstream's
    max_returned_tokens - prompt length); default: until the context is full."""
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
    strategy: str | DecodingStrategy = "text-delay",
    sampling: SamplingConfig | None = None,
    max_steps: int | None = None,
    force_layout: bool = False,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Iterator[Event]:
    """Like `generate`, as an iterator: a TextPiece as soon as a text id is sampled, a FramePiece as soon as
    all slots of a frame exist, then Done(result). `cancel` (Event or callable) is checked before every
    forward; a cancelled turn ends with Done(stop_reason="cancelled"). Bad input raises here, eagerly."""
    return _decode(*prepare(model, task=task, audio_features=audio_features, text_ids=text_ids, strategy=strategy,
                            sampling=sampling, max_steps=max_steps, force_layout=force_layout, cancel=cancel))


def prepare(model, *, task: str, audio_features=None, text_ids=None, strategy: str | DecodingStrategy = "text-delay",
            sampling: SamplingConfig | None = None, max_steps: int | None = None, force_layout: bool = False,
            cancel=None) -> tuple:
    """`stream`'s arguments checked and resolved (bad input raises): the arguments of `_decode`, which
    core/kernel/batching.py also decodes from."""
    lm = model.lm if hasattr(model, "lm") else model
    if not isinstance(lm, OmniLM):
        raise InputError(
            f"model is a {type(model).__name__}, not an OmniModel or OmniLM",
            "load one with omnivox.OmniModel.from_pretrained",
        )
    strat = get_strategy(strategy)
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
    return lm, strat, rule, prompt, features, task, sampling or SamplingConfig(), max_steps, _cancel_check(cancel)


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


def _decode(
    lm: OmniLM,
    strat: DecodingStrategy,
    rule: StepRule,
    prompt: Prompt,
    features: torch.Tensor | None,
    task: str,
    sampling: SamplingConfig,
    max_steps: int | None,
    cancelled: Callable[[], bool],
) -> Iterator[Event]:
    layout, device = lm.layout, lm.device
    generator = sampling.generator(device)
    delay = max(strat.delays(layout))
    cache = lm.new_cache()
    ids, audio_lengths = prompt.ids.to(device), prompt.audio_lengths
    columns: list[list[int]] = []
    text_open, frames_open, n_frames = True, rule.audio_output, 0
    while True:
        if cancelled():
            reason = "cancelled"
            break
        text_rows = () if rule.text_end and sampling.greedy else (rule.text_row,)
        audio_rows = (rule.audio_row,) if rule.audio_output else ()
        with torch.inference_mode():
            out = lm(ids, features, audio_lengths, cache=cache, last_only=True, text_rows=text_rows,
                     audio_rows=audio_rows)
            audio, text = _sample(out, rule, sampling, generator)
        features = audio_lengths = None
        column = rule.apply(len(columns), audio, text)
        if column is None:
            reason = rule.stop_reason
            break
        columns.append(column)
        step = len(columns) - 1
        if text_open:
            if column[-1] == layout.eot:
                text_open = False
            elif column[-1] < layout.eot:
                yield TextPiece(step, column[-1])
        if frames_open and step >= delay + n_frames:
            codes = strat.complete_frame(layout, columns, n_frames)
            if codes is None:
                frames_open = False
            else:
                yield FramePiece(step, n_frames, codes)
                n_frames += 1
        if max_steps is not None and len(columns) >= max_steps:
            reason = "max_steps"
            break
        if cache.length >= lm.config.block_size:
            reason = "context"
            break
        ids = rule.feed(column).to(device)
    grid = torch.tensor(columns, dtype=torch.long).T if columns else torch.empty(layout.n_streams, 0, dtype=torch.long)
    text_ids, frames = strat.extract(layout, grid)
    yield Done(GenerationResult(grid, text_ids, frames, reason, task, strat.name, rule.audio_output))


def _sample(
    out: OmniOutput, rule: StepRule, sampling: SamplingConfig, generator: torch.Generator | None
) -> tuple[list[int] | None, int]:
    """Ids of the last position (the forward computed only the text row's text logits and the audio row's
    audio logits): (A audio ids or None, text id; pad_t when the text logits were skipped, as the rule forces)."""
    if not rule.audio_output:
        return None, int(sample(out.text_logits[0, -1:], sampling, generator).item())
    parts = [sample(out.audio_logits[0, :, -1], sampling, generator)]  # (A,) from (A, Va)
    if out.text_logits is not None:
        parts.append(sample(out.text_logits[0, -1:], sampling, generator))  # (1,) from (1, Vt)
    ids = torch.cat(parts).tolist()
    return ids[: rule.layout.audio_streams], ids[-1] if out.text_logits is not None else rule.layout.pad_t
