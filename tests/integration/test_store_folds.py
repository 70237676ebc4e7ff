"""PostgreSQL folds a batch in SQL, SQLite with tracker.merge: for any batches, the rows agree with
each other and with SPEC §3 and §11 (``tests.oracle``), and so do the jobs each says a batch ended.

Events are timed a few µs either side of each job's own start_time, so both sides of
``end_time = max(t.occurred_at, start_time)`` are taken whatever the date.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import oracle
from tracker.events import Event, new_event
from tracker.model import Applied, Job
from tracker.store import JobStore, make_engine, migrate, open_job_store
from tracker.store.tables import async_status_delivery

pytestmark = [pytest.mark.postgres]

# A few fixed ids make the same event arrive again, and (abusively) with other content; ties
# on time and seq are common, so the event_id decides the order.
EVENT_IDS = st.sampled_from([str(uuid.UUID(int=n)) for n in range(6)]) | st.uuids().map(str)
EVENT = st.tuples(
    st.integers(min_value=0, max_value=2),  # which of three jobs
    st.sampled_from(["progress", "progress", "succeeded", "failed", "cancel_requested"]),
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", "Z"])),
    st.integers(min_value=-2, max_value=4),  # µs from the job's start_time
    st.integers(min_value=0, max_value=2),  # seq
    EVENT_IDS,
    st.one_of(st.none(), st.sampled_from([0, 33.25, 100])),  # progress
    # the outcome: a succeeded event's result, a failed one's (code, details); dropped on other types
    st.one_of(st.none(), st.sampled_from([{"rows": 1, "é": [True, None]}, "ok", 0, ("lost", None), ("x.y", [1.5])])),
)


@pytest.fixture(scope="module")
def stores(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JobStore, JobStore]]:
    postgres = make_engine(postgres_url)
    sqlite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('folds') / 'tracker.db'}")
    migrate(sqlite)
    yield open_job_store(postgres), open_job_store(sqlite)
    postgres.dispose()
    sqlite.dispose()


def make_event(
    job: Job,
    kind: str,
    message: str | None,
    at: int,
    seq: int,
    event_id: str,
    progress: float | None = None,
    outcome: object = None,
) -> Event:
    code, details = outcome if kind == "failed" and isinstance(outcome, tuple) else (None, None)
    return new_event(
        job.id,
        kind,
        message,
        seq=seq,
        occurred_at=job.start_time + dt.timedelta(microseconds=at),
        event_id=event_id,
        progress=progress,
        result=outcome if kind == "succeeded" else None,
        error_code=code,
        error_details=details,
    )


def row_of(job: Job) -> tuple[object, ...]:
    """The row, with its times as distances from start_time (the two stores start jobs apart)."""
    since = [None if at is None else at - job.start_time for at in (job.end_time, job.cancel_requested_at)]
    return (
        job.status,
        job.message,
        *since,
        job.progress,
        job.result_json,
        job.error_code,
        job.error_details_json,
    )


def ended_of(applied: Applied, jobs: list[Job]) -> list[tuple[int, str | None, str, dt.timedelta, bool]]:
    """The jobs a batch ended, as (which of ``jobs``, kind, status, duration, whether it queued its webhook)."""
    which = {job.id: n for n, job in enumerate(jobs)}
    assert [e.job_id for e in applied.ended] == sorted(e.job_id for e in applied.ended)
    assert set(applied.queued_deliveries) <= {e.job_id for e in applied.ended}
    return [
        (which[e.job_id], e.kind, e.status, e.end_time - e.start_time, e.job_id in applied.queued_deliveries)
        for e in applied.ended
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(EVENT, max_size=8), min_size=1, max_size=5))
def test_postgresql_folds_batches_as_tracker_merge_does(stores: tuple[JobStore, JobStore], batches) -> None:
    postgres, sqlite = stores
    kinds = ["export", None, "deliveryservice.regenerate"]
    urls = ["https://hooks.test/a", None, None]  # SPEC §13: the first has a webhook
    jobs = [
        (postgres.create_job("created", kind=k, notify_url=u), sqlite.create_job("created", kind=k, notify_url=u))
        for k, u in zip(kinds, urls, strict=True)
    ]
    for batch in batches:
        ended = []
        for side, store in enumerate((postgres, sqlite)):
            applied = store.apply([make_event(jobs[job][side], *fields) for job, *fields in batch])
            ended.append(ended_of(applied, [pair[side] for pair in jobs]))
        assert ended[0] == ended[1]
    for in_postgres, in_sqlite in jobs:
        assert row_of(postgres.get_job(in_postgres.id)) == row_of(sqlite.get_job(in_sqlite.id))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    distinct=st.lists(EVENT, max_size=16, unique_by=lambda fields: fields[5]),
    data=st.data(),
)
def test_both_stores_fold_batches_as_the_spec_says(stores: tuple[JobStore, JobStore], distinct, data) -> None:
    """Each event_id names one event; copies of them arrive again, in any order and batches."""
    copies = data.draw(st.lists(st.sampled_from(distinct), max_size=8)) if distinct else []
    stream = data.draw(st.permutations(distinct + copies))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for store in stores:
        jobs = [store.create_job("created", notify_url=url) for url in ("https://hooks.test/0", None, None)]
        ended: list[int] = []
        queued: list[int] = []
        for batch in batches:
            applied = store.apply([make_event(jobs[job], *fields) for job, *fields in batch])
            ended += [e.job_id for e in applied.ended]
            queued += applied.queued_deliveries
        for n, job in enumerate(jobs):
            wire = [make_event(job, *fields).to_wire() for j, *fields in distinct if j == n]
            expected = oracle.expected_row(job.start_time, "created", wire)
            assert oracle.as_row(store.get_job(job.id)) == expected
            # each job that ended is said to have ended once, by the batch that ended it, which queued
            # its webhook if it has one (SPEC §13), once
            assert ended.count(job.id) == (expected.status != "PENDING")
            assert queued.count(job.id) == (expected.status != "PENDING" and job.notify_url is not None)
        ours = async_status_delivery.c.job_id.in_([job.id for job in jobs])
        with store.engine.connect() as conn:
            kept = conn.execute(sa.select(async_status_delivery.c.job_id).where(ours)).scalars().all()
        assert sorted(kept) == sorted(queued)
