"""bench.anatomy, small: the tracker's consumer drains a real queue into a real database, and the CPU is accounted."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from bench import workload
from bench.anatomy import measure, settings_for
from bench.services import BenchBroker, BenchDatabase

EVENTS = 10_000  # enough CPU for the clock ticks of /proc (10 ms) to see every part


@pytest.fixture
def bench_parts(postgres_server: str, rabbitmq_server: str):
    url = sa.make_url(postgres_server).set(database=f"tracker_test_{uuid.uuid4().hex[:10]}_anatomy")
    database = BenchDatabase(url.render_as_string(hide_password=False))
    broker = BenchBroker(rabbitmq_server, uuid.uuid4().hex[:8])
    settings = settings_for(database, broker)
    yield settings, database, broker
    broker.delete_all()
    database.drop()


def test_a_real_drain_folds_every_event_and_names_where_the_cpu_went(bench_parts) -> None:
    settings, database, broker = bench_parts
    report = measure(settings, EVENTS, "real", database, broker)
    assert report["events"] == EVENTS
    assert report["events_per_s"] > 0
    cpu = report["cpu_us_per_event"]
    assert cpu["connection_thread"] > 0 and cpu["writer_threads"] > 0 and cpu["postgresql"] > 0
    assert 0 < report["machine_busy"] <= 1
    with database.engine.connect() as conn:  # the work was done, not just counted
        assert conn.exec_driver_sql("SELECT count(*) FROM async_status WHERE status = 'PENDING'").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM async_status_event").scalar_one() == EVENTS


def test_the_empty_store_leaves_the_database_alone(bench_parts) -> None:
    settings, database, broker = bench_parts
    report = measure(settings, EVENTS, "none", database, broker)
    assert report["events"] == EVENTS
    assert report["cpu_us_per_event"]["writer_threads"] < 1
    with database.engine.connect() as conn:
        assert (
            conn.exec_driver_sql("SELECT count(*) FROM async_status WHERE status = 'PENDING'").scalar_one()
            == EVENTS // workload.EVENTS_PER_JOB
        )
