"""`omnivox serve`: the MQTT worker and/or the HTTP server. One model in memory serves many concurrent sessions
through one pipeline (mqtt in -> encoder -> LM + strategy -> codec -> mqtt out); run several MQTT workers (on
several machines) with the same `--group` to share the load. Wire protocol: docs/mqtt_protocol.md.
`--http [HOST:]PORT` serves upstream Mini-Omni's `POST /chat`, `POST /v1/chat` and a browser page
(omnivox.plugins.http); with `--broker` too, both transports feed the same pipeline."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from omnivox.cli import demo
from omnivox.core.errors import ConfigError
from omnivox.core.kernel.tokens import AUDIO_IN_TASKS, TASKS

# keys of the --config YAML (command-line options given explicitly win)
CONFIG_KEYS = ("http", "broker", "site", "worker", "group", "prefix", "keepalive", "username", "password", "tls_ca",
               "tls_cert", "tls_key", "limits", "checkpoint", "strategy", "task", "max_steps", "pipeline")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve devices over an MQTT 5 broker and/or clients over HTTP",
                       description="Run an MQTT worker: devices start sessions through the broker, speak (or type) "
                                   "questions and get streamed text and speech back (protocol: "
                                   "docs/mqtt_protocol.md). With --http: an HTTP server answering upstream "
                                   "Mini-Omni's POST /chat (a streamed WAV), POST /v1/chat (JSON events) and a "
                                   "browser page at /. --http and --broker together serve both with one model.")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve HTTP on this address (Mini-Omni's port is 60808; host default 127.0.0.1)")
    p.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default mqtt://127.0.0.1:1883; "
                                    "with --http: MQTT only when given)")
    p.add_argument("--site", help="serve only this site (device id); default: every site")
    p.add_argument("--config", metavar="FILE", help=f"YAML with any of: {', '.join(CONFIG_KEYS)}")
    p.add_argument("--pipeline", metavar="FILE",
                   help="pipeline YAML to serve instead of the built-in one (first stage audio_inputs/mqtt, "
                        "last audio_outputs/mqtt; with --http: audio_inputs/http ... audio_outputs/http); the "
                        "broker (or --http address) options here are applied to its input")
    p.add_argument("--worker", help="this worker's id (default: host-pid-random)")
    p.add_argument("--group", help="shared-subscription group of the worker pool (default omnivox)")
    p.add_argument("--max-sessions", type=int, help="concurrent sessions (HTTP: requests) per transport (default 32)")
    auth = p.add_argument_group("authentication and TLS (passed to the MQTT client)")
    auth.add_argument("--username")
    auth.add_argument("--password", help="or set OMNIVOX_MQTT_PASSWORD")
    auth.add_argument("--tls-ca", metavar="PEM", help="CA bundle that signed the broker's certificate")
    auth.add_argument("--tls-cert", metavar="PEM", help="client certificate")
    auth.add_argument("--tls-key", metavar="PEM", help="client certificate's key")
    model = p.add_argument_group("model")
    demo.add_model_options(model)
    model.add_argument("--strategy", help="decoding strategy (default text-delay)")
    model.add_argument("--task", choices=[t for t in TASKS if t in AUDIO_IN_TASKS],
                       help="task of spoken turns (default A1A2; typed turns use T1A2)")
    model.add_argument("--max-steps", type=int, help="answer length bound in LM steps (default 600; random 96)")
    model.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of the LM (CPU)")
    p.set_defaults(func=serve)


def settings(args: argparse.Namespace) -> dict:
    """The --config file's settings overridden by the options given on the command line."""
    import os

    from omnivox.core.yaml_files import read_yaml

    values: dict = {}
    if args.config:
        values = read_yaml(Path(args.config), "serve config", "pass a YAML file (see `omnivox serve --help`)") or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a mapping", f"valid keys: {', '.join(CONFIG_KEYS)}")
        for key in values:
            if key not in CONFIG_KEYS:
                raise ConfigError(f"{args.config}: unknown key {key!r}", f"valid keys: {', '.join(CONFIG_KEYS)}")
    given = {"http": args.http, "broker": args.broker, "site": args.site, "worker": args.worker, "group": args.group,
             "username": args.username, "password": args.password or os.environ.get("OMNIVOX_MQTT_PASSWORD"),
             "tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
             "checkpoint": args.checkpoint, "strategy": args.strategy, "task": args.task,
             "max_steps": args.max_steps, "pipeline": args.pipeline}
    values.update({k: v for k, v in given.items() if v is not None})
    limits = dict(values.get("limits") or {})
    if args.max_sessions is not None:
        limits["max_sessions"] = args.max_sessions
    values["limits"] = limits
    if values.get("max_steps") is not None and values["max_steps"] < 1:
        raise ConfigError(f"max_steps must be >= 1, got {values['max_steps']}", "pass a positive number of steps")
    if values.get("http") is not None:
        from omnivox.plugins.http.service import parse_address  # aiohttp: the `http` extra

        try:
            parse_address(str(values["http"]))
        except ValueError as exc:
            raise ConfigError(str(exc), "e.g. --http 60808 or --http 0.0.0.0:60808") from None
    return values


def transports(values: dict) -> list[str]:
    """The transports to serve: "http" with an http address, "mqtt" with a broker or without --http."""
    http = values.get("http") is not None
    return (["mqtt"] if values.get("broker") or not http else []) + (["http"] if http else [])


def http_params(values: dict) -> dict:
    """Parameters of the audio_inputs/http stage."""
    from omnivox.plugins.http.service import parse_address

    host, port = parse_address(str(values["http"]))
    params = {"host": host, "port": port}
    if values.get("limits"):
        params["limits"] = values["limits"]
    return params


def mqtt_params(values: dict) -> dict:
    """Parameters of the audio_inputs/mqtt stage."""
    names = {"broker": "broker", "site": "site", "worker": "worker", "group": "group", "prefix": "prefix",
             "keepalive": "keepalive", "username": "username", "password": "password", "tls_ca": "ca_file",
             "tls_cert": "cert_file", "tls_key": "key_file"}
    params = {stage_key: values[key] for key, stage_key in names.items() if values.get(key) is not None}
    params.setdefault("broker", "mqtt://127.0.0.1:1883")
    if values.get("limits"):
        params["limits"] = values["limits"]
    return params


def build_pipeline(args: argparse.Namespace, values: dict, say=print):
    from omnivox.core.runtime.model_stages import CodecStage, EncoderStage, LMStage
    from omnivox.core.runtime.pipeline import Pipeline

    if values.get("pipeline"):
        return served_yaml_pipeline(values)
    model, encoder, codec, default_steps = demo.model_kit(values.get("checkpoint"), encoder=args.encoder,
                                                          whisper=args.whisper, codec=args.codec, say=say)
    max_steps = values.get("max_steps") or default_steps
    lm = LMStage(values.get("strategy") or "text-delay", model=model, task=values.get("task") or "A1A2",
                 max_steps=max_steps, int8=args.int8)
    middle = [EncoderStage(encoder), lm, codec_stage := CodecStage(codec)]
    sources, sinks = [], []
    if "mqtt" in transports(values):
        from omnivox.plugins.mqtt.stages import MqttAudioInput, MqttAudioOutput

        sources.append(MqttAudioInput(**mqtt_params(values)))
        sinks.append(MqttAudioOutput())
    if "http" in transports(values):
        from omnivox.plugins.http.stages import HttpAudioInput, HttpAudioOutput

        sources.append(HttpAudioInput(**http_params(values)))  # after the MQTT source: forwards its events
        sinks.append(HttpAudioOutput())
    # every sink reads the codec's output (the second source reads the first by default)
    return Pipeline([*sources, *middle, *sinks], inputs={sink.name: [codec_stage.name] for sink in sinks})


def served_yaml_pipeline(values: dict):
    """A pipeline file whose first stage is audio_inputs/mqtt (given the broker options) and whose last is
    audio_outputs/mqtt; with --http, audio_inputs/http (given the address) ... audio_outputs/http."""
    from omnivox.core.runtime.pipeline import Pipeline
    from omnivox.core.yaml_files import read_yaml

    path = Path(values["pipeline"])
    config = read_yaml(path, "pipeline file", "pass the path of a pipeline YAML (see recipes/pipelines/)")
    stages = config.get("stages") if isinstance(config, dict) else None
    plugins = [entry.get("plugin") if isinstance(entry, dict) else None for entry in stages or []]
    transport = "http" if values.get("http") is not None else "mqtt"
    if not plugins or plugins[0] != f"audio_inputs/{transport}" or plugins[-1] != f"audio_outputs/{transport}":
        raise ConfigError(f"{path}: a served pipeline starts with audio_inputs/{transport} and ends with "
                          f"audio_outputs/{transport}", "see recipes/pipelines/mqtt_demo.yaml")
    name = stages[0].get("name", transport)
    params = http_params(values) if transport == "http" else mqtt_params(values)
    overrides = {f"{name}.{key}": value for key, value in params.items()}
    return Pipeline.from_yaml(path, overrides=overrides)


def serve(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    values = settings(args)
    pipeline = build_pipeline(args, values, say=lambda line: print(line, file=sys.stderr))
    asyncio.run(_run_until_stopped(pipeline, announce=True))
    for error in pipeline.errors:
        print(f"omnivox serve: {error.stage}: {error.message}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
    return 1 if pipeline.errors else 0


async def announce_addresses(pipeline) -> None:
    """Say where each transport listens, once its source stage is set up (an HTTP port 0 is bound by then)."""
    sources = [stage for stage in pipeline.stages if stage.is_source]
    while any(getattr(stage, "service", None) is None for stage in sources):
        await asyncio.sleep(0.05)
    for stage in sources:
        if hasattr(stage.config, "broker"):
            print(f"omnivox serve: worker {stage.config.worker} on {stage.config.broker.url}", file=sys.stderr,
                  flush=True)
        else:
            print(f"omnivox serve: HTTP on {stage.service.url} (POST /chat, POST /v1/chat, page at /)",
                  file=sys.stderr, flush=True)


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
