"""One checker of YAML configuration, shared by pipelines (core/runtime/pipeline.py) and training recipes
(training/recipe.py): a mapping against a fixed schema of keys (`check_keys`), and the parameters given to a
component against its factory's signature (`check_params`). Every mistake raises ConfigError naming the key,
the valid choices and, for a near miss, the name meant."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnivox.core.errors import ConfigError


@dataclass(frozen=True)
class Key:
    """One key of a fixed schema: its accepted types, whether it is required, its valid values."""

    types: tuple[type, ...]
    required: bool = False
    choices: tuple[str, ...] | None = None
    help: str = ""


def check_keys(where: str, mapping: Any, schema: Mapping[str, Key]) -> None:
    """Raise ConfigError for a non-mapping, an unknown key, a missing key, a wrong type or a bad choice.
    `where`: the mapping's place in the file ("" for the top level)."""
    valid = ", ".join(schema)
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"{where or 'top level'}: expected a mapping, got {_kind_of(mapping)}",
            f"write a mapping with keys: {valid}",
        )
    for key in mapping:
        if key not in schema:
            raise ConfigError(
                f"{_join(where, key)}: unknown key{did_you_mean(str(key), schema)}", f"valid keys: {valid}"
            )
    for key, spec in schema.items():
        if key not in mapping:
            if spec.required:
                raise ConfigError(
                    f"{where or 'top level'}: missing key {key!r} ({spec.help})", f"add `{key}:`; valid keys: {valid}"
                )
            continue
        value = mapping[key]
        if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
            expected = " or ".join(t.__name__ for t in spec.types)
            raise ConfigError(
                f"{_join(where, key)}: expected {expected}, got {_kind_of(value)}", f"{key} is the {spec.help}"
            )
        if spec.choices is not None and value not in spec.choices:
            raise ConfigError(
                f"{_join(where, key)}: {value!r} is not a valid choice", f"use one of: {', '.join(spec.choices)}"
            )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


@dataclass(frozen=True)
class Signature:
    """The parameters a configuration may give a factory: by name (keyword-passable ones, less those the
    caller passes itself), their type hints, and whether it also takes any other (**kwargs)."""

    params: dict[str, inspect.Parameter]
    hints: dict[str, Any]
    open_ended: bool

    def describe(self) -> str:
        """`name (type) = default, ...`, or "(none)"."""
        return ", ".join(_describe_param(p, self.hints.get(n)) for n, p in self.params.items()) or "(none)"


def signature_of(factory: Callable[..., Any], skip: Iterable[str] = ()) -> Signature:
    """The Signature of `factory` without the parameters named in `skip`; a factory without an inspectable
    signature takes anything."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return Signature({}, {}, True)
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    skip = set(skip)
    params = {
        n: p
        for n, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self" and n not in skip
    }
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return Signature(params, hints, open_ended)


def check_params(
    where: str,
    label: str,
    factory: Callable[..., Any],
    params: Mapping[str, Any],
    *,
    skip: Iterable[str] = (),
    also: str = "",
) -> dict:
    """Check `params` against `factory`'s signature (names, required ones, annotated types); returns them with
    str converted to Path and list to tuple where the annotation asks for one. `where`: the params' place in
    the file; `label`: the factory's name in messages; `skip`: parameters the caller passes itself (not
    valid here); `also`: more valid parameters to list in the error (e.g. another callable's)."""
    signature = signature_of(factory, skip)
    described = signature.describe()
    if also:
        described = f"{described}; {also}"
    result = dict(params)
    for key, value in params.items():
        if key not in signature.params:
            if signature.open_ended:
                continue
            raise ConfigError(
                f"{where}.{key}: unknown parameter of {label}{did_you_mean(key, signature.params)}",
                f"valid parameters: {described}",
            )
        hint = signature.hints.get(key)
        if hint is not None:
            ok, converted = _conform(value, hint)
            if not ok:
                choices = _literal_choices(hint)
                fix = f"use one of: {', '.join(map(repr, choices))}" if choices else f"valid parameters: {described}"
                raise ConfigError(f"{where}.{key}: expected {_type_name(hint)}, got {_kind_of(value)}", fix)
            result[key] = converted
    for name, param in signature.params.items():
        if param.default is param.empty and name not in params:
            raise ConfigError(
                f"{where}: missing parameter {name!r} of {label}",
                f"add `{name}: ...`; valid parameters: {described}",
            )
    return result


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the valid name closest to `name`, or "" when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """(matches, value converted where a str names a Path or a list a tuple) for the annotation `hint`."""
    if hint is Any:
        return True, value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        for member in typing.get_args(hint):
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is type(None):
        return value is None, value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if isinstance(hint, type) and issubclass(hint, Path):
        if isinstance(value, (str, Path)):
            return True, Path(value)
        return False, value
    check = origin if origin is not None else hint
    if check is tuple and isinstance(value, list):  # YAML has no tuples
        return True, tuple(value)
    if check in (list, tuple, dict, set, str, bool):
        return isinstance(value, check), value
    return True, value  # a type YAML cannot express: left to the factory


def _literal_choices(hint: Any) -> tuple:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    for member in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        if typing.get_origin(member) is typing.Literal:
            return typing.get_args(member)
    return ()


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _describe_param(param: inspect.Parameter, hint: Any) -> str:
    text = param.name if hint is None else f"{param.name} ({_type_name(hint)})"
    return text if param.default is param.empty else f"{text} = {param.default!r}"


def _kind_of(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__
