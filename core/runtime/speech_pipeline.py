"""The speech pipeline, built once for `omnivox chat`, `listen` and `serve`:

    source(s) -> [VAD] -> [encoder] -> LM + strategy -> [HoldGuesses] -> [stages after the LM] -> [codec] -> sink(s)

HoldGuesses (core/runtime/guesses.py) comes with a VAD that speculates: its guessed turns' answers wait there.

Several sources are chained in order (each after the first passes the events of the ones before it through, as
a `TransportInput` does); several sinks each read what the last middle stage sends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omnivox.core.runtime.guesses import HoldGuesses
from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
from omnivox.core.runtime.pipeline import Pipeline
from omnivox.core.runtime.stage import Stage


def speech_pipeline(sources: Sequence[Stage], *, model, sinks: Sequence[Stage] = (), encoder=None, codec=None,
                    vad: Stage | None = None, lm: Mapping[str, Any] | None = None,
                    after_lm: Sequence[Stage] = ()) -> Pipeline:
    """A Pipeline answering what `sources` send with `model`: `encoder` (an AudioEncoder; None: text in only) and
    `codec` (a Codec; None: text out only) get their stages; `lm`: the LMStage's keyword params (`strategy`,
    default the model's declared one; `task`, `max_steps`, sampling, `int8`, ...); `after_lm`: stages between the
    LM and the codec (they see text as soon as the LM makes it, e.g. a transcript printer)."""
    lm = dict(lm or {})
    middle: list[Stage] = [] if vad is None else [vad]
    if encoder is not None:
        middle.append(EncoderStage(encoder))
    middle.append(LMStage(lm.pop("strategy", None), model=model, **lm))
    if getattr(vad, "speculate", None) is not None:
        middle.append(HoldGuesses())
    middle += after_lm
    if codec is not None:
        middle.append(CodecStage(codec))
    last = middle[-1].name
    return Pipeline([*sources, *middle, *sinks], inputs={sink.name: [last] for sink in sinks})
