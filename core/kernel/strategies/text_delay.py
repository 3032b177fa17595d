"""Scheme 2 (paper 3.2, text-delay parallel decoding): audio stream i lags the text by i + 1 steps, so frame
k is complete at column A + k (column 7 + k for SNAC's 7 slots). The released Mini-Omni learned this layout;
upstream's `reconscruct_snac` drops the first i + 1 tokens of stream i."""

from __future__ import annotations

from omnivox.core.kernel.strategies.base import DecodingStrategy
from omnivox.core.kernel.tokens import TokenLayout


class TextDelayStrategy(DecodingStrategy):
    name = "text-delay"
    description = "audio stream i lags text by i+1 steps (scheme 2, Mini-Omni's layout)"

    def delays(self, layout: TokenLayout) -> tuple[int, ...]:
        return tuple(range(1, layout.audio_streams + 1))
