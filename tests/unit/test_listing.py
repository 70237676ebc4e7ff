"""The list's parameters (SPEC §7) read into a page, and the count it reports: pure, no service."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tracker.listing import Count, JobFilter, JobQuery, parse_query, summary_count

INT64_MAX = 9223372036854775807
STATUS_TEXT = "status parameter must be one of PENDING, SUCCEEDED, FAILED"
ORDERBY_TEXT = "orderby parameter must be one of id, start_time, end_time, status"
SORT_TEXT = "sortOrder parameter must be asc or desc"
LIMIT_TEXT = "limit parameter must be an integer from 1 to 1000"  # SPEC §7's own example
OFFSET_TEXT = f"offset parameter must be an integer from 0 to {INT64_MAX}"
PAGE_TEXT = f"page parameter must be an integer from 1 to {INT64_MAX}"


def refused(params: dict[str, str | list[str]]) -> str:
    with pytest.raises(ValueError) as raised:
        parse_query(params)
    return str(raised.value)


def test_the_defaults_are_the_specs() -> None:
    assert parse_query({}) == JobQuery(JobFilter(), order_by="id", descending=False, limit=100, offset=0)


def test_status_may_repeat_and_keeps_any_of_them() -> None:
    assert parse_query({"status": "FAILED"}).statuses == ("FAILED",)
    both = parse_query({"status": ["FAILED", "PENDING", "FAILED"]})
    assert set(both.statuses) == {"FAILED", "PENDING"} and len(both.statuses) == 2
    assert set(parse_query({"status": ["SUCCEEDED", "PENDING", "FAILED"]}).kept_statuses) == {
        "PENDING",
        "SUCCEEDED",
        "FAILED",
    }
    assert set(parse_query({}).kept_statuses) == {"PENDING", "SUCCEEDED", "FAILED"}


@pytest.mark.parametrize("value", ["RUNNING", "pending", "", "PENDING,FAILED", " PENDING"])
def test_a_bad_status_is_refused_naming_the_parameter(value: str) -> None:
    assert refused({"status": value}) == STATUS_TEXT
    assert refused({"status": ["PENDING", value]}) == STATUS_TEXT


@pytest.mark.parametrize("key", ["id", "start_time", "end_time", "status"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_every_order(key: str, order: str) -> None:
    query = parse_query({"orderby": key, "sortOrder": order})
    assert (query.order_by, query.descending) == (key, order == "desc")


@pytest.mark.parametrize(("name", "value", "text"), [
    ("orderby", "message", ORDERBY_TEXT),
    ("orderby", "ID", ORDERBY_TEXT),
    ("orderby", "", ORDERBY_TEXT),
    ("sortOrder", "DESC", SORT_TEXT),
    ("sortOrder", "descending", SORT_TEXT),
    ("sortOrder", "", SORT_TEXT),
])  # fmt: skip
def test_a_bad_order_is_refused_naming_the_parameter(name: str, value: str, text: str) -> None:
    assert refused({name: value}) == text


def test_limit_boundaries() -> None:
    assert parse_query({"limit": "1"}).limit == 1
    assert parse_query({"limit": "1000"}).limit == 1000
    assert parse_query({"limit": "+0010"}).limit == 10  # as Go's strconv.Atoi reads it
    for value in ("0", "1001", "-1", "", "abc", "1.5", "1e3", "0x10", " 5", "5 ", "١٢", "9" * 400):
        assert refused({"limit": value}) == LIMIT_TEXT, value


def test_offset_and_page() -> None:
    assert parse_query({"offset": "0"}).offset == 0
    assert parse_query({"offset": "250"}).offset == 250
    assert parse_query({"page": "1"}).offset == 0
    assert parse_query({"page": "3"}).offset == 200  # default limit 100
    assert parse_query({"page": "3", "limit": "10"}).offset == 20
    assert parse_query({"page": "3", "offset": "7"}).offset == 7  # offset wins
    assert parse_query({"offset": str(INT64_MAX)}).offset == INT64_MAX
    assert parse_query({"page": str(INT64_MAX), "limit": "1000"}).offset == INT64_MAX  # no further than int64
    for value in ("-1", "", "x", "1.0", str(INT64_MAX + 1)):
        assert refused({"offset": value}) == OFFSET_TEXT, value
    for value in ("0", "-1", "", "x", str(INT64_MAX + 1)):
        assert refused({"page": value}) == PAGE_TEXT, value
    # offset wins, but a bad page is still a bad value
    assert refused({"offset": "5", "page": "0"}) == PAGE_TEXT


def test_the_id_bounds() -> None:
    query = parse_query({"idBelow": "500", "idAbove": "20"})
    assert (query.id_below, query.id_above) == (500, 20)
    assert parse_query({}).id_below is None
    for name in ("idBelow", "idAbove"):
        assert refused({name: "-1"}) == f"{name} parameter must be an integer from 0 to {INT64_MAX}"


@pytest.mark.parametrize("name", ["orderby", "sortOrder", "limit", "offset", "page", "idBelow", "idAbove"])
def test_a_single_valued_parameter_given_twice_is_refused(name: str) -> None:
    assert refused({name: ["1", "1"]}) == f"{name} parameter must be given at most once"


def test_unknown_parameters_are_ignored() -> None:
    assert parse_query({"orderBy": "nothing", "sort": "x", "Limit": "0", "foo": ["1", "2"]}) == parse_query({})


def test_the_first_bad_parameter_in_a_fixed_order_is_named() -> None:
    assert refused({"limit": "0", "status": "x"}) == STATUS_TEXT
    assert refused({"page": "0", "limit": "0"}) == LIMIT_TEXT


@given(limit=st.integers(1, 1000), page=st.integers(1, 10**12))
def test_a_page_starts_where_the_pages_before_it_end(limit: int, page: int) -> None:
    assert parse_query({"limit": str(limit), "page": str(page)}).offset == (page - 1) * limit


@given(text=st.one_of(st.text(max_size=30), st.from_regex(r"\A[+-]?0*[0-9]{1,5}\Z")))
def test_limit_is_a_decimal_integer_from_1_to_1000_or_refused(text: str) -> None:
    decimal = re.fullmatch(r"[+-]?[0-9]+", text, flags=re.ASCII) is not None
    if decimal and 1 <= int(text) <= 1000:
        assert parse_query({"limit": text}).limit == int(text)
    else:
        assert refused({"limit": text}) == LIMIT_TEXT


@given(offset=st.integers(0, 10**15), limit=st.integers(1, 1000))
def test_reach_is_offset_plus_limit(offset: int, limit: int) -> None:
    assert JobQuery(offset=offset, limit=limit).reach == offset + limit
    assert JobQuery(offset=INT64_MAX, limit=limit).reach == INT64_MAX


def test_the_count_is_exact_up_to_the_cap_then_an_estimate_that_says_so() -> None:
    assert summary_count(0, None) == Count(0)
    assert summary_count(1000, 5) == Count(1000)  # at most the cap: exact, whatever the estimate
    assert summary_count(1001, 250_000) == Count(250_000, estimated=True)
    # never less than what is known to match
    assert summary_count(1001, 40) == Count(1001, estimated=True)
    assert summary_count(1001, None) == Count(1001)  # no estimate to give: the count given is exact
