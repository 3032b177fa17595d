"""The one progress bar of omnivox: tqdm on stderr, drawn only when stderr is a terminal, so a log file or a
pipe never gets carriage-return bars."""

from __future__ import annotations

import sys
from collections.abc import Iterable


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
        unit: str = "it", enabled: bool = True, **options):
    """A tqdm bar over `iterable` (or advanced with `update`) on stderr; a silent one when `enabled` is false
    or stderr is not a terminal. `options` go to tqdm (`initial`, `unit_scale`, `leave`, ...)."""
    from tqdm import tqdm

    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, disable=not show, dynamic_ncols=True,
                **options)


def write(text: str, file=None) -> None:
    """`text` as a line on `file` (default stdout), printed above a bar on the terminal instead of through it."""
    from tqdm import tqdm

    out = file or sys.stdout
    tqdm.write(text, file=out)
    out.flush()
