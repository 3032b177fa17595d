"""User-facing errors: each names the problem and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class OmnivoxError(Exception):
    """Base class. `problem` says what is wrong (naming the file/key/value), `fix` what to do."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class ConfigError(OmnivoxError, ValueError):
    """A config/recipe/pipeline file or option has an unknown, missing or ill-typed value."""


class CheckpointError(OmnivoxError):
    """A checkpoint directory or file is missing, unreadable or does not fit the model."""


class InputError(OmnivoxError, ValueError):
    """User data (audio, text, prompt, features) cannot be used as given."""


class PluginError(OmnivoxError, LookupError):
    """An unknown plugin name, or a plugin that cannot be loaded."""


def unknown_name(kind: str, name: str, valid) -> PluginError:
    """The error for an unknown strategy/codec/encoder/task name: lists the valid ones."""
    valid = sorted(valid)
    return PluginError(
        f"unknown {kind} {name!r}; valid choices: {', '.join(valid) if valid else '(none loaded)'}",
        f"use one of: {', '.join(valid)}" if valid else "install a plugin that provides one",
    )
