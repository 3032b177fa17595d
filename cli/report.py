"""What the commands that run a pipeline (chat, listen, run, serve) say about its stage Errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from omnivox.core.runtime.events import Error


def report_stage_errors(command: str, errors: Sequence[Error], *, turn: bool = False) -> int:
    """Print each stage Error (with the turn it failed on when `turn`) and its fix to stderr; the exit status:
    1 when there was one, else 0."""
    for error in errors:
        on_turn = f" on turn {error.turn_id}" if turn else ""
        print(f"omnivox {command}: stage {error.stage!r} failed{on_turn}: {error.message}", file=sys.stderr)
        if error.fix:
            print(f"  fix: {error.fix}", file=sys.stderr)
    return 1 if errors else 0
