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
    "TextDelayStrategy", "answer_text", "declared_strategy", "get_strategy", "teacher_forcing",
]


def get_strategy(strategy: str | DecodingStrategy) -> DecodingStrategy:
    """A strategy object, or the one registered under `strategy` (unknown names list the valid ones)."""
    if isinstance(strategy, DecodingStrategy):
        return strategy
    from omnivox.core.contracts.manager import create

    return create("strategies", strategy)


def declared_strategy(model, task: str | None = None) -> DecodingStrategy:
    """The strategy `model` declares (its config's `decoding`), or text-delay when it declares none or the declared
    one cannot decode `task` (None: no task given). What a stage, a conversation or `generate` use when the caller
    names no strategy."""
    lm = model.lm if hasattr(model, "lm") else model  # OmniModel or OmniLM
    strategy = get_strategy(lm.config.decoding or "text-delay")
    if task is not None and task not in strategy.tasks:
        return get_strategy("text-delay")
    return strategy
