"""omnivox: streaming speech agents that hear and talk while thinking (Mini-Omni as plugins).

Heavy modules load lazily, so `import omnivox` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "OmniModel": "omnivox.core.checkpoint",
    "OmniLM": "omnivox.core.model",
    "OmniConfig": "omnivox.core.config",
    "TokenLayout": "omnivox.core.tokens",
    "generate": "omnivox.core.generation",
    "stream": "omnivox.core.generation",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnivox' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
