"""`omnivox run PIPELINE.yaml [--set stage.param=value ...]`: run a pipeline file with whatever plugins
are installed; print each turn's metrics at the end. Exit 0, or 1 when a stage reported an error."""

from __future__ import annotations

import argparse
import asyncio

import yaml

from omnivox.cli.report import report_stage_errors
from omnivox.core.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a pipeline YAML file (see recipes/pipelines/)",
        description="Build the pipeline described by a YAML file from the loaded plugins and run it until "
        "its sources finish (or Ctrl-C).",
    )
    parser.add_argument("pipeline", help="pipeline YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.PARAM=VALUE",
        help="override a stage parameter (value parsed as YAML); repeatable",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the metrics summary")
    parser.set_defaults(answers=True, func=run)


def parse_overrides(items: list[str]) -> dict[str, object]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r} is not STAGE.PARAM=VALUE", "write e.g. --set vad.threshold=0.6")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.strip()] = value
    return overrides


def run(args: argparse.Namespace) -> int:
    from omnivox.core.runtime.metrics import format_summary
    from omnivox.core.runtime.pipeline import Pipeline

    pipeline = Pipeline.from_yaml(args.pipeline, overrides=parse_overrides(args.overrides))
    turns = asyncio.run(pipeline.run())
    status = report_stage_errors("run", pipeline.errors)
    if not args.quiet:
        print(format_summary(turns))
    return status
