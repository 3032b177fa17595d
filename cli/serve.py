"""`omnivox serve`: one model in memory serving many concurrent sessions through one pipeline (transport inputs ->
encoder -> LM + strategy -> codec -> transport outputs), over the transports plugins register with `serve` options
(omnivox.core.runtime.transport; `omnivox plugins` lists them). Each adds its own options and `--config` keys;
those the settings enable are served (the default ones when none is), all feeding the same pipeline. The built-in
ones: MQTT (the default; workers with the same `--group` share the load; docs/mqtt_protocol.md) and HTTP (`--http
[HOST:]PORT`: upstream Mini-Omni's `POST /chat`, `POST /v1/chat` and a browser page)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from omnivox.cli import model_options
from omnivox.cli.report import report_stage_errors
from omnivox.core.errors import ConfigError
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, TASKS

# keys of the --config YAML besides the transports' own (command-line options given explicitly win)
GENERAL_KEYS = ("limits", "checkpoint", "strategy", "task", "max_steps", "memory", "pipeline")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve clients through the registered transports (MQTT devices, HTTP, ...)",
                       description="Serve the model to clients through the transports plugins register (`omnivox "
                                   "plugins` lists them), each with its options below: the ones the options enable "
                                   "are served (the default one when none is), several at once with one model.")
    config = p.add_argument("--config", metavar="FILE", help="YAML with any of the settings' keys")
    p.add_argument("--pipeline", metavar="FILE",
                   help="pipeline YAML to serve instead of the built-in one: its first stage audio_inputs/NAME and "
                        "its last audio_outputs/NAME of a transport NAME the options enable (e.g. mqtt; with "
                        "--http: http), whose options here are applied to its input")
    p.add_argument("--max-sessions", type=int,
                   help="concurrent sessions per transport (default 32; an HTTP request is a session)")
    model = p.add_argument_group("model")
    model_options.add_model_options(model)
    model.add_argument("--strategy", help="decoding strategy (default: the model's own, its config's `decoding`, "
                       "else text-delay)")
    model.add_argument("--task", choices=[t for t in TASKS if t in AUDIO_IN_TASKS],
                       help="task of spoken turns (default A1A2; typed turns use T1A2)")
    model.add_argument("--max-steps", type=int, help="answer length bound in LM steps (default 600; random 96)")
    model.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the LM (CPU)")
    model.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                       help="a session's turns form one conversation (MQTT: the session; HTTP: a `conversation` "
                            "id); default: what the model declares (on for the demo model, off for Mini-Omni "
                            "checkpoints, trained on single turns; docs/conversations.md)")
    p.set_defaults(answers=True, func=serve, prepare=lambda parser: add_transport_options(parser, config))


def add_transport_options(parser: argparse.ArgumentParser, config: argparse.Action) -> None:
    """serve's `prepare` (omnivox.cli.main): the served transports' options, and their keys in `--config`'s help;
    called only when the command line names `serve`, so the plugins load only then."""
    transports = served_transports()
    for transport in transports.values():
        transport.serve.add(parser)
    config.help = f"YAML with any of: {', '.join(config_keys(transports))}"


def served_transports() -> dict:
    """The registered transports `omnivox serve` can serve (those with serve options), in registration order."""
    from omnivox.core.contracts.manager import get_plugin_manager

    registry = get_plugin_manager().registry("transports")
    found = {name: registry.create(name) for name in registry.entries}
    return {name: transport for name, transport in found.items() if transport.serve is not None}


def config_keys(transports: dict) -> tuple[str, ...]:
    """The keys of the --config YAML: every served transport's, then the general ones."""
    return tuple(dict.fromkeys(key for t in transports.values() for key in t.serve.keys)) + GENERAL_KEYS


def settings(args: argparse.Namespace) -> dict:
    """The --config file's settings overridden by the options given on the command line; the enabled transports'
    stage params are checked here, before a model loads."""
    from omnivox.core.yaml_files import read_yaml

    keys = config_keys(served_transports())
    values: dict = {}
    if args.config:
        values = read_yaml(Path(args.config), "serve config", "pass a YAML file (see `omnivox serve --help`)") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a mapping", f"valid keys: {', '.join(keys)}")
        for key in values:
            if key not in keys:
                raise ConfigError(f"{args.config}: unknown key {key!r}", f"valid keys: {', '.join(keys)}")
    given = {key: getattr(args, key, None) for key in keys}
    values.update({k: v for k, v in given.items() if v is not None})
    limits = dict(values.get("limits") or {})
    if args.max_sessions is not None:
        limits["max_sessions"] = args.max_sessions
    values["limits"] = limits
    if values.get("max_steps") is not None and values["max_steps"] < 1:
        raise ConfigError(f"max_steps must be >= 1, got {values['max_steps']}", "pass a positive number of steps")
    if values.get("memory") is not None and not isinstance(values["memory"], bool):
        raise ConfigError(f"memory must be true or false, got {values['memory']!r}",
                          "write `memory: true` or `memory: false`, or leave it out (the model's declaration)")
    for transport in enabled(values).values():
        transport.serve.params(values)
    return values


def enabled(values: dict) -> dict:
    """The transports to serve: those the settings enable, or those served by default when none is."""
    transports = served_transports()
    chosen = {name: t for name, t in transports.items() if t.serve.enabled(values)}
    chosen = chosen or {name: t for name, t in transports.items() if t.serve.default}
    if not chosen:
        from omnivox.core.contracts.manager import get_plugin_manager

        skipped = "; ".join(f"{name}: {why}" for name, why in get_plugin_manager().skipped.items())
        problem = (f"the options enable none of the transports ({', '.join(transports)})" if transports else
                   "no loaded plugin registers a transport `omnivox serve` serves")
        raise ConfigError(f"no transport to serve: {problem}" + (f" (skipped plugins: {skipped})" if skipped else ""),
                          "give a transport's option (see `omnivox serve --help`), or install the extra of a "
                          "transport plugin (see `omnivox plugins`)")
    return chosen


def transports(values: dict) -> list[str]:
    """The names of the transports to serve, in registration order."""
    return list(enabled(values))


def build_pipeline(args: argparse.Namespace, values: dict, say=print):
    """The served pipeline: the enabled transports' inputs (chained: each passes the ones before it through) ->
    encoder -> LM -> codec -> their outputs (each reading the codec); or the --pipeline file."""
    from omnivox.core.runtime.speech_pipeline import speech_pipeline

    if values.get("pipeline"):
        return served_yaml_pipeline(values)
    kit = model_options.load_kit(args, checkpoint=values.get("checkpoint"), say=say)
    model, encoder, codec, max_steps = kit.model, kit.encoder, kit.codec, values.get("max_steps") or kit.max_steps
    chosen = list(enabled(values).values())
    return speech_pipeline([t.input(**t.serve.params(values)) for t in chosen], model=model, encoder=encoder,
                           codec=codec, sinks=[t.output() for t in chosen],
                           lm=dict(strategy=values.get("strategy"), task=values.get("task") or "A1A2",
                                   max_steps=max_steps, int8=args.int8, memory=values.get("memory")))


def served_yaml_pipeline(values: dict):
    """A pipeline file whose first stage is audio_inputs/NAME and whose last is audio_outputs/NAME, for a transport
    NAME the settings enable: its input stage gets that transport's params as overrides."""
    from omnivox.core.runtime.pipeline import Pipeline
    from omnivox.core.yaml_files import read_yaml

    path = Path(values["pipeline"])
    config = read_yaml(path, "pipeline file", "pass the path of a pipeline YAML (see recipes/pipelines/)")
    stages = config.get("stages") if isinstance(config, dict) else None
    plugins = [entry.get("plugin") if isinstance(entry, dict) else None for entry in stages or []]
    chosen = enabled(values)
    name = next((n for n in chosen if plugins and plugins[0] == f"audio_inputs/{n}"
                 and plugins[-1] == f"audio_outputs/{n}"), None)
    if name is None:
        expected = " or ".join(f"starts with audio_inputs/{n} and ends with audio_outputs/{n}" for n in chosen)
        raise ConfigError(f"{path}: a served pipeline {expected}", "see the served pipelines in recipes/pipelines/")
    stage = stages[0].get("name", name)
    overrides = {f"{stage}.{key}": value for key, value in chosen[name].serve.params(values).items()}
    return Pipeline.from_yaml(path, overrides=overrides)


def return_freed_memory() -> str:
    """Tell glibc's malloc to give freed memory back, so that a long-running server's RSS follows its live memory:
    at most 2 arenas and a fixed mmap threshold (128 KiB: tensor buffers are mmapped and unmapped when freed). With
    glibc's dynamic threshold, freed buffers stay in the arenas and a soak's idle RSS wandered by +9% to +14%
    without a trend (tests/test_soak.py). Kept as it is where MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ are set,
    where OMNIVOX_MALLOC=default, and off glibc. Returns what was done, for the log."""
    import ctypes
    import ctypes.util
    import os

    tuned = {"MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"} & set(os.environ)
    if os.environ.get("OMNIVOX_MALLOC") == "default" or tuned:
        return "malloc: as the environment sets it"
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold, m_arena_max = -3, -8  # glibc's malloc.h
        if libc.mallopt(m_arena_max, 2) != 1 or libc.mallopt(m_mmap_threshold, 128 * 1024) != 1:
            return "malloc: mallopt refused; glibc defaults"
    except (OSError, AttributeError):
        return "malloc: not glibc; left as it is"
    return "malloc: 2 arenas, mmap threshold 128 KiB (OMNIVOX_MALLOC=default keeps glibc's defaults)"


def serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger(__name__).info(return_freed_memory())
    values = settings(args)
    pipeline = build_pipeline(args, values, say=lambda line: print(line, file=sys.stderr))
    asyncio.run(_run_until_stopped(pipeline, announce=True))
    return report_stage_errors("serve", pipeline.errors)


async def announce_addresses(pipeline) -> None:
    """Say where each transport listens (its input stage's announcement), once all are set up (a port 0 is bound
    by then)."""
    from omnivox.core.runtime.transport import TransportInput

    inputs = [stage for stage in pipeline.stages if isinstance(stage, TransportInput)]
    while any(stage.service is None for stage in inputs):
        await asyncio.sleep(0.05)
    for stage in inputs:
        print(f"omnivox serve: {stage.announcement()}", file=sys.stderr, flush=True)


async def _run_until_stopped(pipeline, announce: bool = False) -> None:
    """Run the pipeline until Ctrl-C or SIGTERM; either stops it cleanly (status "offline" is published)."""
    import signal

    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    announcer = asyncio.create_task(announce_addresses(pipeline)) if announce else None
    try:
        await pipeline.run()
    except asyncio.CancelledError:
        pass
    finally:
        if announcer is not None:
            announcer.cancel()
