"""Reading the user's YAML files (model configs, recipes, pipelines) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from omnivox.core.errors import ConfigError


def read_yaml(path: str | Path, what: str, fix_missing: str) -> Any:
    """Parse YAML file `path` (a `what`, e.g. "recipe"); a missing file or bad syntax raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found", fix_missing)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})", "fix the YAML syntax") from None
