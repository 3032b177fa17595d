"""Numbers as words, for models whose text is words: `number_words(47)` -> "forty seven", its inverse
`words_number("forty seven")` -> 47, and `spell_numbers` for a whole text ("battery: 45%" -> "battery: forty five
percent"). A model declares that its context is read this way with `conversation: {context_numbers: words}`
(ConversationFormat), and action arguments it writes in words with `actions: {number_words: [...]}` (ActionFormat)."""

from __future__ import annotations

import re

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_NUMBER = re.compile(r"(?<![\w.])(-?)(\d{1,6})(?:\.(\d+))?(?!\w)(\s*%)?")


def number_words(n: int) -> str:
    """0..999,999 in words: 7 -> 'seven', 47 -> 'forty seven', 100 -> 'one hundred', 2305 -> 'two thousand three
    hundred five'."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"{n} is outside 0..999999")
    if n < len(NUMBERS):
        return NUMBERS[n]
    if n < 100:
        return TENS[n // 10] + (f" {NUMBERS[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{NUMBERS[n // 100]} hundred" + (f" {number_words(n % 100)}" if n % 100 else "")
    return f"{number_words(n // 1000)} thousand" + (f" {number_words(n % 1000)}" if n % 1000 else "")


_UNITS = {w: i for i, w in enumerate(NUMBERS)} | {w: 10 * i for i, w in enumerate(TENS) if w}


def words_number(text: str) -> int | None:
    """The number that `number_words` writes as `text` ("forty seven" -> 47; a hyphen counts as a space), or None
    when `text` is not exactly such a number ("five five", "seven forty", "five point two")."""
    words = text.lower().replace("-", " ").split()
    total = part = 0
    for word in words:
        if word in _UNITS:
            part += _UNITS[word]
        elif word == "hundred":
            part *= 100
        elif word == "thousand":
            total, part = total + part * 1000, 0
        else:
            return None
    n = total + part
    return n if words and n < 1_000_000 and number_words(n) == " ".join(words) else None


def spell_numbers(text: str) -> str:
    """`text` with every plain number (up to six digits, an optional decimal part and %) in words:
    "battery: 45%, 2.5 m" -> "battery: forty five percent, two point five m"."""

    def spoken(match: re.Match) -> str:
        sign, whole, decimals, percent = match.groups()
        words = ("minus " if sign else "") + number_words(int(whole))
        if decimals:
            words += " point " + " ".join(NUMBERS[int(d)] for d in decimals)
        return words + (" percent" if percent else "")

    return _NUMBER.sub(spoken, text)
