"""PostgreSQL folds a batch in SQL, SQLite with tracker.merge: for any batches, the rows agree."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker.events import new_event
from tracker.store import JobStore, make_engine, migrate, open_job_store

pytestmark = [pytest.mark.postgres]

START = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # after every job's start: end_time is t's
# A few fixed ids make the same event arrive again, and (abusively) with other content; ties
# on time and seq are common, so the event_id decides the order.
EVENT_IDS = st.sampled_from([str(uuid.UUID(int=n)) for n in range(6)]) | st.uuids().map(str)
EVENT = st.tuples(
    st.integers(min_value=0, max_value=2),  # which of three jobs
    st.sampled_from(["progress", "progress", "succeeded", "failed"]),
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", "Z"])),
    st.integers(min_value=-2, max_value=4),  # µs from START
    st.integers(min_value=0, max_value=2),  # seq
    EVENT_IDS,
)


@pytest.fixture(scope="module")
def stores(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JobStore, JobStore]]:
    postgres = make_engine(postgres_url)
    sqlite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('folds') / 'tracker.db'}")
    migrate(sqlite)
    yield open_job_store(postgres), open_job_store(sqlite)
    postgres.dispose()
    sqlite.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(EVENT, max_size=8), min_size=1, max_size=5))
def test_postgresql_folds_batches_as_tracker_merge_does(stores: tuple[JobStore, JobStore], batches) -> None:
    postgres, sqlite = stores
    jobs = [(postgres.create_job("created"), sqlite.create_job("created")) for _ in range(3)]
    for batch in batches:
        for side, store in enumerate((postgres, sqlite)):
            store.apply(
                [
                    new_event(
                        jobs[job][side].id,
                        kind,
                        message,
                        seq=seq,
                        occurred_at=START + dt.timedelta(microseconds=at),
                        event_id=event_id,
                    )
                    for job, kind, message, at, seq, event_id in batch
                ]
            )
    for in_postgres, in_sqlite in jobs:
        a, b = postgres.get_job(in_postgres.id), sqlite.get_job(in_sqlite.id)
        assert (a.status, a.message, a.end_time) == (b.status, b.message, b.end_time)
