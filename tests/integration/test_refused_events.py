"""A database that refuses one event of a batch: that event is dead-lettered alone, the rest applied.

Every event here passes ``tracker.events.parse``; the refusal is the database's own, made by a
rule the test adds to a database of its own: on PostgreSQL a CHECK constraint, on SQLite (which
cannot add one to a table) a trigger that aborts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import orjson
import pytest
import sqlalchemy as sa

from consumers.status import Delivery, StatusProjector
from tests.conftest import POSTGRES_URL
from tracker import merge
from tracker.events import Event, new_event
from tracker.store import StoreRefused, make_engine, migrate, open_job_store

POISON = "a message this database refuses"
BASE = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)

_REFUSE = {
    "postgresql": [f"ALTER TABLE async_status ADD CONSTRAINT no_poison CHECK (message IS DISTINCT FROM '{POISON}')"],
    "sqlite": [
        f"CREATE TRIGGER no_poison BEFORE UPDATE ON async_status WHEN NEW.message = '{POISON}' "
        "BEGIN SELECT RAISE(ABORT, 'no poison'); END"
    ],
}
# The driver's error, as the dead letter's reason names it.
_ERROR = {"postgresql": "CheckViolation", "sqlite": "IntegrityError"}


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def refusing_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[sa.Engine]:
    """A migrated database of this test's own whose rows may not hold POISON as their message."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        drop = None
    else:
        name = f"tracker_refuses_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        for statement in _REFUSE[request.param]:
            conn.exec_driver_sql(statement)
    yield engine
    engine.dispose()
    if drop is not None:
        with admin.connect() as conn:
            conn.exec_driver_sql(drop)
        admin.dispose()


def delivery(tag: int, event: Event) -> Delivery:
    return Delivery(tag=tag, body=orjson.dumps(event.to_wire()), routing_key=f"job.{event.type}")


def test_the_store_raises_store_refused_chained_from_the_drivers_error(refusing_engine):
    store = open_job_store(refusing_engine)
    job = store.create_job()

    with pytest.raises(StoreRefused) as raised:
        store.apply([new_event(job.id, "progress", POISON)])

    assert raised.value.error == _ERROR[refusing_engine.dialect.name]
    assert isinstance(raised.value.__cause__, sa.exc.DBAPIError)
    assert store.get_job(job.id).message == merge.DEFAULT_MESSAGE  # nothing committed


def test_one_refused_event_is_dead_lettered_alone_and_the_others_are_applied(refusing_engine):
    store = open_job_store(refusing_engine)
    jobs = [store.create_job().id for _ in range(12)]
    events = [
        new_event(jobs[n % len(jobs)], "progress", f"step {n}", occurred_at=BASE + dt.timedelta(seconds=n))
        for n in range(40)
    ]
    # The refused event is the latest of its job, so it alone would have set that row's message.
    victim = jobs[5]
    poison = new_event(victim, "progress", POISON, occurred_at=BASE + dt.timedelta(hours=1))
    events.insert(23, poison)
    finished = new_event(jobs[0], "succeeded", "done", occurred_at=BASE + dt.timedelta(hours=2))
    events.append(finished)
    deliveries = [delivery(tag, event) for tag, event in enumerate(events, start=1)]

    outcome = StatusProjector(store).handle(deliveries)

    assert [(dead.delivery.tag, dead.reason) for dead in outcome.dead] == [
        (24, f"database refused the event: {_ERROR[refusing_engine.dialect.name]}")
    ]
    assert outcome.applied == len(events) - 1
    applied = [event for event in events if event is not poison]
    for job_id in jobs:
        state = merge.replay(
            store.get_job(job_id).start_time,
            merge.DEFAULT_MESSAGE,
            [event for event in applied if event.job_id == job_id],
        )
        row = store.get_job(job_id)
        assert (row.status, row.message, row.end_time) == (state.status, state.message, state.end_time)
    assert store.get_job(victim).message == "step 29"  # its last event the database took
    # The timelines hold the accepted events, each once, and not the refused one.
    kept = [event.event_id for job_id in jobs for event in store.timeline(job_id)]
    assert sorted(kept) == sorted(event.event_id for event in applied)
    assert store.get_job(jobs[0]).status == merge.SUCCEEDED
