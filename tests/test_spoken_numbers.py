"""Numbers in words (core/kernel/spoken_numbers.py): what a model declaring `context_numbers: words` reads."""

from __future__ import annotations

import pytest

from omnivox.core.kernel.spoken_numbers import number_words, spell_numbers, words_number


@pytest.mark.parametrize("n, words", [(0, "zero"), (7, "seven"), (19, "nineteen"), (40, "forty"),
                                      (47, "forty seven"), (100, "one hundred"), (305, "three hundred five"),
                                      (2000, "two thousand"), (12_345, "twelve thousand three hundred forty five")])
def test_number_words(n, words):
    assert number_words(n) == words


def test_number_words_refuses_what_it_cannot_say():
    for n in (-1, 1_000_000):
        with pytest.raises(ValueError, match="outside 0..999999"):
            number_words(n)


@pytest.mark.parametrize("text, spoken", [
    ("battery: 45%, location: kitchen", "battery: forty five percent, location: kitchen"),
    ("battery 100 %", "battery one hundred percent"),
    ("2.5 m at -3 degrees", "two point five m at minus three degrees"),
    ("it is 7. then 20% and 30", "it is seven. then twenty percent and thirty"),
    ("room 12b, x45, v1.2.3, 1000000", "room 12b, x45, v1.2.3, 1000000"),  # not plain numbers: left as they are
    ("no numbers here", "no numbers here"),
])
def test_spell_numbers(text, spoken):
    assert spell_numbers(text) == spoken


def test_words_number_reads_back_every_number_that_number_words_writes():
    assert all(words_number(number_words(n)) == n for n in range(0, 1_000_000, 37))
    assert [words_number(t) for t in ("forty-seven", "Five", "one hundred")] == [47, 5, 100]


@pytest.mark.parametrize("text", ["five five", "seven forty", "hundred", "thousand", "zero five", "twenty zero",
                                  "five point two", "far", "", "one thousand thousand"])
def test_words_number_refuses_what_number_words_would_not_write(text):
    assert words_number(text) is None
