"""GET /api/{version}/async_status, the job list (SPEC §7), in process over real SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import falcon.testing
import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st

from tests.integration.test_api import Api, assert_alert, build
from tests.spec_texts import MISSING_READ, UNAUTHORIZED
from tracker import events
from tracker.config import Settings
from tracker.store import make_engine, open_job_store
from tracker.store.tables import async_status
from tracker.users import UserStore

LIST = "/api/5.0/async_status"
INT64_MAX = 9223372036854775807
T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
ORDERS = [(key, order) for key in ("id", "start_time", "end_time", "status") for order in ("asc", "desc")]
FILTERS: list[list[str]] = [[], ["FAILED"], ["PENDING", "FAILED"], ["SUCCEEDED", "PENDING"], ["SUCCEEDED"]]


def get(api: Api, query: str = "", who: str = "ops") -> falcon.testing.Result:
    return api.client.simulate_get(LIST, query_string=query, headers=api.bearer(who))


def listed(api: Api, query: str = "") -> dict[str, Any]:
    result = get(api, query)
    assert result.status_code == 200, result.text
    assert result.headers["content-type"] == "application/json"
    assert list(result.json) == ["response", "summary"]
    return result.json


def seconds(n: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=n)


def make_jobs(api: Api) -> None:
    """Twelve jobs: four PENDING, five SUCCEEDED, three FAILED, with start and end times that tie."""
    starts = [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 6]  # seconds after T0, by creation
    ends: dict[int, tuple[str, float]] = {  # by the job's place in creation order; the rest stay PENDING
        1: ("succeeded", 30),
        2: ("failed", 20),
        4: ("succeeded", 20),  # ties with the end of 2
        5: ("succeeded", 10),
        7: ("failed", 40),
        8: ("succeeded", 40),  # ties with the end of 7
        9: ("succeeded", 15),
        11: ("failed", 10),  # ties with the end of 5
    }
    ids = [api.jobs.create_job(f"job {n}").id for n in range(len(starts))]
    with api.jobs.engine.begin() as conn:
        for job_id, start in zip(ids, starts, strict=True):
            conn.execute(sa.update(async_status).where(async_status.c.id == job_id).values(start_time=seconds(start)))
    batch = [events.new_event(ids[n], kind, f"{kind} {n}", occurred_at=seconds(at)) for n, (kind, at) in ends.items()]
    assert api.jobs.apply(batch).changed_jobs == len(ends)


def every_job(api: Api) -> list[dict[str, Any]]:
    """Every job as GET by id shows it, by id."""
    with api.jobs.engine.connect() as conn:
        ids = conn.execute(sa.select(async_status.c.id).order_by(async_status.c.id)).scalars().all()
    rows = []
    for job_id in ids:
        result = api.client.simulate_get(f"{LIST}/{job_id}", headers=api.bearer("ops"))
        rows.append(result.json["response"])
    return rows


def in_order(rows: list[dict[str, Any]], key: str, order: str, statuses: list[str]) -> list[dict[str, Any]]:
    """The oracle: the SPEC's order restated. A NULL end_time is later than any time; ties by id,
    in the same direction. The times' text sorts as the times do (fixed width, UTC)."""

    def sort_key(row: dict[str, Any]) -> tuple[Any, ...]:
        value = row[key]
        return (value is None, value or "", row["id"])

    kept = [row for row in rows if not statuses or row["status"] in statuses]
    return sorted(kept, key=sort_key, reverse=order == "desc")


def query_of(statuses: list[str], **params: object) -> str:
    pairs = [("status", status) for status in statuses] + [(name, str(value)) for name, value in params.items()]
    return "&".join(f"{name}={value}" for name, value in pairs)


def test_the_default_page_is_every_job_by_id_as_get_shows_it(api: Api) -> None:
    make_jobs(api)
    rows = every_job(api)
    body = listed(api)
    assert body == {"response": rows, "summary": {"count": 12}}  # rows exactly as GET by id gives them
    assert [row["id"] for row in body["response"]] == sorted(row["id"] for row in rows)
    assert get(api).text.startswith('{"response":[{"id":')
    for version in ("4.0", "4.1"):
        assert api.client.simulate_get(f"/api/{version}/async_status", headers=api.bearer("ops")).json == body


def test_an_empty_table_lists_nothing(api: Api) -> None:
    assert listed(api) == {"response": [], "summary": {"count": 0}}
    assert listed(api, "status=FAILED&orderby=end_time&sortOrder=desc&page=4") == {
        "response": [],
        "summary": {"count": 0},
    }


@pytest.mark.parametrize(("key", "order"), ORDERS)
def test_every_order_filter_and_page_against_the_oracle(api: Api, key: str, order: str) -> None:
    make_jobs(api)
    rows = every_job(api)
    for statuses in FILTERS:
        expected = in_order(rows, key, order, statuses)
        whole = listed(api, query_of(statuses, orderby=key, sortOrder=order, limit=1000))
        assert whole == {"response": expected, "summary": {"count": len(expected)}}, statuses
        by_offset, by_page = [], []
        for page in range(1, 5):  # 5 per page: up to 12 rows and an empty page after them
            at_offset = listed(api, query_of(statuses, orderby=key, sortOrder=order, limit=5, offset=(page - 1) * 5))
            numbered = listed(api, query_of(statuses, orderby=key, sortOrder=order, limit=5, page=page))
            assert at_offset == numbered
            assert at_offset["summary"] == {"count": len(expected)}  # regardless of paging
            by_offset += at_offset["response"]
            by_page += numbered["response"]
        assert by_offset == by_page == expected


def test_ties_are_broken_by_id_in_the_sorts_direction(api: Api) -> None:
    make_jobs(api)
    ids = [row["id"] for row in every_job(api)]
    first, second = ids[0], ids[1]  # both started at T0, the earliest start
    ascending = [row["id"] for row in listed(api, "orderby=start_time&limit=2")["response"]]
    assert ascending == [first, second]
    descending = [row["id"] for row in listed(api, "orderby=start_time&sortOrder=desc")["response"]]
    assert descending[-2:] == [second, first]
    # The PENDING jobs have no end time: last ascending, first descending, by id among themselves.
    pending = [ids[n] for n in (0, 3, 6, 10)]
    assert [row["id"] for row in listed(api, "orderby=end_time")["response"]][-4:] == pending
    assert [row["id"] for row in listed(api, "orderby=end_time&sortOrder=desc")["response"]][:4] == pending[::-1]


def test_status_filters_and_their_counts(api: Api) -> None:
    make_jobs(api)
    counts = {"PENDING": 4, "SUCCEEDED": 5, "FAILED": 3}
    for size in (1, 2, 3):
        for statuses in itertools.combinations(counts, size):
            for limit in (1, 100):
                body = listed(api, query_of(list(statuses), limit=limit))
                assert body["summary"] == {"count": sum(counts[status] for status in statuses)}
                assert len(body["response"]) == min(limit, body["summary"]["count"])
                assert {row["status"] for row in body["response"]} <= set(statuses)
    # Repeating a status changes nothing; a page past the end still counts every match.
    assert listed(api, "status=FAILED&status=FAILED") == listed(api, "status=FAILED")
    assert listed(api, "status=SUCCEEDED&offset=50") == {"response": [], "summary": {"count": 5}}


def test_limit_one_and_a_thousand(api: Api) -> None:
    insert_pending(api, 1001)
    one = listed(api, "limit=1")
    assert len(one["response"]) == 1
    thousand = listed(api, "limit=1000")["response"]
    assert len(thousand) == 1000
    assert [row["id"] for row in thousand] == sorted(row["id"] for row in thousand)
    assert listed(api, "limit=1000&page=2")["response"] == [
        listed(api, "orderby=id&sortOrder=desc&limit=1")["response"][0]
    ]
    assert len(listed(api)["response"]) == 100  # the default limit


def insert_pending(api: Api, count: int) -> None:
    with api.jobs.engine.begin() as conn:
        conn.execute(
            sa.insert(async_status),
            [
                {"status": "PENDING", "message": "m", "initial_message": "m", "start_time": seconds(n)}
                for n in range(count)
            ],
        )


def test_the_count_is_exact_up_to_a_thousand_then_estimated_on_postgresql(api: Api) -> None:
    insert_pending(api, 1000)
    assert listed(api, "limit=1")["summary"] == {"count": 1000}
    assert listed(api, "status=PENDING&limit=1")["summary"] == {"count": 1000}
    insert_pending(api, 1)
    if api.jobs.engine.dialect.name == "sqlite":
        assert listed(api, "limit=1")["summary"] == {"count": 1001}  # SQLite counts exactly
        return
    with api.jobs.engine.connect() as conn:
        conn.execute(sa.text("ANALYZE async_status"))  # the statistics the estimate comes from
        conn.commit()
    for query in ("limit=1", "status=PENDING", "status=PENDING&status=FAILED&offset=3"):
        assert listed(api, query)["summary"] == {"count": 1001, "estimated": True}, query
    # Never less than what is known to match, and a filter under the cap is still exact.
    assert listed(api, "status=FAILED")["summary"] == {"count": 0}
    assert listed(api, "idAbove=900")["summary"] == {"count": 101}


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("limit=0", "limit parameter must be an integer from 1 to 1000"),  # SPEC §7's own example
        ("limit=1001", "limit parameter must be an integer from 1 to 1000"),
        ("limit=ten", "limit parameter must be an integer from 1 to 1000"),
        ("limit=1.5", "limit parameter must be an integer from 1 to 1000"),
        ("limit=", "limit parameter must be an integer from 1 to 1000"),
        ("limit=%2010", "limit parameter must be an integer from 1 to 1000"),
        ("limit=10&limit=20", "limit parameter must be given at most once"),
        ("offset=-1", f"offset parameter must be an integer from 0 to {INT64_MAX}"),
        ("offset=1e3", f"offset parameter must be an integer from 0 to {INT64_MAX}"),
        (f"offset={INT64_MAX + 1}", f"offset parameter must be an integer from 0 to {INT64_MAX}"),
        ("page=0", f"page parameter must be an integer from 1 to {INT64_MAX}"),
        ("page=-2", f"page parameter must be an integer from 1 to {INT64_MAX}"),
        ("page=one", f"page parameter must be an integer from 1 to {INT64_MAX}"),
        ("offset=0&page=0", f"page parameter must be an integer from 1 to {INT64_MAX}"),
        ("status=RUNNING", "status parameter must be one of PENDING, SUCCEEDED, FAILED"),
        ("status=pending", "status parameter must be one of PENDING, SUCCEEDED, FAILED"),
        ("status=PENDING,FAILED", "status parameter must be one of PENDING, SUCCEEDED, FAILED"),
        ("status=PENDING&status=", "status parameter must be one of PENDING, SUCCEEDED, FAILED"),
        ("orderby=message", "orderby parameter must be one of id, start_time, end_time, status"),
        ("orderby=ID", "orderby parameter must be one of id, start_time, end_time, status"),
        ("sortOrder=DESC", "sortOrder parameter must be asc or desc"),
        ("sortOrder=", "sortOrder parameter must be asc or desc"),
        ("idBelow=-1", f"idBelow parameter must be an integer from 0 to {INT64_MAX}"),
        ("idAbove=x", f"idAbove parameter must be an integer from 0 to {INT64_MAX}"),
    ],
)
def test_a_bad_value_is_400_naming_the_parameter(api: Api, query: str, text: str) -> None:
    assert_alert(get(api, query), 400, text)


def test_unknown_parameters_are_ignored(api: Api) -> None:
    make_jobs(api)
    assert listed(api, "orderBy=status&sort=desc&Limit=0&foo=1&foo=2&status_=x") == listed(api)


def test_the_largest_offsets_and_pages_are_empty_pages(api: Api) -> None:
    make_jobs(api)
    for query in (f"offset={INT64_MAX}", f"page={INT64_MAX}&limit=1000", f"idBelow={INT64_MAX}&offset=11"):
        body = listed(api, query + "&status=PENDING&status=FAILED&orderby=end_time")
        assert body["response"] == [] or query.startswith("idBelow")
        assert body["summary"] == {"count": 7}


def test_auth_and_permissions_as_get_by_id(api: Api) -> None:
    assert_alert(api.client.simulate_get(LIST), 401, UNAUTHORIZED)
    assert_alert(api.client.simulate_get(LIST, query_string="limit=0"), 401, UNAUTHORIZED)  # who asks comes first
    assert_alert(get(api, "", who="viewer"), 403, MISSING_READ)
    assert_alert(get(api, "limit=0", who="viewer"), 403, MISSING_READ)
    for who in ("ops", "admin"):
        assert get(api, "", who=who).status_code == 200
    token = api.login("ops").cookies["mojolicious"].value
    assert api.client.simulate_get(LIST, cookies={"mojolicious": token}).status_code == 200


def test_offset_paging_across_changes_shifts_and_keyset_paging_does_not(api: Api) -> None:
    ids = [api.jobs.create_job(f"job {n}").id for n in range(6)]
    first = listed(api, "status=PENDING&limit=2")
    assert [row["id"] for row in first["response"]] == ids[:2]
    assert first["summary"] == {"count": 6}
    # Job 1 finishes between the two pages: it leaves the PENDING list, so every later job moves
    # up a place, and the second page by offset starts one further on (the third job is skipped).
    api.jobs.apply([events.new_event(ids[0], "failed", "broke")])
    by_offset = listed(api, "status=PENDING&limit=2&offset=2")
    assert [row["id"] for row in by_offset["response"]] == ids[3:5]
    assert by_offset["summary"] == {"count": 5}
    # The next page after the last id seen skips nothing.
    by_key = listed(api, f"status=PENDING&limit=2&idAbove={ids[1]}")
    assert [row["id"] for row in by_key["response"]] == ids[2:4]
    # It shows up under its new status at once, with the count.
    failed = listed(api, "status=FAILED")
    assert [row["id"] for row in failed["response"]] == [ids[0]] and failed["summary"] == {"count": 1}
    assert failed["response"][0]["message"] == "broke"


def test_newest_first_paging_across_new_jobs(api: Api) -> None:
    ids = [api.jobs.create_job().id for _ in range(5)]
    first = [row["id"] for row in listed(api, "orderby=id&sortOrder=desc&limit=2")["response"]]
    assert first == ids[:-3:-1]
    api.jobs.create_job()  # a new job lands on page one, pushing its last row onto page two
    by_offset = [row["id"] for row in listed(api, "orderby=id&sortOrder=desc&limit=2&page=2")["response"]]
    assert by_offset == [ids[3], ids[2]]  # ids[3] is shown a second time
    by_key = [row["id"] for row in listed(api, f"orderby=id&sortOrder=desc&limit=2&idBelow={first[-1]}")["response"]]
    assert by_key == [ids[2], ids[1]]


def test_a_keyset_walk_visits_every_job_once(api: Api) -> None:
    make_jobs(api)
    expected = in_order(every_job(api), "id", "desc", ["SUCCEEDED", "FAILED"])
    seen: list[dict[str, Any]] = []
    query = "status=SUCCEEDED&status=FAILED&orderby=id&sortOrder=desc&limit=3"
    page = listed(api, query)["response"]
    while page:
        seen += page
        page = listed(api, f"{query}&idBelow={page[-1]['id']}")["response"]
    assert seen == expected


def test_database_outage_is_503(settings: Settings, engine: sa.Engine, users: UserStore) -> None:
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
    api = build(settings, engine, users, jobs=open_job_store(dead))
    result = get(api)
    assert_alert(result, 503, "database unavailable, try again later")
    assert result.headers["retry-after"]
    dead.dispose()


_STATUS = st.sampled_from(["PENDING", "SUCCEEDED", "FAILED"])
_JOBS = st.lists(st.tuples(_STATUS, st.integers(0, 3), st.integers(0, 3)), max_size=25)  # status, start, end (s)


@hypothesis.settings(
    max_examples=25, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    jobs=_JOBS,
    statuses=st.lists(_STATUS, max_size=3),
    key=st.sampled_from(["id", "start_time", "end_time", "status"]),
    order=st.sampled_from(["asc", "desc"]),
    limit=st.integers(1, 7),
    offset=st.integers(0, 30),
)
def test_any_table_and_any_page_as_the_oracle_orders_it(
    api: Api, jobs: list[tuple[str, int, int]], statuses: list[str], key: str, order: str, limit: int, offset: int
) -> None:
    with api.jobs.engine.begin() as conn:
        conn.execute(sa.delete(async_status))
        for status, start, end in jobs:  # few distinct times: many ties, across statuses too
            conn.execute(
                sa.insert(async_status).values(
                    status=status,
                    message="m",
                    initial_message="m",
                    start_time=seconds(start),
                    end_time=None if status == "PENDING" else seconds(start + end),
                )
            )
    rows = every_job(api)
    expected = in_order(rows, key, order, statuses)
    body = listed(api, query_of(statuses, orderby=key, sortOrder=order, limit=limit, offset=offset))
    assert body == {"response": expected[offset : offset + limit], "summary": {"count": len(expected)}}
