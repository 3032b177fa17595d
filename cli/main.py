"""The `omnivox` command line. Each command lives in `omnivox.cli.<module>` and exposes
`register(subparsers)`; a command sets `func(args) -> int` on its parser, and may set `prepare(parser)`: options
that need something costly to list (e.g. the plugins' transports of `serve`) are added by it, called only when the
command line names that command (so the plugins load, and warn about skipped ones, only for the command using them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; given the command line `argv`, the command it names is prepared (its
    `prepare(parser)` adds its late options), so `build_parser(argv).parse_args(argv)` parses it fully."""
    parser = argparse.ArgumentParser(
        prog="omnivox",
        description="Streaming speech agents (Mini-Omni) built from plugins.",
    )
    parser.add_argument("--version", action="version", version=f"omnivox {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    command = sub.choices.get(named_command(argv)) if argv is not None else None
    prepare = command.get_default("prepare") if command is not None else None
    if prepare is not None:
        prepare(command)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The command `argv` names (its first word that is no option; `omnivox`'s own options take no value), without
    parsing the rest: `--help` is answered by the full parse, once the command is prepared."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("command", nargs="?")
    return first.parse_known_args(argv)[0].command


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` parsed, its command prepared (what main does; for tests and scripts)."""
    return build_parser(argv).parse_args(argv)


def _version() -> str:
    from omnivox import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        if getattr(args, "answers", False):  # one torch thread here: the LM's engine thread alone runs a team
            from omnivox.core.kernel.threads import using_threads  # (core/kernel/threads.py)

            with using_threads(1):
                return int(args.func(args) or 0)
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
