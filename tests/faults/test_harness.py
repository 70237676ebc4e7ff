"""The check of the fault scenarios catches what it is there to catch: a lost event, a wrong row."""

from __future__ import annotations

import pytest

from tests.faults.stream import Record, check, create_jobs, plan_events
from tracker import merge

pytestmark = [pytest.mark.postgres]


def recorded(planned) -> Record:
    record = Record()
    for event in planned:
        record.sending()
        record.confirm(event)
    return record


def test_all_events_applied_holds(rng, store, pg_engine):
    job_ids = create_jobs(store, 20, rng)
    planned = plan_events(job_ids, 300, rng)
    store.apply(planned)
    verdict = check(pg_engine, job_ids, recorded(planned))
    assert verdict.holds and verdict.confirmed == 300


def test_a_confirmed_event_never_applied_is_lost_and_its_row_wrong(rng, store, pg_engine):
    job_ids = create_jobs(store, 20, rng)
    planned = plan_events(job_ids, 300, rng)
    # The event that decides a row's message: without it the row must come out different. Some
    # jobs have none (their earliest terminal event comes before any message), so take one that does.
    states = {
        job_id: merge.replay(store.get_job(job_id).start_time, None, [e for e in planned if e.job_id == job_id])
        for job_id in dict.fromkeys(e.job_id for e in planned)
    }
    job_id, state = next((j, s) for j, s in states.items() if s.latest_message is not None)
    assert state.latest_message is not None
    decisive = state.latest_message.key.event_id
    store.apply([e for e in planned if e.event_id != decisive])
    verdict = check(pg_engine, job_ids, recorded(planned))
    assert verdict.lost == 1
    assert [line.split(":")[0] for line in verdict.wrong] == [f"job {job_id}"]


def test_an_event_that_failed_to_confirm_may_or_may_not_have_arrived(rng, store, pg_engine):
    job_ids = create_jobs(store, 5, rng)
    planned = plan_events(job_ids, 60, rng)
    record = recorded(planned[:-2])
    record.fail(planned[-2])
    record.fail(planned[-1])
    store.apply(planned[:-1])  # one of the unconfirmed arrived, the other did not
    verdict = check(pg_engine, job_ids, record)
    assert verdict.holds and verdict.unsure == 2
