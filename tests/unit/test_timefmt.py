"""Timestamps: the quick path for the common shape answers exactly as the general path does."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker import timefmt

# Characters that matter to either parser at any position of the 27-character shape.
_CHARS = st.sampled_from([*"0123456789-:.TtZz+ _٣", "\u0661"])
_COMMON = "2026-11-28T23:02:01.623673Z"


def _answer(parse, text: str) -> tuple[str, object]:
    try:
        instant = parse(text)
    except ValueError as exc:
        return "refused", str(exc)
    return "parsed", (instant, instant.utcoffset(), instant.tzinfo)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.integers(0, 26), _CHARS), max_size=4), st.datetimes())
def test_the_quick_path_agrees_with_the_general_one(changes: list[tuple[int, str]], instant: dt.datetime) -> None:
    text = list(timefmt.format_time(instant.replace(tzinfo=dt.UTC)) or "")
    for position, char in changes:
        text[position] = char
    candidate = "".join(text)
    assert _answer(timefmt.parse_time, candidate) == _answer(timefmt._parse_time_generally, candidate)  # noqa: SLF001


@pytest.mark.parametrize(
    "text",
    [
        _COMMON,
        "2026-11-28T23:02:60.000000Z",  # a leap second: refused, with its own reason
        "2026-02-30T23:02:01.623673Z",  # no such day
        "2026-11-28T24:00:00.000000Z",
        "2026-11-28t23:02:01.623673Z",
        "2026-11-28T23:02:01.623673z",
        "2026-11-28 23:02:01.623673Z",
        "2026-11-28T23:02:01,623673Z",
        "2026-11-28T23:02:01.62367\u0663Z",  # a digit, but not an ASCII one
    ],
)
def test_the_common_shape_and_its_near_misses(text: str) -> None:
    assert _answer(timefmt.parse_time, text) == _answer(timefmt._parse_time_generally, text)  # noqa: SLF001


def test_the_common_shape_is_read_in_utc_to_the_microsecond() -> None:
    parsed = timefmt.parse_time(_COMMON)
    assert parsed == dt.datetime(2026, 11, 28, 23, 2, 1, 623673, tzinfo=dt.UTC)
    assert parsed.tzinfo is dt.UTC


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_every_instant_is_written_in_the_common_shape_and_read_back_exactly(instant: dt.datetime) -> None:
    text = timefmt.format_time(instant)
    assert text is not None and len(text) == 27, text  # years below 1000 too: "0999-…"
    assert timefmt.parse_time(text) == instant


def test_an_early_year_is_written_with_four_digits() -> None:
    instant = dt.datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert timefmt.format_time(instant) == "0999-01-02T03:04:05.000006Z"
