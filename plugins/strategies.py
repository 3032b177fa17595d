"""Built-in decoding strategies: the three Mini-Omni schemes."""

from __future__ import annotations

from omnivox.core.contracts.hookspecs import hookimpl
from omnivox.core.kernel.strategies import BatchParallelStrategy, ParallelStrategy, TextDelayStrategy


@hookimpl
def register_strategies(registry):
    for cls in (ParallelStrategy, TextDelayStrategy, BatchParallelStrategy):
        registry.add(cls.name, cls, description=cls.description)
