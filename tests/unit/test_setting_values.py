"""Single setting values: numbers and flags are parsed strictly and shown without echoing anything odd."""

from __future__ import annotations

import pytest

from ckpt.errors import ConfigurationError
from ckpt.setting_values import flag, shown_setting, whole_number


@pytest.mark.parametrize("value", [None, "", "  "])
def test_an_unset_number_is_the_default(value):
    assert whole_number("N", value, 7, 1, 10) == 7


@pytest.mark.parametrize(("value", "expected"), [("1", 1), (" 10 ", 10), ("005", 5)])
def test_a_number_within_its_bounds_is_read(value, expected):
    assert whole_number("N", value, 7, 1, 10) == expected


@pytest.mark.parametrize("value", ["0", "11", "-1", "+3", "1.0", "1e1", "ten", "\u00b2", "\u0663", "9" * 5000])
def test_anything_else_is_refused_naming_the_setting_and_its_bounds(value):
    with pytest.raises(ConfigurationError, match=r"^N must be a whole number from 1 to 10, got ") as raised:
        whole_number("N", value, 7, 1, 10)
    assert len(str(raised.value)) < 120  # a 5,000-digit value is described, not echoed


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), (" ON ", True), ("0", False)])
def test_flags_read_the_usual_words(value, expected):
    assert flag("F", value) is expected


@pytest.mark.parametrize("value", ["", "maybe", "tru", "2"])
def test_a_flag_that_is_no_known_word_is_refused(value):
    with pytest.raises(ConfigurationError, match=r"^F must be true or false"):
        flag("F", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("disable", "'disable'"),
        ("x" * 41, "a text of 41 characters"),
        ("é", "a text of 1 characters"),
        (10**50, "a number too large"),
        ([1], "a JSON array"),
        ({}, "a JSON object"),
        (5432, "5432"),
    ],
)
def test_a_setting_is_shown_only_when_short_and_plain(value, expected):
    assert shown_setting(value) == expected
