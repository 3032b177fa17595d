"""Decoding strategies (token layout + step rule), resolved by name through the `register_strategies` hook."""

from __future__ import annotations

from omnivox.core.kernel.strategies.base import (
    IGNORE_INDEX,
    DecodingStrategy,
    StepRule,
    Target,
    answer_text,
    teacher_forcing,
)
from omnivox.core.kernel.strategies.batch_parallel import BatchParallelStrategy
from omnivox.core.kernel.strategies.parallel import ParallelStrategy
from omnivox.core.kernel.strategies.text_delay import TextDelayStrategy

__all__ = [
    "IGNORE_INDEX", "BatchParallelStrategy", "DecodingStrategy", "ParallelStrategy", "StepRule", "Target",
    "TextDelayStrategy", "answer_text", "get_strategy", "teacher_forcing",
]


def get_strategy(strategy: str | DecodingStrategy) -> DecodingStrategy:
    """A strategy object, or the one registered under `strategy` (unknown names list the valid ones)."""
    if isinstance(strategy, DecodingStrategy):
        return strategy
    from omnivox.core.contracts.manager import create

    return create("strategies", strategy)
