"""Leases in the store (SPEC §6), the same cases on SQLite and PostgreSQL: deadlines and leases at
creation, receipts renewing leases in the fold, the lost-job check, and retention."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from bench.store_variants import WithoutReceipts
from tracker import leases, merge, timefmt
from tracker.events import new_event
from tracker.store import JobStore, open_job_store
from tracker.store.leases import Checked, LostJobs, purge
from tracker.store.tables import async_status, async_status_event, async_status_lease, async_status_lost

DEFAULT_TIMEOUT_S = 86400
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def store(engine: sa.Engine) -> JobStore:
    return open_job_store(engine)


@pytest.fixture
def checks(engine: sa.Engine) -> LostJobs:
    return LostJobs(engine, DEFAULT_TIMEOUT_S)


def _always() -> bool:
    return True


def _lease(engine: sa.Engine, job_id: int) -> tuple[int, dt.datetime] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(async_status_lease.c.heartbeat_timeout_s, async_status_lease.c.expires_at).where(
                async_status_lease.c.job_id == job_id
            )
        ).first()
    return None if row is None else (row[0], row[1])


def _set(engine: sa.Engine, table: sa.Table, key: sa.ColumnElement[bool], **values: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(key).values(**values))


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def _expire_deadline(engine: sa.Engine, job_id: int) -> None:
    """Move the job back in time by an hour: start and deadline alike, so its timeout_s stays."""
    with engine.begin() as conn:
        start, deadline = conn.execute(
            sa.select(async_status.c.start_time, async_status.c.deadline_at).where(async_status.c.id == job_id)
        ).one()
        conn.execute(
            sa.update(async_status)
            .where(async_status.c.id == job_id)
            .values(start_time=start - HOUR, deadline_at=deadline - HOUR)
        )


def test_a_new_job_gets_its_deadline_and_lease_and_the_api_row_is_unchanged(store, engine):
    job = store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=30))
    assert (job.status, job.message, job.end_time) == (merge.PENDING, "Deploying.", None)
    with engine.connect() as conn:
        deadline = conn.execute(sa.select(async_status.c.deadline_at).where(async_status.c.id == job.id)).scalar_one()
    assert deadline == job.start_time + dt.timedelta(seconds=600)
    assert _lease(engine, job.id) == (30, job.start_time + dt.timedelta(seconds=30))
    plain = store.create_job()
    assert _lease(engine, plain.id) is None


def test_each_batch_renews_the_leases_of_its_pending_jobs_and_drops_those_of_finished_ones(store, engine):
    limits = leases.JobLimits(timeout_s=600, heartbeat_timeout_s=30)
    running, finishing = store.create_job(limits=limits), store.create_job(limits=limits)
    _set(engine, async_status_lease, async_status_lease.c.job_id == running.id, expires_at=running.start_time)
    before = timefmt.now()
    store.apply([new_event(running.id, "progress"), new_event(finishing.id, "succeeded")])
    timeout_s, expires_at = _lease(engine, running.id) or (0, before)
    assert timeout_s == 30
    assert before + dt.timedelta(seconds=29) <= expires_at <= timefmt.now() + dt.timedelta(seconds=31)
    assert _lease(engine, finishing.id) is None


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the benchmark's database
def test_the_benchmarks_store_without_receipts_folds_but_leaves_leases_alone(engine):
    """#6's "off" side: the product's fold but for the receipt."""
    store = WithoutReceipts(engine)
    limits = leases.JobLimits(timeout_s=600, heartbeat_timeout_s=30)
    running, finishing = store.create_job(limits=limits), store.create_job(limits=limits)
    _set(engine, async_status_lease, async_status_lease.c.job_id == running.id, expires_at=running.start_time)
    before = _lease(engine, running.id), _lease(engine, finishing.id)
    store.apply([new_event(running.id, "progress", "working"), new_event(finishing.id, "succeeded")])
    assert (_lease(engine, running.id), _lease(engine, finishing.id)) == before
    assert (store.get_job(running.id).message, store.get_job(finishing.id).status) == ("working", merge.SUCCEEDED)


def test_an_overrun_deadline_is_decided_once_with_the_jobs_own_timeout(store, engine, checks):
    job = store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=None))
    store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=None))  # in time
    _expire_deadline(engine, job.id)
    checked = checks.check(_always)
    assert checked is not None and checked.again == ()
    [lost] = checked.new
    assert (lost.job_id, lost.reason, lost.limit_s) == (job.id, "timeout", 120)
    assert lost.failed_event().message == "not finished within 120 s"
    assert checks.check(_always) == Checked((), ())  # decided: not again while its event is on its way
    store.apply([lost.failed_event()])
    row = store.get_job(job.id)
    assert (row.status, row.message, row.end_time) == (merge.FAILED, "not finished within 120 s", lost.decided_at)
    assert row.error_code == "timeout"
    checks.check(_always)
    assert _count(engine, async_status_lost) == 0  # folded: the decision is forgotten


def test_a_lapsed_heartbeat_lease_is_decided_and_its_event_kept_in_the_timeline(store, engine, checks):
    job = store.create_job(limits=leases.JobLimits(timeout_s=600, heartbeat_timeout_s=5))
    _set(engine, async_status_lease, async_status_lease.c.job_id == job.id, expires_at=timefmt.now() - HOUR)
    checked = checks.check(_always)
    assert checked is not None
    [lost] = checked.new
    assert (lost.reason, lost.limit_s) == ("heartbeat", 5)
    store.apply([lost.failed_event()])
    assert store.get_job(job.id).message == "no event for 5 s: the worker is presumed lost"
    assert store.get_job(job.id).error_code == "lost"
    [kept] = store.timeline(job.id)  # the tracker's own event, folded like any other (SPEC §7)
    assert (kept.event_id, kept.type, kept.occurred_at, kept.message, kept.error_code) == (
        lost.event_id,
        "failed",
        lost.decided_at,
        "no event for 5 s: the worker is presumed lost",
        "lost",
    )
    assert kept.received_at is not None and kept.received_at >= lost.decided_at
    assert _lease(engine, job.id) is None


def test_rows_from_before_the_migration_have_the_default_deadline(store, engine, checks):
    job = store.create_job()  # no limits: deadline_at NULL, as rows made before migration 0004
    fresh = store.create_job()
    _set(engine, async_status, async_status.c.id == job.id, start_time=timefmt.now() - dt.timedelta(days=2))
    checked = checks.check(_always)
    assert checked is not None
    assert [(lost.job_id, lost.limit_s) for lost in checked.new] == [(job.id, DEFAULT_TIMEOUT_S)]
    assert fresh.id not in {lost.job_id for lost in checked.new}


def test_a_job_out_of_both_is_lost_by_the_first_to_run_out(store, engine, checks):
    job = store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=5))
    _expire_deadline(engine, job.id)
    _set(engine, async_status_lease, async_status_lease.c.job_id == job.id, expires_at=timefmt.now() - 2 * HOUR)
    checked = checks.check(_always)
    assert checked is not None
    assert [lost.reason for lost in checked.new] == ["heartbeat"]


def test_nothing_is_decided_unless_caught_up(store, engine, checks):
    job = store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=None))
    _expire_deadline(engine, job.id)
    assert checks.check(lambda: False) is None
    assert _count(engine, async_status_lost) == 0
    checked = checks.check(_always)
    assert checked is not None and len(checked.new) == 1


def test_the_workers_earlier_success_beats_the_trackers_later_failure(store, engine, checks):
    job = store.create_job(limits=leases.JobLimits(timeout_s=600, heartbeat_timeout_s=5))
    _set(engine, async_status_lease, async_status_lease.c.job_id == job.id, expires_at=timefmt.now() - HOUR)
    succeeded = new_event(job.id, "succeeded", "Deployed.")  # before the decision, arriving after it
    checked = checks.check(_always)
    assert checked is not None
    store.apply([checked.new[0].failed_event()])
    assert store.get_job(job.id).status == merge.FAILED
    store.apply([succeeded])
    row = store.get_job(job.id)
    assert (row.status, row.message, row.end_time) == (merge.SUCCEEDED, "Deployed.", succeeded.occurred_at)


def test_a_decision_not_folded_in_time_is_given_again_as_the_same_event(store, engine):
    checks = LostJobs(engine, DEFAULT_TIMEOUT_S, republish_after_s=0.0)
    job = store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=None))
    _expire_deadline(engine, job.id)
    first = checks.check(_always)
    second = checks.check(_always)
    assert first is not None and second is not None
    assert second.new == () and [lost.failed_event() for lost in second.again] == [first.new[0].failed_event()]


def test_checks_at_once_decide_each_job_once(store, engine):
    jobs = [store.create_job(limits=leases.JobLimits(timeout_s=120, heartbeat_timeout_s=None)) for _ in range(30)]
    for job in jobs:
        _expire_deadline(engine, job.id)
    results: list[Checked | None] = []
    start = threading.Barrier(4)

    def check() -> None:
        own = LostJobs(engine, DEFAULT_TIMEOUT_S)
        start.wait()
        results.append(own.check(_always))

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    decided = [lost.job_id for result in results if result is not None for lost in result.new]
    assert sorted(decided) == sorted(job.id for job in jobs)


def test_purge_deletes_old_finished_jobs_with_all_they_keep_and_nothing_else(store, engine):
    limits = leases.JobLimits(timeout_s=120, heartbeat_timeout_s=60)
    old = [store.create_job(limits=limits) for _ in range(7)]
    recent, pending = store.create_job(limits=limits), store.create_job(limits=limits)
    long_ago = timefmt.now() - dt.timedelta(days=10)
    store.apply([new_event(job.id, "succeeded", "done", occurred_at=long_ago) for job in old])
    store.apply([new_event(recent.id, "failed", "broke"), new_event(pending.id, "progress", "working")])
    for job in old:  # an end_time is never before its start_time
        _set(engine, async_status, async_status.c.id == job.id, start_time=long_ago, end_time=long_ago)
    deleted = purge(engine, timefmt.now() - dt.timedelta(days=1), batch=3)
    assert deleted == 7
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(async_status.c.id)).scalars()) == [recent.id, pending.id]
        kept = set(conn.execute(sa.select(async_status_event.c.job_id)).scalars())
    assert kept == {recent.id, pending.id}
    assert _lease(engine, pending.id) is not None
    assert purge(engine, timefmt.now() - dt.timedelta(days=1)) == 0
