"""The list's filters of SPEC §11 (kind, label, errorCode, startedAfter, startedBefore), in process over
real SQLite and PostgreSQL, against an oracle that restates them."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st

from tests.integration.test_api import Api, assert_alert
from tests.integration.test_list import LIST, get, listed, seconds
from tracker import events, timefmt
from tracker.store.tables import async_status

KINDS = ["build", "deliveryservice.regenerate", "purge"]
LABELS = [("env", "prod"), ("env", "dev"), ("team", "cdn"), ("team", ""), ("a.b/c", "x=y")]
CODES = ["lost", "timeout", "disk.full"]


def insert(api: Api, jobs: list[dict[str, Any]]) -> None:
    with api.jobs.engine.begin() as conn:
        conn.execute(sa.delete(async_status))
        for job in jobs:
            conn.execute(sa.insert(async_status).values(message="m", initial_message="m", **job))


def job(
    status: str, start: int, kind: str | None = None, labels: dict[str, str] | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "status": status,
        "start_time": seconds(start),
        "end_time": None if status == "PENDING" else seconds(start + 1),
        "kind": kind,
        "labels": tuple(sorted((labels or {}).items())),
        "error_code": code if status == "FAILED" else None,
    }


def ids(body: dict[str, Any]) -> list[int]:
    return [row["id"] for row in body["response"]]


def oracle(api: Api, params: list[tuple[str, str]]) -> list[int]:
    """The ids of the jobs the SPEC's words keep, newest first, read back as GET by id shows them."""
    got: dict[str, list[str]] = {}
    for name, value in params:
        got.setdefault(name, []).append(value)
    with api.jobs.engine.connect() as conn:
        rows = conn.execute(sa.select(async_status.c.id).order_by(async_status.c.id.desc())).scalars().all()
    kept = []
    for job_id in rows:
        row = api.client.simulate_get(f"{LIST}/{job_id}", headers=api.bearer("ops")).json["response"]
        labels = row.get("labels", {})
        started = timefmt.parse_time(row["start_time"])
        if (
            all(status == row["status"] for status in got.get("status", [])[:1])
            and ("kind" not in got or row.get("kind") in got["kind"])
            and ("errorCode" not in got or row.get("error", {}).get("code") in got["errorCode"])
            and all(
                (key in labels and (not eq or labels[key] == value))
                for key, eq, value in (text.partition("=") for text in got.get("label", []))
            )
            and all(started >= instant(t) for t in got.get("startedAfter", []))
            and all(started < instant(t) for t in got.get("startedBefore", []))
        ):
            kept.append(job_id)
    return kept


def instant(text: str) -> dt.datetime:
    """An RFC 3339 time, or a span in days back from now (the tests' spans are days: a second's drift is nothing)."""
    if text.endswith("d"):
        return dt.datetime.now(dt.UTC) - dt.timedelta(days=int(text[:-1]))
    return timefmt.parse_time(text)


def newest_first(params: list[tuple[str, str]], limit: int = 1000) -> str:
    return urllib.parse.urlencode([*params, ("orderby", "id"), ("sortOrder", "desc"), ("limit", str(limit))])


@pytest.fixture
def table(api: Api) -> Api:
    insert(
        api,
        [
            job("PENDING", 0, "build", {"env": "prod", "team": "cdn"}),
            job("SUCCEEDED", 1, "build", {"env": "dev"}),
            job("FAILED", 2, "purge", {"env": "prod"}, "lost"),
            job("FAILED", 3, None, None, "timeout"),
            job("FAILED", 4, "build", {"team": ""}),
            job("PENDING", 5, "purge", {"a.b/c": "x=y"}),
            job("SUCCEEDED", 6),
            job("FAILED", 7, "build", {"env": "prod"}, "lost"),
        ],
    )
    return api


@pytest.mark.parametrize(
    ("params", "places"),  # places: the jobs kept, by creation order, newest first
    [
        ([("kind", "build")], [7, 4, 1, 0]),
        ([("kind", "build"), ("kind", "purge")], [7, 5, 4, 2, 1, 0]),
        ([("kind", "build"), ("status", "FAILED")], [7, 4]),
        ([("label", "env=prod")], [7, 2, 0]),
        ([("label", "env")], [7, 2, 1, 0]),
        ([("label", "env=prod"), ("label", "team")], [0]),
        ([("label", "team=")], [4]),
        ([("label", "a.b/c=x=y")], [5]),
        ([("errorCode", "lost")], [7, 2]),
        ([("errorCode", "lost"), ("errorCode", "timeout")], [7, 3, 2]),
        ([("errorCode", "lost"), ("status", "PENDING")], []),
        ([("errorCode", "lost"), ("kind", "purge")], [2]),
        ([("startedAfter", "2026-11-01T12:00:05Z")], [7, 6, 5]),
        ([("startedBefore", "2026-11-01T12:00:05Z")], [4, 3, 2, 1, 0]),
        ([("startedAfter", "2026-11-01T12:00:02Z"), ("startedBefore", "2026-11-01T13:00:05+01:00")], [4, 3, 2]),
        ([("startedAfter", "2026-11-01T12:00:01Z"), ("status", "PENDING")], [5]),
        ([("startedAfter", "1d")], []),  # the table's jobs started in 2026-11: more than a day ago
        ([("startedAfter", "3650d")], [7, 6, 5, 4, 3, 2, 1, 0]),
    ],
)
def test_each_filter_alone_and_combined(table: Api, params: list[tuple[str, str]], places: list[int]) -> None:
    with table.jobs.engine.connect() as conn:
        by_place = conn.execute(sa.select(async_status.c.id).order_by(async_status.c.id)).scalars().all()
    expected = [by_place[n] for n in places]
    body = listed(table, newest_first(params))
    assert ids(body) == expected
    assert body["summary"] == {"count": len(expected)}
    assert ids(listed(table, newest_first(params, limit=1))) == expected[:1]
    assert oracle(table, params) == expected


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("kind=a%20b", "kind parameter must be 1 to 64 characters of A-Z a-z 0-9 . _ -"),
        (
            "label=Env=prod",
            "label parameter must be key=value or key, the key 1 to 63 characters of a-z 0-9 . _ / -, "
            "starting and ending with a letter or digit, the value at most 256 characters",
        ),
        ("errorCode=", "errorCode parameter must be 1 to 64 characters of a-z 0-9 _ . -"),
        (
            "startedAfter=yesterday",
            "startedAfter parameter must be an RFC 3339 time, like 2021-02-18T17:13:56Z, "
            "or a span back from now: 90s, 15m, 2h, 7d",
        ),
        ("status=FAILED&startedBefore=2h&startedBefore=1h", "startedBefore parameter must be given at most once"),
    ],
)
def test_a_bad_filter_is_400_naming_the_parameter(api: Api, query: str, text: str) -> None:
    assert_alert(get(api, query), 400, text)


def test_the_count_beyond_a_thousand_counts_the_filter(api: Api) -> None:
    rows = [
        job("FAILED" if n % 2 else "PENDING", n, "many" if n % 3 else "few", {"env": "prod"}, "lost")
        for n in range(2400)
    ]
    insert(api, rows)
    body = listed(api, "kind=many&label=env=prod&limit=1")
    assert len(body["response"]) == 1
    assert body["summary"]["count"] >= 1001
    if api.jobs.engine.dialect.name == "sqlite":  # exact there (docs/http-surface.md)
        assert body["summary"] == {"count": 1600}
    assert listed(api, "kind=few&status=FAILED&errorCode=lost")["summary"] == {"count": 400}


_STATUS = st.sampled_from(["PENDING", "SUCCEEDED", "FAILED"])
_JOB = st.builds(
    job,
    _STATUS,
    st.integers(0, 5),
    st.sampled_from([None, *KINDS]),
    st.lists(st.sampled_from(LABELS), max_size=3).map(dict),
    st.sampled_from([None, *CODES]),
)
_PARAM = st.one_of(
    st.tuples(st.just("status"), _STATUS),
    st.tuples(st.just("kind"), st.sampled_from(KINDS)),
    st.tuples(st.just("errorCode"), st.sampled_from(CODES)),
    st.tuples(st.just("label"), st.sampled_from(LABELS).map(lambda kv: f"{kv[0]}={kv[1]}")),
    st.tuples(st.just("label"), st.sampled_from(LABELS).map(lambda kv: kv[0])),
)
_TIME = st.integers(0, 6).map(lambda n: timefmt.format_time(seconds(n)) or "")


@hypothesis.settings(
    max_examples=30, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    jobs=st.lists(_JOB, max_size=20),
    params=st.lists(_PARAM, max_size=4, unique=True),
    after=st.none() | _TIME,
    before=st.none() | _TIME,
    limit=st.integers(1, 5),
)
def test_any_filters_on_any_table_as_the_oracle_keeps_them(
    api: Api,
    jobs: list[dict[str, Any]],
    params: list[tuple[str, str]],
    after: str | None,
    before: str | None,
    limit: int,
) -> None:
    hypothesis.assume(len([p for p in params if p[0] == "status"]) <= 1)  # the oracle reads one status
    insert(api, jobs)
    params = [*params, *([("startedAfter", after)] if after else []), *([("startedBefore", before)] if before else [])]
    expected = oracle(api, params)
    body = listed(api, newest_first(params, limit))
    assert ids(body) == expected[:limit]
    assert body["summary"] == {"count": len(expected)}


def test_a_lost_job_is_found_by_its_code(api: Api) -> None:
    made = api.jobs.create_job("work", kind="build", labels=(("env", "prod"),))
    failed = events.new_event(made.id, "failed", "lost", error_code="lost", occurred_at=dt.datetime.now(dt.UTC))
    api.jobs.apply([failed])
    body = listed(api, "errorCode=lost&kind=build&label=env=prod&startedAfter=1h")
    assert ids(body) == [made.id]
    assert body["response"][0]["error"] == {"code": "lost"}
