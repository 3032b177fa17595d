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
      - {name: lm, plugin: lm/omni, params: {strategy: batch-parallel, checkpoint: ckpt/, task: A1A2}}
      - {plugin: codecs/snac}
      - {plugin: audio_outputs/file, params: {path: answer.wav}}

Kinds (STAGE_KINDS) are plugin registries of omnivox.core.contracts.manager, and `lm`, whose stage core provides
(CORE_STAGES): `lm/omni` decodes with the OmniLM of `checkpoint` and the decoding strategy named by `strategy` (a
plugin of `strategies`; without it, the one the model declares). A plugin factory may return a Stage; a factory that
returns a component (an encoder, a codec) is wrapped by the stage adapter of its kind: the one a plugin registers
through the `register_stage_adapters` hook, else core's own (CORE_ADAPTERS). Every mistake raises ConfigError naming
the key and the valid choices. The old `strategies/<name>` form still loads, with a FutureWarning naming `lm/omni`.

Routing: stage i reads what its `inputs` send (default: stage i-1; the first stage of a Python-built
pipeline reads events fed with `feed`/`run(events)`, sent as INPUT). A run ends when every source has
finished and every queued event has been handled; then Shutdown stops the stages.

Shared state: what stages of one pipeline share without the bus (a transport's running service, found by its
output stage; the PlaybackState of a speaker and a VAD) lives in `pipeline.shared`, a dict each stage gets as
`stage.shared` when attached; nothing is shared between pipelines.
"""

from __future__ import annotations

import asyncio
import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from omnivox.core.config_check import Key, check_keys, check_params, did_you_mean, signature_of
from omnivox.core.errors import ConfigError
from omnivox.core.runtime.bus import OVERFLOW_POLICIES, Bus
from omnivox.core.runtime.events import Error, Event, Metrics, Shutdown
from omnivox.core.runtime.metrics import MetricsCollector
from omnivox.core.runtime.stage import Stage
from omnivox.core.yaml_files import read_yaml

INPUT = "input"  # sender name of events fed into a pipeline from outside


@dataclass(frozen=True)
class StageKind:
    """The schema of one stage kind: whether it is a source and its input queue's default overflow policy.
    `renamed`: a kind kept for old files, (the plugin that replaces it, the parameter its names become)."""

    source: bool
    overflow: str
    description: str
    renamed: tuple[str, str] | None = None


STAGE_KINDS: Mapping[str, StageKind] = MappingProxyType({
    "audio_inputs": StageKind(True, "block", "audio source (file, microphone, network)"),
    "vad": StageKind(False, "drop_oldest", "voice activity / turn detection on live audio"),
    "encoders": StageKind(False, "block", "audio encoder (+ adapter)"),
    "lm": StageKind(False, "block", "language model + decoding strategy"),
    "codecs": StageKind(False, "block", "codec vocoder: audio codes -> PCM"),
    "audio_outputs": StageKind(False, "block", "audio sink (file, speaker, network)"),
    "strategies": StageKind(False, "block", "LM + decoding strategy", renamed=("lm/omni", "strategy")),
})


@dataclass(frozen=True)
class CoreStage:
    """A stage core provides itself: its factory (called with the params and `name`; "module:attribute" is
    imported on first use) and the parameters that name a plugin (parameter -> plugin kind): the stage gets
    that plugin's component, built from the pipeline's plugins."""

    factory: Callable[..., Stage] | str
    description: str
    plugins: Mapping[str, str] = field(default_factory=dict)


# kind -> name -> CoreStage: the stages of the kinds that no plugin registry fills.
CORE_STAGES: Mapping[str, Mapping[str, CoreStage]] = MappingProxyType({
    "lm": MappingProxyType({
        "omni": CoreStage(
            "omnivox.core.runtime.model_stages:LMStage",
            "Mini-Omni's LM (OmniLM) of `checkpoint`, decoding with a strategy",
            MappingProxyType({"strategy": "strategies"}),
        ),
    }),
})

# Core's stage adapters: kind -> "module:attribute" of adapter(component, *, name, **params) -> Stage, imported on
# first use. A plugin's `register_stage_adapters` hook adds one for another kind or replaces one of these (in its
# plugin manager only). Stage params the factory does not take go to the adapter (its signature is checked like a
# factory's).
CORE_ADAPTERS: Mapping[str, str] = MappingProxyType({
    "encoders": "omnivox.core.runtime.model_stages:EncoderStage",
    "strategies": "omnivox.core.runtime.model_stages:LMStage",
    "codecs": "omnivox.core.runtime.model_stages:CodecStage",
})


def stage_kinds() -> dict[str, StageKind]:
    """The stage kinds a pipeline file should use (without the renamed ones)."""
    return {kind: schema for kind, schema in STAGE_KINDS.items() if schema.renamed is None}


# ------------------------------------------------------------------------------------------ schema
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
        self.shared: dict[str, Any] = {}  # this pipeline's shared place (see the module doc)
        for stage in self.stages:
            stage.attach(self.bus, self.inputs[stage.name], self.shared)
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
                        f"{at}.inputs: unknown stage {sender!r}{did_you_mean(str(sender), names)}",
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
    current = stage_kinds()
    kinds = ", ".join(current)
    if value.count("/") != 1:
        raise ConfigError(f"{at}: {value!r} is not <kind>/<name>", f"write e.g. codecs/snac; kinds: {kinds}")
    kind, name = value.split("/")
    if kind not in STAGE_KINDS:
        raise ConfigError(f"{at}: unknown stage kind {kind!r}{did_you_mean(kind, current)}", f"valid kinds: {kinds}")
    return kind, name


def _apply_overrides(specs: list, overrides: Mapping[str, Any], names: list[str]) -> None:
    for dotted, value in overrides.items():
        stage, _, param = dotted.partition(".")
        if not param:
            raise ConfigError(f"override {dotted!r} is not <stage>.<param>", "write e.g. vad.threshold=0.6")
        if stage not in names:
            raise ConfigError(
                f"override {dotted!r}: unknown stage {stage!r}{did_you_mean(stage, names)}",
                f"valid stages: {', '.join(names)}",
            )
        specs[names.index(stage)][4][param] = value


def _build_stage(at: str, name: str, kind: str, plugin_name: str, params: dict, plugins) -> Stage:
    if kind in CORE_STAGES:
        return _build_core_stage(at, name, kind, plugin_name, params, plugins)
    registry = plugins.registry(kind)
    if plugin_name not in registry.entries:
        raise _unknown_plugin(f"{at}.plugin", kind, plugin_name, plugins)
    factory = registry.entries[plugin_name].factory
    adapter = _adapter(kind, plugins)
    label = f"{kind}/{plugin_name}"
    # With an adapter, parameters the factory does not take go to the adapter (e.g. an LM checkpoint).
    own, rest = dict(params), {}
    if adapter is not None:
        accepted = signature_of(factory)
        if not accepted.open_ended:
            own = {k: v for k, v in params.items() if k in accepted.params}
            rest = {k: v for k, v in params.items() if k not in accepted.params}
        # the pipeline passes the adapter the component (its first parameter) and the stage name
        skip = (*list(signature_of(adapter).params)[:1], "name")
        stage_label = f"the {kind} stage adapter"
        own = check_params(
            f"{at}.params", label, factory, own, also=f"of {stage_label}: {signature_of(adapter, skip).describe()}"
        )
        rest = check_params(
            f"{at}.params", stage_label, adapter, rest, skip=skip, also=f"of {label}: {accepted.describe()}"
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
            "use a plugin whose factory returns a Stage, or register an adapter for the kind through the "
            "register_stage_adapters hook",
        )
    renamed = STAGE_KINDS[kind].renamed
    if renamed is not None:
        new_plugin, param = renamed
        warnings.warn(
            f"{at}.plugin: {label} is deprecated; write `plugin: {new_plugin}` with `{param}: {plugin_name}` "
            "in its params",
            FutureWarning,
            stacklevel=2,
        )
    return adapter(component, name=name, **rest)


def _build_core_stage(at: str, name: str, kind: str, plugin_name: str, params: dict, plugins) -> Stage:
    """A stage of CORE_STAGES; its parameters that name a plugin get that plugin's component."""
    stages = CORE_STAGES[kind]
    if plugin_name not in stages:
        raise ConfigError(
            f"{at}.plugin: unknown {kind} stage {plugin_name!r}{did_you_mean(plugin_name, stages)}",
            f"valid {kind}: {', '.join(stages)}",
        )
    core = stages[plugin_name]
    factory = _load(core.factory)
    named = core.plugins.items()
    choices = "; ".join(f"{param}: one of {', '.join(sorted(plugins.registry(k).entries))}" for param, k in named)
    params = check_params(f"{at}.params", f"{kind}/{plugin_name}", factory, params, skip=("name",), also=choices)
    for param, plugin_kind in core.plugins.items():
        if param in params:
            chosen, entries = params[param], plugins.registry(plugin_kind).entries
            if not isinstance(chosen, str) or chosen not in entries:
                raise _unknown_plugin(f"{at}.params.{param}", plugin_kind, str(chosen), plugins)
            params[param] = entries[chosen].factory()
    return factory(name=name, **params)


def _unknown_plugin(at: str, kind: str, name: str, plugins) -> ConfigError:
    valid = sorted(plugins.registry(kind).entries)
    skipped = "; ".join(f"{p}: {why}" for p, why in plugins.skipped.items())
    return ConfigError(
        f"{at}: unknown {kind} plugin {name!r}{did_you_mean(name, valid)}",
        f"valid {kind}: {', '.join(valid) if valid else '(none registered)'}"
        + (f"; skipped plugins: {skipped}" if skipped else "")
        + ("" if valid else "; install or enable a plugin that registers one"),
    )


def _adapter(kind: str, plugins) -> Callable[..., Stage] | None:
    """The stage adapter of `kind`: the one a plugin of `plugins` registers, else core's own, else None."""
    registered = plugins.registry("stage_adapters").entries
    adaptable = [k for k in STAGE_KINDS if k not in CORE_STAGES]
    for name, entry in registered.items():
        if name not in adaptable:
            raise ConfigError(
                f"plugin {entry.plugin!r} registers a stage adapter for {name!r}, which is no stage kind with "
                f"plugins{did_you_mean(name, adaptable)}",
                f"register it as one of: {', '.join(adaptable)}",
            )
    if kind in registered:
        return registered[kind].factory
    return _load(CORE_ADAPTERS[kind]) if kind in CORE_ADAPTERS else None


def _load(factory: Callable[..., Stage] | str) -> Callable[..., Stage]:
    """`factory`, or the attribute a "module:attribute" string names."""
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return factory
