"""Actions in a model's text stream: the markup a model declares (`ActionFormat`, its config's `actions`
field) and the streaming parser (`ActionParser`) that splits a turn's text into the plain text to show and
speak and the actions to carry out.

    'turning on the light<act>light {"room": "kitchen", "on": true}</act>'
        ──► plain text 'turning on the light' + ParsedAction('light', {'room': 'kitchen', 'on': True})

Fed the text pieces as they stream (a marker may be split over several tokens), the parser holds back only
the characters that may still be the start of a marker; no character of an action (its markers, its name,
its arguments) ever reaches the plain text, well-formed or not. A malformed action becomes an `ActionIssue`
with one of `ISSUE_CODES` and the text goes on. A model that declares no format has no actions: its text is
not parsed at all (core/runtime/model_stages.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omnivox.core.errors import ConfigError
from omnivox.core.kernel.spoken_numbers import words_number

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # an action name: an identifier, dots and dashes allowed
ISSUE_CODES = {
    "missing-action-name": "nothing but arguments (or nothing) between the markers",
    "bad-action-name": "the name is not an identifier (letters, digits, _ . -; at most 64 characters)",
    "bad-action-json": "the arguments are not one JSON object",
    "unknown-action": "the name is not in the vocabulary of actions",
    "action-too-long": "more than max_chars characters between the markers",
    "unclosed-action": "the turn ended inside an action",
    "stray-action-close": "a close marker outside any action",
    "bad-action-number": "an argument declared in number_words is neither a number nor a number in words",
}
SNIPPET = 80  # characters of a malformed action quoted in its issue


@dataclass(frozen=True)
class ActionFormat:
    """The markup of one action: `open`, the action's name, optionally whitespace and its arguments as one JSON
    object, `close`; at most `max_chars` characters between the markers. `names`: the actions the model was
    trained on (None: any name; a caller's vocabulary replaces it). `result_open`/`result_close` wrap a device's
    result where the model reads it back in a conversation (`render_result`). `number_words`: the arguments the
    model writes as number words (`"metres": "five"`: a copy of the words it says); the parser gives them as
    numbers (`"metres": 5`)."""

    open: str = "<act>"
    close: str = "</act>"
    max_chars: int = 256
    names: tuple[str, ...] | None = None
    number_words: tuple[str, ...] = ()
    result_open: str = "<result>"
    result_close: str = "</result>"

    def __post_init__(self) -> None:
        where = "action format"
        for key in ("open", "close", "result_open", "result_close"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.strip() or value != value.strip():
                raise ConfigError(f"{where}: {key} = {value!r} must be a non-empty marker without outer spaces",
                                  f"give {key} a marker such as '<act>'")
        if self.open in self.close or self.close in self.open:
            raise ConfigError(f"{where}: open {self.open!r} and close {self.close!r} contain one another",
                              "use two markers neither of which is part of the other, e.g. '<act>' and '</act>'")
        if isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ConfigError(f"{where}: max_chars = {self.max_chars!r} must be a positive integer",
                              "give the longest action (name and arguments) in characters, e.g. 256")
        if self.names is not None:
            object.__setattr__(self, "names", check_names(self.names, f"{where}: names"))  # a list becomes a tuple
        if isinstance(self.number_words, str) or not isinstance(self.number_words, Iterable) \
                or not all(isinstance(k, str) and k for k in self.number_words):
            raise ConfigError(f"{where}: number_words = {self.number_words!r} is not a list of argument names",
                              "write e.g. number_words: [metres]")
        object.__setattr__(self, "number_words", tuple(self.number_words))

    @classmethod
    def from_dict(cls, data: Any, source: str = "actions") -> ActionFormat:
        """The format from a config mapping (a model_config.yaml's `actions:`); a mistake names `source`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping (open, close, max_chars, names, number_words), "
                              f"got {type(data).__name__}", "write e.g. actions: {open: '<act>', close: '</act>'}")
        known = ("open", "close", "max_chars", "names", "result_open", "result_close", "number_words")
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}",
                              f"valid keys: {', '.join(known)}")
        values = dict(data)
        if values.get("names") is not None:
            values["names"] = check_names(values["names"], f"{source}: names")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.problem}", exc.fix) from None

    @classmethod
    def of(cls, model) -> ActionFormat | None:
        """The format a model (OmniModel or OmniLM) declares in its config; None: the model has no actions."""
        config = getattr(model, "config", None)
        actions = getattr(config, "actions", None)
        return None if actions is None else cls.from_dict(actions, "model config: field 'actions'")

    def to_dict(self) -> dict[str, Any]:
        """The config mapping (`from_dict` reads it back)."""
        data = {"open": self.open, "close": self.close, "max_chars": self.max_chars,
                "result_open": self.result_open, "result_close": self.result_close}
        if self.names is not None:
            data["names"] = list(self.names)
        if self.number_words:
            data["number_words"] = list(self.number_words)
        return data

    def render(self, name: str, arguments: Mapping[str, Any] | None = None) -> str:
        """The markup of one action, as a training target writes it: `<act>light {"on": true}</act>`."""
        body = name if not arguments else f"{name} {json.dumps(dict(arguments), ensure_ascii=False)}"
        return f"{self.open}{body}{self.close}"

    def render_result(self, name: str, result: Any) -> str:
        """A device's result as the model reads it in its history: `<result>light {"ok": true}</result>`."""
        return f"{self.result_open}{name} {json.dumps(result, ensure_ascii=False)}{self.result_close}"


@dataclass(frozen=True)
class ParsedAction:
    """A complete action: its `name`, its JSON `arguments` (a dict) and the `markup` it was parsed from."""

    name: str
    arguments: dict[str, Any]
    markup: str


@dataclass(frozen=True)
class ActionIssue:
    """A malformed or unknown action: `code` (one of ISSUE_CODES), a `message` quoting it, and its `markup`
    (at most SNIPPET characters of what was between the markers)."""

    code: str
    message: str
    markup: str = ""


Item = str | ParsedAction | ActionIssue  # what the parser returns, in the order of the text


class ActionParser:
    """Splits one turn's streamed text into plain text, ParsedActions and ActionIssues (`feed` each piece, then
    `finish` once). `vocabulary`: the action names a caller accepts (others become `unknown-action`); None:
    the format's `names`, and with those None any well-formed name."""

    def __init__(self, fmt: ActionFormat, vocabulary: Iterable[str] | None = None):
        self.fmt = fmt
        names = fmt.names if vocabulary is None else tuple(vocabulary)
        self.vocabulary = None if names is None else frozenset(names)
        self._held = ""  # outside an action: text that may begin a marker; inside: the action's text so far
        self._inside = False
        self._too_long = False  # inside an action already reported as too long: skip to its close

    @property
    def inside(self) -> bool:
        """True while the text is inside an action (after an open marker, before its close)."""
        return self._inside

    def feed(self, text: str) -> list[Item]:
        """The items `text` completes, in order: plain text (str), ParsedAction, ActionIssue."""
        fmt, out = self.fmt, []
        buf, self._held = self._held + text, ""
        while buf:
            if self._inside:
                end = buf.find(fmt.close)
                if end < 0:
                    buf = self._wait_for_close(buf, out)
                    break
                body, buf = buf[:end], buf[end + len(fmt.close):]
                if not self._too_long:
                    out.append(self._parse(body))
                self._inside = self._too_long = False
                continue
            at, marker = _first(buf, fmt.open, fmt.close)
            if marker is None:
                keep = _partial_marker(buf, (fmt.open, fmt.close))
                _add_text(out, buf[:len(buf) - keep])
                buf = buf[len(buf) - keep:]
                break
            _add_text(out, buf[:at])
            buf = buf[at + len(marker):]
            if marker == fmt.open:
                self._inside = True
            else:
                out.append(ActionIssue("stray-action-close", f"a close marker {fmt.close!r} outside any action "
                                       "was dropped", fmt.close))
        self._held = buf
        return out

    def finish(self) -> list[Item]:
        """The end of the turn: held text that never became a marker is plain text; an open action is
        `unclosed-action` (unless already reported as too long). The parser is then ready for a new turn."""
        out: list[Item] = []
        if self._inside and not self._too_long:
            markup = _snippet(self.fmt.open + self._held)
            out.append(ActionIssue("unclosed-action", f"the turn ended inside an action: {markup!r}", markup))
        elif not self._inside:
            _add_text(out, self._held)
        self._held, self._inside, self._too_long = "", False, False
        return out

    def _wait_for_close(self, buf: str, out: list[Item]) -> str:
        """Inside an action whose close has not come: what to keep (reports it once when too long)."""
        fmt, tail = self.fmt, len(self.fmt.close) - 1  # a close marker may begin in the last `tail` characters
        if not self._too_long and len(buf) - tail > fmt.max_chars:
            self._too_long = True
            markup = _snippet(fmt.open + buf)
            out.append(ActionIssue("action-too-long", f"an action ran past {fmt.max_chars} characters without "
                                   f"{fmt.close!r} and was dropped: {markup!r}", markup))
        return buf[len(buf) - tail:] if self._too_long else buf

    def _parse(self, body: str) -> ParsedAction | ActionIssue:
        fmt = self.fmt
        markup = fmt.open + body + fmt.close
        quoted = _snippet(markup)
        if len(body) > fmt.max_chars:
            return ActionIssue("action-too-long", f"an action of {len(body)} characters (at most {fmt.max_chars}) "
                               f"was dropped: {quoted!r}", quoted)
        match = re.fullmatch(r"\s*([^\s{]*)\s*(.*?)\s*", body, re.DOTALL)
        name, arguments = match[1], match[2]
        if not name:
            return ActionIssue("missing-action-name", f"an action without a name was dropped: {quoted!r}", quoted)
        if not NAME.fullmatch(name):
            return ActionIssue("bad-action-name", f"an action named {name[:SNIPPET]!r} (not an identifier) was "
                               f"dropped: {quoted!r}", quoted)
        if self.vocabulary is not None and name not in self.vocabulary:
            known = ", ".join(sorted(self.vocabulary)) or "none"
            return ActionIssue("unknown-action", f"unknown action {name!r} was dropped (known: {known})", quoted)
        if not arguments:
            return ParsedAction(name, {}, markup)
        try:
            value = json.loads(arguments, parse_constant=_no_constant)
        except ValueError as exc:
            return ActionIssue("bad-action-json", f"action {name!r} was dropped: its arguments are not JSON "
                               f"({exc}): {quoted!r}", quoted)
        if not isinstance(value, dict):
            return ActionIssue("bad-action-json", f"action {name!r} was dropped: its arguments are a JSON "
                               f"{type(value).__name__}, not an object: {quoted!r}", quoted)
        for key in fmt.number_words:
            said = value.get(key)
            if isinstance(said, str) and (number := words_number(said)) is not None:
                value[key] = number
            elif key in value and (isinstance(said, bool) or not isinstance(said, int | float)):
                return ActionIssue("bad-action-number", f"action {name!r} was dropped: its argument {key!r} = "
                                   f"{said!r} is not a number (in words or digits): {quoted!r}", quoted)
        return ParsedAction(name, value, markup)


def check_names(names: Iterable[str], source: str) -> tuple[str, ...]:
    """`names` as a tuple of action names; a ConfigError naming `source` when one is not an action name."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ConfigError(f"{source} = {names!r} is not a list of action names", "write e.g. [light, move, stop]")
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not NAME.fullmatch(n)]
    if bad:
        raise ConfigError(f"{source}: {bad} are not action names",
                          "use identifiers (letters, digits, _ . -), e.g. light, move")
    return names


def split_actions(text: str, fmt: ActionFormat, vocabulary: Iterable[str] | None = None
                  ) -> tuple[str, list[ParsedAction], list[ActionIssue]]:
    """A whole text at once: (plain text, actions, issues); e.g. the words a training answer speaks."""
    parser = ActionParser(fmt, vocabulary)
    items = parser.feed(text) + parser.finish()
    plain = "".join(i for i in items if isinstance(i, str))
    return (plain, [i for i in items if isinstance(i, ParsedAction)],
            [i for i in items if isinstance(i, ActionIssue)])


def _first(text: str, *markers: str) -> tuple[int, str | None]:
    """(index, marker) of the marker that occurs first in `text`; (-1, None) when none does."""
    found = [(i, m) for m in markers if (i := text.find(m)) >= 0]
    return min(found) if found else (-1, None)


def _partial_marker(text: str, markers: Iterable[str]) -> int:
    """How many trailing characters of `text` are the beginning of a marker (and may still become one)."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


def _add_text(out: list[Item], text: str) -> None:
    if not text:
        return
    if out and isinstance(out[-1], str):
        out[-1] += text
    else:
        out.append(text)


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET else text[:SNIPPET - 1] + "…"


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
