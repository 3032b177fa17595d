"""Scheme 1 (paper 3.2, "audio generation with text instruction"): text and every audio stream emit the same
step; codec frame k sits in column k on all streams (all delays 0)."""

from __future__ import annotations

from omnivox.core.kernel.strategies.base import DecodingStrategy
from omnivox.core.kernel.tokens import TokenLayout


class ParallelStrategy(DecodingStrategy):
    name = "parallel"
    description = "all streams at the same step (scheme 1, no delay)"

    def delays(self, layout: TokenLayout) -> tuple[int, ...]:
        return (0,) * layout.audio_streams
