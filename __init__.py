"""omnivox: streaming speech agents that hear and talk while thinking (Mini-Omni as plugins).

The public API lives here; heavy modules load lazily, so `import omnivox` stays cheap.
Model: `OmniModel`, `OmniLM`, `OmniConfig`, `TokenLayout`, `generate`, `stream`.
Runtime: `Stage`, `Pipeline`, `Bus`, `events` (every event type), `testing` (the stage test helper).
Plugins: `hookimpl` (decorate your `register_*` hooks), `hookspecs`, `create` (build a registered component).
"""

__version__ = "0.1.0"

_LAZY = {
    "OmniModel": "omnivox.core.kernel.checkpoint",
    "OmniLM": "omnivox.core.kernel.model",
    "OmniConfig": "omnivox.core.kernel.config",
    "TokenLayout": "omnivox.core.kernel.tokens",
    "generate": "omnivox.core.kernel.generation",
    "stream": "omnivox.core.kernel.generation",
    "Stage": "omnivox.core.runtime.stage",
    "Pipeline": "omnivox.core.runtime.pipeline",
    "Bus": "omnivox.core.runtime.bus",
    "hookimpl": "omnivox.core.contracts.hookspecs",
    "create": "omnivox.core.contracts.manager",
}
_MODULES = {
    "events": "omnivox.core.runtime.events",
    "testing": "omnivox.core.runtime.testing",
    "hookspecs": "omnivox.core.contracts.hookspecs",
}


def __getattr__(name):
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'omnivox' has no attribute {name!r}")


__all__ = sorted(_LAZY) + sorted(_MODULES) + ["__version__"]
