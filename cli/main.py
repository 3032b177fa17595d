"""The `omnivox` command line. Each command lives in `omnivox.cli.<module>` and exposes
`register(subparsers)`; a command sets `func(args) -> int` on its parser."""

from __future__ import annotations

import argparse
import importlib
import sys

from omnivox.core.errors import OmnivoxError

# Command modules, in --help order. Each is imported only to build the parser (no torch at import).
COMMAND_MODULES = [
    "omnivox.cli.chat",
    "omnivox.cli.listen",
    "omnivox.cli.run",
    "omnivox.cli.serve",
    "omnivox.cli.ask",
    "omnivox.cli.model",
    "omnivox.cli.plugins",
    "omnivox.cli.train",
    "omnivox.cli.transcribe",
    "omnivox.cli.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnivox",
        description="Streaming speech agents (Mini-Omni) built from plugins.",
    )
    parser.add_argument("--version", action="version", version=f"omnivox {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from omnivox import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except OmnivoxError as exc:
        print(f"omnivox {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
