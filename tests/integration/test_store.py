"""JobStore contract, run against every backend: rows follow the merge rule (``tests.oracle``) for any batching.

Events are timed around each job's own start_time, some before it and some after, so that both
sides of ``end_time = max(t.occurred_at, start_time)`` are taken whatever the date.
"""

from __future__ import annotations

import datetime as dt
import random
import threading

import pytest
import sqlalchemy as sa

from tests import oracle
from tracker import merge
from tracker.events import Event, new_event
from tracker.store import JobNotFound, JobStore, open_job_store
from tracker.store.tables import async_status


@pytest.fixture
def store(engine) -> JobStore:
    return open_job_store(engine)


def random_stream(rng: random.Random, store: JobStore, job_ids: list[int], count: int) -> list[Event]:
    """``count`` events of the jobs, from 1 µs before each job's start_time to 8 µs after it.

    Few instants, so ties on time (broken by seq, then event_id) are common; skewed late, so that
    with the seeds used some jobs' earliest terminal event is before their start and some after.
    """
    starts = {job_id: store.get_job(job_id).start_time for job_id in job_ids}
    stream = []
    for _ in range(count):
        job_id = rng.choice(job_ids)
        stream.append(
            new_event(
                job_id,
                rng.choices(["progress", "succeeded", "failed"], weights=[6, 1, 1])[0],
                rng.choice([None, None, "m1", "m2", "m3", "m4"]),
                seq=rng.randrange(2),
                occurred_at=starts[job_id] + dt.timedelta(microseconds=rng.randrange(-1, 9)),
            )
        )
    return stream


def expected(store: JobStore, events: list[Event]) -> dict[int, oracle.Row]:
    rows = {}
    for job_id in {e.job_id for e in events}:
        created = store.get_job(job_id)
        rows[job_id] = oracle.expected_row(
            created.start_time, "created", [e.to_wire() for e in events if e.job_id == job_id]
        )
    return rows


def actual(store: JobStore, job_ids) -> dict[int, oracle.Row]:
    return {i: oracle.Row(j.status, j.message, j.end_time) for i in job_ids for j in [store.get_job(i)]}


def ends_before_and_after_start(rows: dict[int, oracle.Row], store: JobStore) -> tuple[bool, bool]:
    """Whether some finished job's end_time is its start_time, and some one's is later."""
    ends = [(row.end_time, store.get_job(i).start_time) for i, row in rows.items() if row.end_time is not None]
    return any(end == start for end, start in ends), any(end > start for end, start in ends)


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
    events = random_stream(rng, store, job_ids, 160)
    stream = events + rng.sample(events, 40)
    rng.shuffle(stream)
    while stream:
        size = rng.choice([1, 2, 5, 20, 60])
        store.apply(stream[:size])
        stream = stream[size:]
    assert actual(store, job_ids) == expected(store, events)
    assert ends_before_and_after_start(expected(store, events), store) == (True, True)


def test_a_late_terminal_before_an_applied_message_restores_the_earlier_message(store):
    job = store.create_job("created")
    at = [job.start_time + dt.timedelta(microseconds=n) for n in range(4)]
    store.apply([new_event(job.id, "progress", "p1", occurred_at=at[1])])
    store.apply([new_event(job.id, "progress", "p3", occurred_at=at[3])])
    assert store.get_job(job.id).message == "p3"
    store.apply([new_event(job.id, "failed", None, occurred_at=at[2])])
    row = store.get_job(job.id)
    assert (row.status, row.message, row.end_time) == (merge.FAILED, "p1", at[2])
    store.apply([new_event(job.id, "succeeded", None, occurred_at=at[0])])
    row = store.get_job(job.id)
    assert (row.status, row.message, row.end_time) == (merge.SUCCEEDED, "created", at[0])


def test_end_time_is_the_later_of_the_terminal_event_and_the_start(store):
    early, late = store.create_job(), store.create_job()
    second = dt.timedelta(seconds=1)
    store.apply(
        [
            new_event(early.id, "succeeded", None, occurred_at=early.start_time - second),
            new_event(late.id, "failed", None, occurred_at=late.start_time + second),
        ]
    )
    assert store.get_job(early.id).end_time == early.start_time
    assert store.get_job(late.id).end_time == late.start_time + second


def test_concurrent_batches_over_the_same_jobs_lose_nothing(store):
    rng = random.Random(99)
    job_ids = [store.create_job("created").id for _ in range(10)]
    events = random_stream(rng, store, job_ids, 600)
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


def test_statuses_names_the_jobs_that_exist_in_one_call_however_many(store: JobStore) -> None:
    jobs = [store.create_job() for _ in range(1200)]  # more than one statement's worth of ids
    store.apply([new_event(jobs[0].id, "succeeded"), new_event(jobs[-1].id, "failed")])
    missing = jobs[-1].id + 1
    statuses = store.statuses([job.id for job in jobs] + [missing])
    assert len(statuses) == 1200 and missing not in statuses
    assert statuses[jobs[0].id] == merge.SUCCEEDED and statuses[jobs[-1].id] == merge.FAILED
    assert {statuses[job.id] for job in jobs[1:-1]} == {merge.PENDING}
    assert store.statuses([]) == {}


def test_the_change_counter_moves_when_another_connection_commits(store: JobStore, database_url: str) -> None:
    counter = store.change_counter()
    if database_url.startswith("postgresql"):
        assert counter is None  # notifications serve there
        return
    assert counter is not None
    first = counter()
    assert counter() == first  # nothing committed: the same value
    store.create_job()  # through the store's pool: another connection
    second = counter()
    assert second != first
    assert counter() == second
    store.statuses([1])  # reads commit nothing
    assert counter() == second
