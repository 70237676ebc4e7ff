"""A database no event can cure (SPEC §14): a column dropped, a grant revoked. A running ``tracker
consume`` dead-letters nothing, folds and acks nothing, says so once at error level, counts it,
answers /readyz 503, retries with back-off, and applies everything once the database is repaired.

Each case breaks and repairs a database of its own while the consumer runs; the events are good
ones (the same would be applied by a healthy database), so any dead letter would be a lost event.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
import re
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.conftest import AMQP_URL, POSTGRES_URL, settings_for
from tests.endpoints import get
from tests.faults import rabbitmq
from tests.metrics_text import scrape, value
from tests.polling import poll_until
from tests.processes import ConsumerProcess
from tracker import merge
from tracker.events import Event, new_event
from tracker.publisher import Publisher
from tracker.store import JobStore, make_engine, migrate, open_job_store

pytestmark = [pytest.mark.rabbitmq]

_SERVING = re.compile(r"serving /metrics, /healthz and /readyz on (http://\S+)")
BASE = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
BROKEN_READY = "database cannot apply events (its schema or grants)"


@dataclasses.dataclass(frozen=True)
class Breakage:
    """How to break a database and repair it, run by its owner; ``as_role``: the consumer connects as
    a role of its own (granted everything), so that a grant of its can be revoked."""

    name: str
    dialect: str
    break_sql: tuple[str, ...]
    repair_sql: tuple[str, ...]
    as_role: bool = False


CASES = [
    Breakage(
        "postgresql: a column dropped",
        "postgresql",
        ("ALTER TABLE async_status_event DROP COLUMN received_at",),
        ("ALTER TABLE async_status_event ADD COLUMN received_at timestamp with time zone",),
    ),
    Breakage(
        "postgresql: a grant revoked",
        "postgresql",
        ("REVOKE UPDATE ON async_status FROM {role}",),
        ("GRANT UPDATE ON async_status TO {role}",),
        as_role=True,
    ),
    Breakage(
        "sqlite: a column dropped",
        "sqlite",
        ("ALTER TABLE async_status_event DROP COLUMN received_at",),
        ("ALTER TABLE async_status_event ADD COLUMN received_at DATETIME",),
    ),
]


@dataclasses.dataclass
class Database:
    owner_url: str  # the tests' own connection: breaks and repairs
    consumer_url: str  # the consumer's
    role: str


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Breakage:
    breakage: Breakage = request.param
    if breakage.dialect == "postgresql":
        request.getfixturevalue("postgres_server")  # the run stops at once if PostgreSQL is down
    return breakage


@pytest.fixture
def database(case: Breakage, tmp_path: pathlib.Path) -> Iterator[Database]:
    """A migrated database of this test's own; on PostgreSQL, with a login role for the consumer."""
    if case.dialect == "sqlite":
        url = f"sqlite:///{tmp_path / 'tracker.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield Database(url, url, role="")
        return
    name = f"tracker_broken_{uuid.uuid4().hex[:10]}"
    role = f"tracker_consumer_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        if case.as_role:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    owner_url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(owner_url)
    migrate(engine)
    if case.as_role:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
            conn.exec_driver_sql(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    engine.dispose()
    consumer_url = sa.make_url(owner_url).set(username=role).render_as_string(hide_password=False)
    yield Database(owner_url, consumer_url if case.as_role else owner_url, role)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if case.as_role:
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
    admin.dispose()


def run(url: str, statements: tuple[str, ...], role: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement.format(role=f'"{role}"'))
    finally:
        engine.dispose()


def settled(store: JobStore, events: list[Event]) -> bool:
    """Whether every job's row is the merge rule over ``events``."""
    for job_id in {event.job_id for event in events}:
        row = store.get_job(job_id)
        state = merge.replay(row.start_time, merge.DEFAULT_MESSAGE, [e for e in events if e.job_id == job_id])
        if (row.status, row.message, row.end_time) != (state.status, state.message, state.end_time):
            return False
    return True


def test_a_broken_database_dead_letters_nothing_and_everything_is_applied_once_repaired(
    case: Breakage, database: Database, amqp_names: dict[str, str], tmp_path: pathlib.Path
) -> None:
    engine = make_engine(database.owner_url)
    store = open_job_store(engine)
    jobs = [store.create_job().id for _ in range(6)]
    settings = settings_for(database.consumer_url, AMQP_URL, tmp_path, amqp_names)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready(timeout=60)
        endpoints = poll_until(lambda: _SERVING.search(consumer.output()), 30, "the consumer's endpoints").group(1)
        before = [
            new_event(job_id, "progress", f"step 1 of {job_id}", occurred_at=BASE + dt.timedelta(seconds=n))
            for n, job_id in enumerate(jobs)
        ]
        with Publisher(settings) as publisher:
            for event in before:
                publisher.publish(event)
            poll_until(lambda: settled(store, before), 30, "the first events applied while it is healthy")
            assert get(endpoints + "/readyz")[0] == 200

            run(database.owner_url, case.break_sql, database.role)
            after = [
                new_event(
                    job_id,
                    "succeeded" if n % 2 else "progress",
                    f"step 2 of {job_id}",
                    occurred_at=BASE + dt.timedelta(minutes=1, seconds=n),
                )
                for n, job_id in enumerate(jobs)
            ]
            for event in after:
                publisher.publish(event)

        poll_until(lambda: get(endpoints + "/readyz")[0] == 503, 30, "readiness 503 while it is broken")
        status, body = get(endpoints + "/readyz")
        assert status == 503 and BROKEN_READY in str(body), body
        samples = scrape(endpoints + "/metrics")
        assert value(samples, "tracker_store_errors_total", kind="broken") >= 1
        assert value(samples, "tracker_store_errors_total", kind="unavailable") == 0
        assert rabbitmq.ready_count(AMQP_URL, settings.dead_queue) == 0
        assert settled(store, before), "something was folded although the database is broken"
        assert consumer.alive
        errors = [line for line in consumer.output().splitlines() if " ERROR consumers.writers" in line]
        assert len(errors) == 1 and BROKEN_READY in errors[0], consumer.output()  # said once, not per retry

        run(database.owner_url, case.repair_sql, database.role)
        poll_until(lambda: settled(store, before + after), 60, "everything applied once repaired")
        poll_until(lambda: get(endpoints + "/readyz")[0] == 200, 30, "ready again once repaired")
        assert rabbitmq.ready_count(AMQP_URL, settings.dead_queue) == 0
        assert value(scrape(endpoints + "/metrics"), "tracker_events_total", type="succeeded", outcome="applied") == 3
        assert "database takes batches again after" in consumer.output()
    finally:
        consumer.stop()
        engine.dispose()
    assert consumer.returncode == 0, consumer.tail()
