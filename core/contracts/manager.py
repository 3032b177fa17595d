"""Plugin manager: loads built-in plugins and third-party entry points (group `omnivox`) through pluggy,
and resolves component names to factories.

`OMNIVOX_LOAD_PLUGINS` (comma-separated plugin names; empty string = none) limits which plugins load:
built-ins are named by module tail (`snac_codec`), third-party ones by entry-point name."""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from omnivox.core.contracts import hookspecs
from omnivox.core.errors import PluginError, unknown_name

KINDS = ("audio_inputs", "vad", "encoders", "strategies", "codecs", "audio_outputs", "datasets", "models",
         "transports", "stage_adapters")
_SINGULAR = {
    "audio_inputs": "audio input",
    "vad": "VAD",
    "encoders": "encoder",
    "strategies": "strategy",
    "codecs": "codec",
    "audio_outputs": "audio output",
    "datasets": "dataset",
    "models": "model",
    "transports": "transport",
    "stage_adapters": "stage adapter",
}

# Built-in plugins, registered exactly like third-party ones. Value: the pip extra a missing import needs.
BUILTIN_PLUGINS: dict[str, str | None] = {
    "omnivox.plugins.strategies": None,
    "omnivox.plugins.whisper_encoder": None,
    "omnivox.plugins.fw_encoder": None,  # faster-whisper: a core dependency (the default model's encoder)
    "omnivox.plugins.snac_codec": None,
    "omnivox.plugins.mimi_codec": None,
    "omnivox.plugins.mel_codec": None,
    "omnivox.plugins.audio_files": None,
    "omnivox.plugins.text_input": None,
    "omnivox.training.datasets": None,
    "omnivox.plugins.random_models": None,
    "omnivox.plugins.demo_model": None,
    "omnivox.plugins.mqtt": "mqtt",
    "omnivox.plugins.http": "http",
    "omnivox.plugins.sounddevice_io": "audio",
    "omnivox.plugins.silero_vad": "vad",
}


@dataclass
class Entry:
    """A named factory and what its plugin declares about it (see `Registry.add`)."""

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    loads: Callable[[str], bool] | None = None
    exports: Callable[[dict, Path], dict | None] | None = None
    mini_omni: dict | None = None
    components: dict | str | Path | None = None


@dataclass
class Registry:
    """Named factories of one kind, filled by a `register_<kind>` hook."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)
    _current_plugin: str = "?"

    def add(self, name: str, factory: Callable[..., Any], *, description: str = "",
            loads: Callable[[str], bool] | None = None, exports: Callable[[dict, Path], dict | None] | None = None,
            mini_omni: dict | None = None, components: dict | str | Path | None = None) -> None:
        """Register `factory` as `name`. What an encoder or codec declares (core/runtime/speech_kit.py reads it):
        `loads(value)`: whether a bare `--codec VALUE` / `--encoder VALUE` (a directory, a hub id) is a model of
        this one's; `exports(params, directory)`: for a component whose weights exist nowhere else (e.g. random
        ones of a `config`), write them into `directory` and return the params that load them from there (None:
        nothing to write); `mini_omni`: {"params", "local"}, this component as a Mini-Omni checkpoint's own when
        it records no components. A model declares `components`: the encoder and codec it was trained with, a
        record in components.json's form or the export directory that holds one. Every encoder's factory also
        takes `stream_input: "CHUNK_MS[:CONTEXT_MS]"` (core/chunked_encoder.py `streamable`), so a recipe can train
        a model on the chunked features streaming input gives, and its export records them."""
        if self.kind == "encoders":
            from omnivox.core.chunked_encoder import streamable

            factory = streamable(factory)
        if name in self.entries:
            other = self.entries[name].plugin
            raise PluginError(
                f"{self.kind} name {name!r} registered twice (by {other} and {self._current_plugin})",
                "rename one of them or limit loading with OMNIVOX_LOAD_PLUGINS",
            )
        self.entries[name] = Entry(name, factory, description, self._current_plugin, loads=loads, exports=exports,
                                   mini_omni=mini_omni, components=components)

    def loader(self, value: str) -> Entry | None:
        """The first entry whose `loads` declares it loads `value`, or None."""
        return next((e for e in self.entries.values() if e.loads is not None and e.loads(value)), None)

    def get(self, name: str) -> Entry:
        if name not in self.entries:
            raise unknown_name(_SINGULAR[self.kind], name, self.entries)
        return self.entries[name]

    def create(self, name: str, **params: Any) -> Any:
        """Build component `name` with `params`; a wrong parameter is reported against the name."""
        entry = self.get(name)
        try:
            signature = inspect.signature(entry.factory)
        except (TypeError, ValueError):  # no introspectable signature: let the call check
            signature = None
        if signature is not None:
            try:
                signature.bind(**params)
            except TypeError as exc:
                valid = ", ".join(p for p in signature.parameters if p not in ("self", "args", "kwargs"))
                raise PluginError(
                    f"{_SINGULAR[self.kind]} {name!r}: {exc}", f"its parameters are: {valid or '(none)'}"
                ) from None
        return entry.factory(**params)


class PluginManager:
    """pluggy manager plus the per-kind registries built from its hooks."""

    def __init__(self, load: str | None = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.skipped: dict[str, str] = {}  # plugin name -> why it was not loaded
        self.sources: dict[str, str] = {}  # loaded plugin name -> "built-in" or "<distribution> <version>"
        allowed = _allowed(os.environ.get("OMNIVOX_LOAD_PLUGINS") if load is None else load)
        self._load_builtins(allowed)
        self._load_entry_points(allowed)
        for name in sorted((allowed or set()) - self.sources.keys() - self.skipped.keys()):
            self._skip(name, "named in OMNIVOX_LOAD_PLUGINS, but no plugin has this name")
        self._registries: dict[str, Registry] = {}

    def _load_builtins(self, allowed: set[str] | None) -> None:
        for module_name, extra in BUILTIN_PLUGINS.items():
            short = module_name.rsplit(".", 1)[1]
            if allowed is not None and short not in allowed:
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                self._skip(short, _missing(exc, module_name, extra, "omnivox"))
                continue
            self.pm.register(module, name=short)
            self.sources[short] = "built-in"

    def _load_entry_points(self, allowed: set[str] | None) -> None:
        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            if allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                self._skip(ep.name, f"the name is taken by another plugin ({ep.value} not loaded)")
                continue
            try:
                plugin = ep.load()
            except ImportError as exc:
                self._skip(ep.name, _missing(exc, ep.module, _extra_of(ep), ep.dist.name if ep.dist else None))
                continue
            except Exception as exc:  # a broken third-party plugin must not break omnivox
                self._skip(ep.name, f"import of {ep.value} failed: {type(exc).__name__}: {exc}")
                continue
            if self.pm.is_registered(plugin):
                self._skip(ep.name, f"{ep.value} is already loaded as {self.pm.get_name(plugin)!r}")
                continue
            try:
                self.pm.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                self._skip(ep.name, f"invalid hook implementation: {exc}")
                continue
            self.sources[ep.name] = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value

    def _skip(self, name: str, why: str) -> None:
        self.skipped[name] = why
        warnings.warn(f"omnivox plugin {name!r} skipped: {why}", stacklevel=4)

    def registry(self, kind: str) -> Registry:
        """The registry of `kind` (one of KINDS), built on first use from every plugin's hook."""
        if kind not in KINDS:
            raise unknown_name("plugin kind", kind, KINDS)
        if kind not in self._registries:
            registry = Registry(kind)
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():  # registration order
                registry._current_plugin = impl.plugin_name
                impl.function(registry=registry)
            registry._current_plugin = "?"
            self._registries[kind] = registry
        return self._registries[kind]

    def create(self, kind: str, name: str, **params: Any) -> Any:
        return self.registry(kind).create(name, **params)

    def plugins(self) -> dict[str, dict[str, list[str]]]:
        """Loaded plugin -> {kind: [names it registered]}."""
        result: dict[str, dict[str, list[str]]] = {name: {} for name, _ in self.pm.list_name_plugin()}
        for kind in KINDS:
            for entry in self.registry(kind).entries.values():
                result.setdefault(entry.plugin, {}).setdefault(kind, []).append(entry.name)
        return result


def _allowed(spec: str | None) -> set[str] | None:
    if spec is None:
        return None
    return {part.strip() for part in spec.split(",") if part.strip()}


def _missing(exc: ImportError, module: str, extra: str | None, dist: str | None) -> str:
    """Why importing plugin `module` failed and what to install (the distribution's extra if declared)."""
    missing = getattr(exc, "name", None)
    if not missing:
        return f"import failed: {exc}"
    if missing == module:
        return f"plugin module {module!r} not found (reinstall {dist or 'the package that declares it'})"
    if extra:
        return f"missing module {missing!r}: install the extra: pip install '{dist or 'omnivox'}[{extra}]'"
    needed_by = f" (needed by {dist})" if dist else ""
    return f"missing module {missing!r}: install the package that provides it{needed_by}"


def _extra_of(ep: metadata.EntryPoint) -> str | None:
    extras = getattr(ep, "extras", None) or []
    return extras[0] if extras else None


_DEFAULT: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = PluginManager()
    return _DEFAULT


def reset_plugin_manager() -> None:
    """Forget the cached manager (after installing a plugin, or changing OMNIVOX_LOAD_PLUGINS)."""
    global _DEFAULT
    _DEFAULT = None


def create(kind: str, name: str, **params: Any) -> Any:
    """Build the component `name` of `kind` from the default plugin manager."""
    return get_plugin_manager().create(kind, name, **params)
