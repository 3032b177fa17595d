"""Streaming input for any encoder: features computed chunk by chunk, so that they can be computed while the
user is still speaking (docs/streaming_input.md).

    audio (n samples at the encoder's rate) ──► chunks of `chunk_ms` ──► chunk k: the inner encoder over
    [its `context_ms` of audio before it + the chunk] ──► keep the chunk's own frames ──► concatenated (T, F)

A Whisper encoder attends over its whole window, so features of the whole utterance differ from features of the
audio heard so far. A `ChunkedEncoder` defines its features as the concatenation above instead: chunk k depends
only on audio up to its own end, so it is final as soon as that audio has arrived (`chunk_ready`), and the LM
can prefill it during speech. `encode` (whole audio at once, as `omnivox chat` and training do) and the chunks
computed one by one during a turn (core/runtime/model_stages.py EncoderStage) give the same numbers; a model
answers from these features as well as it was trained for them (the accuracy study is in the document)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from omnivox.core import audio
from omnivox.core.errors import ConfigError, InputError


def parse_stream_input(spec: str) -> tuple[int, int]:
    """'CHUNK_MS[:CONTEXT_MS]' (a CLI's --stream-input) -> (chunk_ms, context_ms); context defaults to 2 chunks."""
    try:
        parts = [int(p) for p in spec.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ConfigError(f"--stream-input {spec!r} is not CHUNK_MS[:CONTEXT_MS]",
                          "give milliseconds, e.g. --stream-input 500:1500")
    return parts[0], parts[1] if len(parts) == 2 else 2 * parts[0]


def chunked(encoder, stream_input: str | int) -> ChunkedEncoder:
    """`encoder` made streaming by a `stream_input` setting ('CHUNK_MS[:CONTEXT_MS]', or the chunk in ms)."""
    chunk_ms, context_ms = parse_stream_input(str(stream_input))
    return ChunkedEncoder(encoder, chunk_ms=chunk_ms, context_ms=context_ms)


def streamable(factory: Callable[..., Any]) -> Callable[..., Any]:
    """An encoder plugin's `factory` that also takes `stream_input` (None: the plugin's own features), shown in its
    signature so that recipe and pipeline checks accept it."""
    if "stream_input" in inspect.signature(factory).parameters:
        return factory

    @functools.wraps(factory)
    def build(*args, stream_input: str | int | None = None, **kwargs):
        encoder = factory(*args, **kwargs)
        return encoder if stream_input is None else chunked(encoder, stream_input)

    params = list(inspect.signature(factory).parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("stream_input", inspect.Parameter.KEYWORD_ONLY, default=None))
    build.__signature__ = inspect.signature(factory).replace(parameters=params)
    try:  # the factory's own parameter types, which config checks read (a class's are those of its __init__)
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the checks then look at names only
        hints = {}
    build.__annotations__ = {**hints, "stream_input": str | int | None}
    return build


class ChunkedEncoder:
    """`AudioEncoder` (core/contracts/encoder.py) over `inner`, whose features are computed in chunks of
    `chunk_ms`, each with `context_ms` of the audio before it (see the module docstring). T is the inner
    encoder's frame count for the same audio."""

    def __init__(self, inner, *, chunk_ms: int = 500, context_ms: int = 1500):
        samples_per_frame = inner.sample_rate / inner.frame_rate
        frame_ms = 1000 / inner.frame_rate
        if samples_per_frame != int(samples_per_frame):
            raise ConfigError(f"the encoder's frames are {samples_per_frame} samples long",
                              "streaming input needs an encoder whose frames are a whole number of samples")
        for name, value in (("chunk_ms", chunk_ms), ("context_ms", context_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (frame_ms if name == "chunk_ms" else 0):
                raise ConfigError(f"streaming input: {name}={value!r}",
                                  f"give whole milliseconds (chunk_ms at least one frame, {frame_ms:g} ms)")
        self.inner = inner
        self.sample_rate, self.frame_rate = inner.sample_rate, inner.frame_rate
        self.samples_per_frame = int(samples_per_frame)
        self.chunk_frames = max(1, round(chunk_ms / frame_ms))  # F
        self.context_frames = round(context_ms / frame_ms)  # C
        self.chunk_ms, self.context_ms = chunk_ms, context_ms

    @property
    def feature_dim(self) -> int:
        return self.inner.feature_dim

    def num_frames(self, num_samples: int, sample_rate: int) -> int:
        return self.inner.num_frames(num_samples, sample_rate)

    @property
    def setting(self) -> str:
        """'CHUNK_MS:CONTEXT_MS', as `stream_input` takes it."""
        return f"{self.chunk_ms}:{self.context_ms}"

    def encode(self, pcm: Any, sample_rate: int) -> torch.Tensor:
        """PCM -> (T, F): every chunk (the last one ending with the audio), concatenated."""
        x = audio.convert(pcm, sample_rate, to_rate=self.sample_rate, mono=True, what="audio for the encoder")
        return self.encode_from(x, 0)

    def encode_from(self, x: np.ndarray, first: int) -> torch.Tensor:
        """(T - first * F, feature_dim): chunks `first`.. of the whole utterance `x` (mono, at the encoder's rate),
        the last one ending with it; what is left at the end of a turn whose first chunks were encoded early."""
        chunks = -(-self.num_frames(len(x), self.sample_rate) // self.chunk_frames)
        return torch.cat([self.encode_chunk(x, k, last=k == chunks - 1) for k in range(first, chunks)])

    def chunk_ready(self, k: int, received: int) -> bool:
        """Chunk k is final (not the utterance's last) once `received` samples (at the encoder's rate) arrived:
        its audio and one frame more, so the utterance has frames after it."""
        return received >= ((k + 1) * self.chunk_frames + 1) * self.samples_per_frame

    def encode_chunk(self, x: np.ndarray, k: int, *, last: bool = False) -> torch.Tensor:
        """(F, feature_dim) features of chunk k of `x` (mono, at the encoder's rate, at least up to the chunk's
        end); `last`: the chunk the utterance ends in, its frames up to the utterance's end (T)."""
        spf, first = self.samples_per_frame, k * self.chunk_frames
        start = max(0, first - self.context_frames)  # the window's first frame
        if last:
            total = self.num_frames(len(x), self.sample_rate)
            end_sample, stop = len(x), total
        else:
            end_sample, stop = (first + self.chunk_frames) * spf, first + self.chunk_frames
        if stop <= first or end_sample > len(x):
            raise InputError(f"chunk {k} is not within the {len(x)} samples given",
                             "encode a chunk once its audio has arrived (chunk_ready)")
        window = self.inner.encode(x[start * spf:end_sample], self.sample_rate)  # (T_w, F)
        kept = window[first - start:stop - start]
        if kept.shape[0] < stop - first:  # the inner encoder's frame rounding of this window: repeat its last frame
            kept = torch.cat([kept, kept[-1:].expand(stop - first - kept.shape[0], -1)])
        return kept
