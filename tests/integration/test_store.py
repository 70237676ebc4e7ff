"""JobStore contract, run against every backend: rows follow the merge rule for any batching."""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
import sqlalchemy as sa

from tracker import merge
from tracker.events import Event, new_event
from tracker.store import JobNotFound, JobStore, open_job_store
from tracker.store.tables import async_status, async_status_message

BASE = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
def store(engine) -> JobStore:
    return open_job_store(engine)


def random_stream(rng: random.Random, job_ids: list[int], count: int) -> list[Event]:
    stream = []
    for _ in range(count):
        stream.append(
            new_event(
                rng.choice(job_ids),
                rng.choices(["progress", "succeeded", "failed"], weights=[6, 1, 1])[0],
                rng.choice([None, None, "m1", "m2", "m3", "m4"]),
                seq=rng.randrange(2),
                occurred_at=BASE + dt.timedelta(microseconds=rng.randrange(40)),
            )
        )
    return stream


def expected(store: JobStore, events: list[Event]) -> dict[int, tuple]:
    rows = {}
    for job_id in {e.job_id for e in events}:
        created = store.get_job(job_id)
        state = merge.replay(created.start_time, "created", [e for e in events if e.job_id == job_id])
        rows[job_id] = (state.status, state.message, state.end_time)
    return rows


def actual(store: JobStore, job_ids) -> dict[int, tuple]:
    return {i: (j.status, j.message, j.end_time) for i in job_ids for j in [store.get_job(i)]}


def test_ids_are_positive_increasing_and_never_reused(store, engine):
    first, second = store.create_job(), store.create_job()
    assert 0 < first.id < second.id
    with engine.begin() as conn:
        conn.execute(sa.delete(async_status).where(async_status.c.id == second.id))
    assert store.create_job().id > second.id


def test_a_new_job_is_pending_with_its_message(store):
    job = store.create_job("Deploying.")
    assert (job.status, job.message, job.end_time) == (merge.PENDING, "Deploying.", None)
    assert store.create_job().message == merge.DEFAULT_MESSAGE
    assert store.get_job(job.id) == job


def test_missing_jobs_raise_and_are_reported_by_apply(store):
    with pytest.raises(JobNotFound):
        store.get_job(123456)
    job = store.create_job()
    applied = store.apply([new_event(job.id, "progress", "x"), new_event(123456, "succeeded")])
    assert applied.missing_jobs == {123456}
    assert store.get_job(job.id).message == "x"


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_converge_to_the_merge_rule(store, seed):
    rng = random.Random(seed)
    job_ids = [store.create_job("created").id for _ in range(8)]
    events = random_stream(rng, job_ids, 160)
    stream = events + rng.sample(events, 40)
    rng.shuffle(stream)
    while stream:
        size = rng.choice([1, 2, 5, 20, 60])
        store.apply(stream[:size])
        stream = stream[size:]
    assert actual(store, job_ids) == expected(store, events)


def test_a_late_terminal_before_an_applied_message_restores_the_earlier_message(store):
    job = store.create_job("created")
    at = [BASE + dt.timedelta(microseconds=n) for n in range(4)]
    store.apply([new_event(job.id, "progress", "p1", occurred_at=at[1])])
    store.apply([new_event(job.id, "progress", "p3", occurred_at=at[3])])
    assert store.get_job(job.id).message == "p3"
    store.apply([new_event(job.id, "failed", None, occurred_at=at[2])])
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.FAILED, "p1")
    store.apply([new_event(job.id, "succeeded", None, occurred_at=at[0])])
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.SUCCEEDED, "created")


def test_concurrent_batches_over_the_same_jobs_lose_nothing(store):
    rng = random.Random(99)
    job_ids = [store.create_job("created").id for _ in range(10)]
    events = random_stream(rng, job_ids, 600)
    halves = [events[0::2], events[1::2]]
    errors: list[BaseException] = []

    def apply_all(part: list[Event]) -> None:
        try:
            for start in range(0, len(part), 25):
                # reversed id order inside a batch must not matter: the store sorts before locking
                store.apply(sorted(part[start : start + 25], key=lambda e: -e.job_id))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply_all, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert actual(store, job_ids) == expected(store, events)


def _history_of(engine: sa.Engine) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(async_status_message.c.job_id)).scalars())


def test_a_deleted_job_takes_its_message_history_with_it(store, engine):
    """SQLite by its foreign key, PostgreSQL by the trigger of migration 0003: no orphans either way."""
    kept, deleted = store.create_job().id, store.create_job().id
    store.apply([new_event(job_id, "progress", "working", occurred_at=BASE) for job_id in (kept, deleted, kept)])
    assert _history_of(engine) == sorted([kept, kept, deleted])
    with engine.begin() as conn:
        conn.execute(sa.delete(async_status).where(async_status.c.id == deleted))
    assert _history_of(engine) == [kept, kept]


def test_the_history_cannot_name_a_job_that_does_not_exist(store, engine):
    """Events of a missing job leave no history: the fold writes it only for jobs it locked."""
    job = store.create_job().id
    applied = store.apply([new_event(job + 1, "progress", "nobody's"), new_event(job, "progress", "mine")])
    assert applied.missing_jobs == {job + 1}
    assert _history_of(engine) == [job]
