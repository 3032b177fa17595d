"""A pipeline: stages running concurrently on one bus, built from Python or from a YAML file.

YAML format (recipes/pipelines/*.yaml):

    name: chat                       # optional
    stages:
      - name: mic                    # optional, default: the plugin name; unique
        plugin: audio_inputs/file    # <kind>/<registered name>
        params: {path: question.wav} # keyword arguments of the plugin's factory, checked against its signature
      - name: vad
        plugin: vad/silero
        inputs: [mic]                # optional, default: the previous stage (a source kind: none)
        queue_size: 64               # optional, bound of this stage's input queue
        overflow: drop_oldest        # optional, block | drop_oldest (default: per kind, see STAGE_KINDS)
      - {plugin: encoders/whisper}
      - {plugin: strategies/batch_parallel, params: {checkpoint: ckpt/}}
      - {plugin: codecs/snac}
      - {plugin: audio_outputs/file, params: {path: answer.wav}}

Kinds are the plugin registries of omnivox.core.contracts.manager. A factory may return a Stage; a factory that
returns a component (an encoder, a strategy, a codec) is wrapped by the stage adapter registered for its
kind (`register_stage_adapter`). Every mistake raises ConfigError naming the key and the valid choices.

Routing: stage i reads what its `inputs` send (default: stage i-1; the first stage of a Python-built
pipeline reads events fed with `feed`/`run(events)`, sent as INPUT). A run ends when every source has
finished and every queued event has been handled; then Shutdown stops the stages.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnivox.core.errors import ConfigError
from omnivox.core.runtime.bus import OVERFLOW_POLICIES, Bus
from omnivox.core.runtime.events import Error, Event, Metrics, Shutdown
from omnivox.core.runtime.metrics import MetricsCollector
from omnivox.core.runtime.stage import Stage
from omnivox.core.yaml_files import read_yaml

INPUT = "input"  # sender name of events fed into a pipeline from outside


@dataclass(frozen=True)
class StageKind:
    """The schema of one stage kind: whether it is a source and its input queue's default overflow policy."""

    source: bool
    overflow: str
    description: str


STAGE_KINDS: dict[str, StageKind] = {
    "audio_inputs": StageKind(True, "block", "audio source (file, microphone, network)"),
    "vad": StageKind(False, "drop_oldest", "voice activity / turn detection on live audio"),
    "encoders": StageKind(False, "block", "audio encoder (+ adapter)"),
    "strategies": StageKind(False, "block", "LM + decoding strategy"),
    "codecs": StageKind(False, "block", "codec vocoder: audio codes -> PCM"),
    "audio_outputs": StageKind(False, "block", "audio sink (file, speaker, network)"),
}

# kind -> adapter(component, *, name, **params) -> Stage, or "module:attribute" imported on first use. Stage
# params the factory does not take go to the adapter (its signature is checked like a factory's).
STAGE_ADAPTERS: dict[str, Callable[..., Stage] | str] = {
    "encoders": "omnivox.core.runtime.model_stages:EncoderStage",
    "strategies": "omnivox.core.runtime.model_stages:LMStage",
    "codecs": "omnivox.core.runtime.model_stages:CodecStage",
}


def register_stage_adapter(kind: str, adapter: Callable[..., Stage] | str) -> None:
    """Make factories of `kind` that return a component (not a Stage) usable in pipelines."""
    if kind not in STAGE_KINDS:
        raise ConfigError(f"no stage kind {kind!r}", f"use one of: {', '.join(STAGE_KINDS)}")
    STAGE_ADAPTERS[kind] = adapter


# ------------------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class Key:
    types: tuple[type, ...]
    required: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""


PIPELINE_KEYS = {
    "name": Key((str,), help="pipeline name"),
    "description": Key((str,), help="free text"),
    "stages": Key((list,), required=True, help="list of stages, in order"),
}
STAGE_KEYS = {
    "name": Key((str,), help="unique stage name (default: the plugin name)"),
    "plugin": Key((str,), required=True, help="<kind>/<name>, e.g. codecs/snac"),
    "params": Key((dict,), help="keyword arguments of the plugin's factory"),
    "inputs": Key((list,), help="names of the stages this one reads from"),
    "queue_size": Key((int,), help="bound of the stage's input queue"),
    "overflow": Key((str,), choices=OVERFLOW_POLICIES, help="what a full input queue does"),
}


def check_keys(where: str, mapping: Any, schema: Mapping[str, Key]) -> None:
    """Raise ConfigError for a non-mapping, an unknown key, a missing key, a wrong type or a bad choice."""
    valid = ", ".join(schema)
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"{where or 'pipeline'}: expected a mapping, got {_kind_of(mapping)}",
            f"write a mapping with keys: {valid}",
        )
    for key in mapping:
        if key not in schema:
            raise ConfigError(
                f"{_join(where, key)}: unknown key{_did_you_mean(str(key), schema)}", f"valid keys: {valid}"
            )
    for key, spec in schema.items():
        if key not in mapping:
            if spec.required:
                raise ConfigError(
                    f"{where or 'pipeline'}: missing key {key!r} ({spec.help})", f"add `{key}:`; valid keys: {valid}"
                )
            continue
        value = mapping[key]
        if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
            expected = " or ".join(t.__name__ for t in spec.types)
            raise ConfigError(
                f"{_join(where, key)}: expected {expected}, got {_kind_of(value)}", f"{key} is the {spec.help}"
            )
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                f"{_join(where, key)}: {value!r} is not a valid choice", f"use one of: {', '.join(spec.choices)}"
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def check_params(
    where: str,
    label: str,
    factory: Callable[..., Any],
    params: Mapping[str, Any],
    *,
    adapter: bool = False,
    also: str = "",
) -> dict:
    """Check `params` against `factory`'s signature (names, required ones, annotated types); returns them
    with str converted to Path where a Path is expected. `adapter`: `factory` is a stage adapter, whose
    first parameter (the component) and `name` the pipeline passes itself; `also`: other valid parameters
    to list in the error."""
    accepted, hints, open_ended = _signature(factory, adapter)
    described = _describe(accepted, hints)
    if also:
        described = f"{described}; {also}"
    result = dict(params)
    for key, value in params.items():
        if key not in accepted:
            if open_ended:
                continue
            raise ConfigError(
                f"{where}.{key}: unknown parameter of {label}{_did_you_mean(key, accepted)}",
                f"valid parameters: {described}",
            )
        hint = hints.get(key)
        if hint is not None:
            ok, converted = _conform(value, hint)
            if not ok:
                choices = _literal_choices(hint)
                fix = f"use one of: {', '.join(map(repr, choices))}" if choices else f"valid parameters: {described}"
                raise ConfigError(f"{where}.{key}: expected {_type_name(hint)}, got {_kind_of(value)}", fix)
            result[key] = converted
    for name, param in accepted.items():
        if param.default is param.empty and name not in params:
            raise ConfigError(
                f"{where}: missing parameter {name!r} of {label}",
                f"add it under params; valid parameters: {described}",
            )
    return result


def _signature(fn: Callable[..., Any], adapter: bool = False) -> tuple[dict, dict, bool]:
    """(keyword parameters by name, their type hints, whether **kwargs is accepted)."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    accepted = {
        n: p
        for n, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
    }
    if adapter:  # the pipeline passes the component (first parameter) and the stage name
        accepted = {n: p for i, (n, p) in enumerate(accepted.items()) if i > 0 and n != "name"}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return accepted, hints, open_ended


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(matches, value converted where a str names a Path) for the annotation `hint`."""
    if hint is Any:
        return True, value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for member in typing.get_args(hint):
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is type(None):
        return value is None, value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(hint, type) and issubclass(hint, Path):
        if isinstance(value, (str, Path)):
            return True, Path(value)
        return False, value
    check = origin if origin is not None else hint
    if check in (list, tuple, dict, set, str, bool):
        return isinstance(value, check), value
    return True, value  # a type YAML cannot express: left to the factory


def _literal_choices(hint: Any) -> tuple:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    for member in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(member) is typing.Literal:
            return typing.get_args(member)
    return ()


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _describe(accepted: Mapping[str, inspect.Parameter], hints: Mapping[str, Any]) -> str:
    return ", ".join(_describe_param(p, hints.get(n)) for n, p in accepted.items()) or "(none)"


def _describe_param(param: inspect.Parameter, hint: Any) -> str:
    text = param.name if hint is None else f"{param.name} ({_type_name(hint)})"
    return text if param.default is param.empty else f"{text} = {param.default!r}"


def _kind_of(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """Stages on one bus. `await pipeline.run()` starts them, feeds `events`, waits for the sources to
    finish and the queues to drain, then shuts down; it returns the Metrics of the finished turns.
    A Pipeline runs once."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        inputs: Mapping[str, Sequence[str]] | None = None,
        bus: Bus | None = None,
    ):
        if not stages:
            raise ConfigError("a pipeline needs at least one stage", "add stages")
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"stage name {name!r} is used twice", "give each stage a unique name")
        self.inputs: dict[str, list[str]] = {}
        for i, stage in enumerate(self.stages):
            default = [INPUT] if i == 0 else [names[i - 1]]
            wired = list((inputs or {}).get(stage.name, default))
            for sender in wired:
                if sender not in names and sender != INPUT:
                    raise ConfigError(
                        f"stage {stage.name!r} reads from unknown stage {sender!r}",
                        f"valid stages: {', '.join(names)}",
                    )
            self.inputs[stage.name] = wired
        for name in inputs or {}:
            if name not in names:
                raise ConfigError(f"inputs given for unknown stage {name!r}", f"valid stages: {', '.join(names)}")
        self.bus = bus or Bus()
        self.sink = self.stages[-1]
        self.metrics = MetricsCollector(self.stages)
        self.errors: list[Error] = []
        for stage in self.stages:
            stage.attach(self.bus, self.inputs[stage.name])
        # The sink sees a turn's TurnEnd after every stage (itself included) has finished that turn.
        self.sink.observer = self._observe
        self._tasks: list[asyncio.Task] = []
        self._started = False

    # ---- building from configuration ----------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, *, plugins=None, overrides: Mapping[str, Any] | None = None) -> Pipeline:
        """Build from a YAML file; `overrides` maps "stage.param" to a value (the CLI's --set)."""
        path = Path(path)
        config = read_yaml(path, "pipeline file", "pass the path of a pipeline YAML (see recipes/pipelines/)")
        try:
            return cls.from_config(config, plugins=plugins, overrides=overrides)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc.problem}", exc.fix) from None

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        plugins=None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Pipeline:
        """Build from the parsed YAML mapping, resolving plugins through `plugins` (a PluginManager;
        default: the process-wide one)."""
        if plugins is None:
            from omnivox.core.contracts.manager import get_plugin_manager

            plugins = get_plugin_manager()
        check_keys("", config, PIPELINE_KEYS)
        entries = config["stages"]
        if not entries:
            raise ConfigError("stages: the list is empty", "add at least one stage")
        specs = []
        for i, entry in enumerate(entries):
            at = f"stages[{i}]"
            check_keys(at, entry, STAGE_KEYS)
            kind, plugin_name = _split_plugin(f"{at}.plugin", entry["plugin"])
            specs.append((at, entry.get("name", plugin_name), kind, plugin_name, dict(entry.get("params") or {})))
        names: list[str] = []
        for at, name, *_ in specs:
            if name in names:
                raise ConfigError(
                    f"{at}.name: stage name {name!r} is used twice",
                    "give each stage a unique name (`name:` defaults to the plugin name)",
                )
            names.append(name)
        _apply_overrides(specs, overrides or {}, names)

        stages: list[Stage] = []
        inputs: dict[str, list[str]] = {}
        for i, ((at, name, kind, plugin_name, params), entry) in enumerate(zip(specs, entries, strict=True)):
            schema = STAGE_KINDS[kind]
            wired = entry.get("inputs")
            if wired is None:
                wired = [] if schema.source else [INPUT] if i == 0 else [names[i - 1]]
            for sender in wired:
                if sender not in names and sender != INPUT:
                    raise ConfigError(
                        f"{at}.inputs: unknown stage {sender!r}{_did_you_mean(str(sender), names)}",
                        f"valid stages: {', '.join(names)}",
                    )
            stage = _build_stage(at, name, kind, plugin_name, params, plugins)
            stage.overflow = entry.get("overflow", schema.overflow)
            if "queue_size" in entry:
                if entry["queue_size"] < 1:
                    raise ConfigError(f"{at}.queue_size: must be >= 1, got {entry['queue_size']}", "use e.g. 64")
                stage.queue_size = entry["queue_size"]
            stages.append(stage)
            inputs[name] = list(wired)
        return cls(stages, inputs=inputs)

    # ---- running ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Set up every stage, then start them."""
        if self._started:
            raise RuntimeError("a Pipeline runs once; build a new one")
        self._started = True
        ready: list[Stage] = []
        try:
            for stage in self.stages:
                await stage.setup()
                ready.append(stage)
        except BaseException:
            for stage in reversed(ready):
                await stage.teardown()
            raise
        self._tasks = [asyncio.create_task(s.run(), name=f"stage:{s.name}") for s in self.stages]

    async def feed(self, event: Event) -> None:
        """Publish `event` as coming from outside (read by stages whose inputs include INPUT)."""
        await self.bus.publish(event, sender=INPUT)

    async def drain(self) -> None:
        """Wait until every source has finished and every delivered event has been handled."""
        for stage in self.stages:
            await stage.wait_source_done()
        await self.bus.join()

    async def stop(self, timeout: float = 5.0) -> list[str]:
        """Publish Shutdown, wait for the stages to stop, tear them down. Stages still running after
        `timeout` s are cancelled; their names are returned."""
        await self.bus.publish(Shutdown(source="pipeline"))
        stuck: list[str] = []
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                stuck.append(task.get_name().removeprefix("stage:"))
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for stage in reversed(self.stages):
            await stage.teardown()
        return stuck

    async def run(self, events: Iterable[Event] = ()) -> list[Metrics]:
        """start, feed `events`, drain, stop; returns the Metrics of the turns that ended."""
        await self.start()
        driver = asyncio.create_task(self._feed_and_drain(events))
        try:
            await asyncio.wait([driver, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            if not driver.done():  # a stage loop ended before the pipeline drained: a bug, surface it
                broken = next(t for t in self._tasks if t.done())
                cause = None if broken.cancelled() else broken.exception()
                raise RuntimeError(f"{broken.get_name()} stopped unexpectedly") from cause
            driver.result()
        finally:
            driver.cancel()
            await self.stop()
        return list(self.metrics.turns)

    async def _feed_and_drain(self, events: Iterable[Event]) -> None:
        for event in events:
            await self.feed(event)
        await self.drain()

    def _observe(self, event: Event) -> Metrics | None:
        if isinstance(event, Error):
            self.errors.append(event)
        return self.metrics.observe(event)


def _split_plugin(at: str, value: str) -> tuple[str, str]:
    kinds = ", ".join(STAGE_KINDS)
    if value.count("/") != 1:
        raise ConfigError(f"{at}: {value!r} is not <kind>/<name>", f"write e.g. codecs/snac; kinds: {kinds}")
    kind, name = value.split("/")
    if kind not in STAGE_KINDS:
        raise ConfigError(
            f"{at}: unknown stage kind {kind!r}{_did_you_mean(kind, STAGE_KINDS)}", f"valid kinds: {kinds}"
        )
    return kind, name


def _apply_overrides(specs: list, overrides: Mapping[str, Any], names: list[str]) -> None:
    for dotted, value in overrides.items():
        stage, _, param = dotted.partition(".")
        if not param:
            raise ConfigError(f"override {dotted!r} is not <stage>.<param>", "write e.g. vad.threshold=0.6")
        if stage not in names:
            raise ConfigError(
                f"override {dotted!r}: unknown stage {stage!r}{_did_you_mean(stage, names)}",
                f"valid stages: {', '.join(names)}",
            )
        specs[names.index(stage)][4][param] = value


def _build_stage(at: str, name: str, kind: str, plugin_name: str, params: dict, plugins) -> Stage:
    registry = plugins.registry(kind)
    if plugin_name not in registry.entries:
        valid = sorted(registry.entries)
        skipped = "; ".join(f"{p}: {why}" for p, why in plugins.skipped.items())
        raise ConfigError(
            f"{at}.plugin: unknown {kind} plugin {plugin_name!r}{_did_you_mean(plugin_name, valid)}",
            f"valid {kind}: {', '.join(valid) if valid else '(none registered)'}"
            + (f"; skipped plugins: {skipped}" if skipped else "")
            + ("" if valid else "; install or enable a plugin that registers one"),
        )
    factory = registry.entries[plugin_name].factory
    adapter = _adapter(kind)
    label = f"{kind}/{plugin_name}"
    # With an adapter, parameters the factory does not take go to the adapter (e.g. an LM checkpoint).
    own, rest = dict(params), {}
    if adapter is not None:
        accepted, hints, open_ended = _signature(factory)
        if not open_ended:
            own = {k: v for k, v in params.items() if k in accepted}
            rest = {k: v for k, v in params.items() if k not in accepted}
        stage_accepted, stage_hints, _ = _signature(adapter, adapter=True)
        stage_label = f"the {kind} stage adapter"
        own = check_params(
            f"{at}.params", label, factory, own, also=f"of {stage_label}: {_describe(stage_accepted, stage_hints)}"
        )
        rest = check_params(
            f"{at}.params", stage_label, adapter, rest, adapter=True, also=f"of {label}: {_describe(accepted, hints)}"
        )
    else:
        own = check_params(f"{at}.params", label, factory, own)
    component = factory(**own)
    if isinstance(component, Stage):
        if rest:
            raise ConfigError(
                f"{at}.params: {label} builds a Stage, which takes no parameter {sorted(rest)[0]!r}",
                "remove it, or check the plugin's parameters",
            )
        component.name = name
        return component
    if adapter is None:
        raise ConfigError(
            f"{at}.plugin: {label} builds a {type(component).__name__}, which is not a Stage, "
            f"and no stage adapter is registered for kind {kind!r}",
            "use a plugin whose factory returns a Stage, or register_stage_adapter(kind, adapter)",
        )
    return adapter(component, name=name, **rest)


def _adapter(kind: str) -> Callable[..., Stage] | None:
    adapter = STAGE_ADAPTERS.get(kind)
    if isinstance(adapter, str):
        module, _, attribute = adapter.partition(":")
        adapter = STAGE_ADAPTERS[kind] = getattr(importlib.import_module(module), attribute)
    return adapter
