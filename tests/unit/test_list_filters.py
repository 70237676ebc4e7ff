"""The list's filters of SPEC §11 read from a query string (``listing.parse_filter``): pure, no service."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker import listing
from tracker.listing import JobFilter, LabelMatch, parse_filter, parse_query

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
KIND_TEXT = "kind parameter must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
LABEL_TEXT = (
    "label parameter must be key=value or key, the key 1 to 63 characters of a-z 0-9 . _ / -, "
    "starting and ending with a letter or digit, the value at most 256 characters"
)
ERROR_CODE_TEXT = "errorCode parameter must be 1 to 64 characters of a-z 0-9 _ . -"


def started_text(name: str) -> str:
    return (
        f"{name} parameter must be an RFC 3339 time, like 2021-02-18T17:13:56Z, "
        "or a span back from now: 90s, 15m, 2h, 7d"
    )


def refused(params: dict[str, str | list[str]]) -> str:
    with pytest.raises(ValueError) as raised:
        parse_filter(params, NOW)
    return str(raised.value)


def test_no_filter_keeps_every_job() -> None:
    assert parse_filter({}, NOW) == JobFilter()
    assert not JobFilter().beyond_status
    assert JobFilter().matches("PENDING", NOW)


def test_kinds_and_error_codes_repeat_as_any_of_them_sorted_once_each() -> None:
    chosen = parse_filter({"kind": ["b.x", "a-1", "b.x"], "errorCode": ["timeout", "lost"]}, NOW)
    assert chosen.kinds == ("a-1", "b.x")
    assert chosen.error_codes == ("lost", "timeout")
    assert chosen.matches("FAILED", NOW, kind="b.x", error_code="lost")
    assert not chosen.matches("FAILED", NOW, kind="c", error_code="lost")
    assert not chosen.matches("FAILED", NOW, kind="a-1", error_code="cancelled")


def test_labels_are_key_value_or_key_alone_and_every_one_must_match() -> None:
    chosen = parse_filter({"label": ["env=prod", "team", "url=a=b", "note="]}, NOW)
    assert set(chosen.labels) == {
        LabelMatch("env", "prod"),
        LabelMatch("team"),
        LabelMatch("url", "a=b"),  # split at the first "="
        LabelMatch("note", ""),  # the empty value, not "any value"
    }
    every = (("env", "prod"), ("note", ""), ("team", "x"), ("url", "a=b"))
    assert chosen.matches("SUCCEEDED", NOW, job_labels=every)
    assert not chosen.matches("SUCCEEDED", NOW, job_labels=every[:2])
    assert not chosen.matches("SUCCEEDED", NOW, job_labels=(("env", "dev"), *every[1:]))


def test_an_error_code_keeps_failed_jobs_only() -> None:
    assert parse_filter({"errorCode": "lost"}, NOW).kept_statuses == ("FAILED",)
    assert parse_filter({"errorCode": "lost", "status": ["PENDING", "FAILED"]}, NOW).kept_statuses == ("FAILED",)
    assert parse_filter({"errorCode": "lost", "status": "PENDING"}, NOW).kept_statuses == ()
    assert parse_query({"kind": "k"}).kept_statuses == listing.STATUSES


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("90s", dt.timedelta(seconds=90)),
        ("15m", dt.timedelta(minutes=15)),
        ("2h", dt.timedelta(hours=2)),
        ("7d", dt.timedelta(days=7)),
        ("0s", dt.timedelta(0)),
        ("007d", dt.timedelta(days=7)),
    ],
)
def test_a_span_is_back_from_now(text: str, back: dt.timedelta) -> None:
    chosen = parse_filter({"startedAfter": text, "startedBefore": text}, NOW)
    assert chosen.started_after == chosen.started_before == NOW - back


def test_a_span_from_before_the_first_instant_is_since_ever() -> None:
    assert parse_filter({"startedAfter": "9999999999d"}, NOW).started_after == listing.EARLIEST


def test_times_are_rfc_3339_with_an_offset_in_utc() -> None:
    chosen = parse_filter({"startedAfter": "2026-12-07T13:00:00+01:00", "startedBefore": "2026-12-07T12:30:00.5Z"}, NOW)
    assert chosen.started_after == NOW
    assert chosen.started_before == NOW + dt.timedelta(minutes=30, milliseconds=500)


def test_after_is_inclusive_before_is_not_so_adjacent_windows_share_no_job() -> None:
    after = parse_filter({"startedAfter": "2026-12-07T12:00:00Z"}, NOW)
    before = parse_filter({"startedBefore": "2026-12-07T12:00:00Z"}, NOW)
    assert after.matches("PENDING", NOW) and not before.matches("PENDING", NOW)
    earlier = NOW - dt.timedelta(microseconds=1)
    assert before.matches("PENDING", earlier) and not after.matches("PENDING", earlier)


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"kind": ""}, KIND_TEXT),
        ({"kind": "a b"}, KIND_TEXT),
        ({"kind": ["ok", "x" * 65]}, KIND_TEXT),
        ({"label": ""}, LABEL_TEXT),
        ({"label": "=v"}, LABEL_TEXT),
        ({"label": "Env=prod"}, LABEL_TEXT),
        ({"label": "env-=prod"}, LABEL_TEXT),
        ({"label": "k" * 64}, LABEL_TEXT),
        ({"label": "env=" + "v" * 257}, LABEL_TEXT),
        ({"label": "env=a\x00b"}, LABEL_TEXT),
        ({"errorCode": "Lost"}, ERROR_CODE_TEXT),
        ({"errorCode": ""}, ERROR_CODE_TEXT),
        ({"startedAfter": ""}, started_text("startedAfter")),
        ({"startedAfter": "1w"}, started_text("startedAfter")),
        ({"startedAfter": "-2h"}, started_text("startedAfter")),
        ({"startedAfter": "12345678901s"}, started_text("startedAfter")),
        ({"startedBefore": "2026-12-07T12:00:00"}, started_text("startedBefore")),  # no offset
        ({"startedBefore": "2026-02-30T12:00:00Z"}, started_text("startedBefore")),
        ({"startedBefore": ["1h", "2h"]}, "startedBefore parameter must be given at most once"),
    ],
)
def test_a_bad_value_names_its_parameter(params: dict[str, str | list[str]], text: str) -> None:
    assert refused(params) == text


def test_the_list_reads_the_filter_beside_its_page() -> None:
    query = parse_query({"kind": "k", "status": "FAILED", "limit": "5", "startedAfter": "1h"}, NOW)
    assert query.where == JobFilter(statuses=("FAILED",), kinds=("k",), started_after=NOW - dt.timedelta(hours=1))
    assert query.statuses == ("FAILED",)
    assert query.limit == 5


@given(st.integers(0, 9999999999), st.sampled_from("smhd"))
def test_every_span_of_the_pattern_is_an_instant_no_later_than_now(number: int, unit: str) -> None:
    instant = parse_filter({"startedAfter": f"{number}{unit}"}, NOW).started_after
    assert instant is not None
    assert listing.EARLIEST <= instant <= NOW
