"""bench's #9 (the list's first pages on a realistic table) and the A/B of 0013 on ingest, small."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest
import sqlalchemy as sa

import bench.testbed
from bench import list_filters
from bench.measurements import job_list
from bench.report import Progress, Run
from bench.services import BenchBroker, BenchDatabase
from bench.testbed import QUICK


@pytest.fixture
def testbed(postgres_server: str, rabbitmq_server: str, tmp_path):
    url = sa.make_url(postgres_server).set(database=f"tracker_test_{uuid.uuid4().hex[:10]}_list")
    database = BenchDatabase(url.render_as_string(hide_password=False))
    broker = BenchBroker(rabbitmq_server, uuid.uuid4().hex[:8])
    database.recreate()
    run = Run("test", "quick", dt.datetime.now(dt.UTC), {})
    scale = dataclasses.replace(QUICK, list_rows=20_000, list_running=2_000, list_requests=3)
    base = bench.testbed.Testbed.settings_for(database.url, rabbitmq_server, tmp_path)
    bed = bench.testbed.Testbed(scale, database, broker, base, tmp_path, Progress(), run)
    yield bed
    bed.stop_all()
    broker.delete_all()
    database.drop()


def test_every_page_of_the_realistic_table_is_timed_and_checked(testbed: bench.testbed.Testbed) -> None:
    results = job_list(testbed)
    assert [result.measurement for result in results] == ["9 list"] * len(list_filters.PAGES)
    for result, name in zip(results, list_filters.PAGES, strict=True):
        assert name in result.figure
        assert result.project > 0 and result.reference is not None
        assert result.details["rows"] == 20_000 and result.details["running"] == 2_000


def test_the_seeded_table_is_as_described(testbed: bench.testbed.Testbed) -> None:
    db = testbed.database
    ids = list_filters.seed(db, 10_000, running=500)
    assert len(ids) == 10_000
    with db.engine.connect() as conn:
        counts = dict(conn.exec_driver_sql("SELECT status, count(*) FROM async_status GROUP BY status").all())
        kinds = conn.exec_driver_sql("SELECT count(DISTINCT kind) FROM async_status").scalar_one()
        labelled = conn.exec_driver_sql(
            "SELECT count(*) FROM async_status WHERE labels ?& ARRAY['env', 'region', 'team']"
        ).scalar_one()
        lost = conn.exec_driver_sql("SELECT count(*) FROM async_status WHERE error_code = 'lost'").scalar_one()
        newest_pending = conn.exec_driver_sql("SELECT min(id) FROM async_status WHERE status = 'PENDING'").scalar_one()
    assert counts == {"PENDING": 500, "FAILED": 190, "SUCCEEDED": 9310}
    assert kinds == list_filters.KINDS
    assert labelled == 10_000
    assert lost == 19
    assert newest_pending == ids.stop - 500


def test_the_ingest_ab_reports_both_sides(postgres_server: str) -> None:
    url = sa.make_url(postgres_server).set(database=f"tracker_test_{uuid.uuid4().hex[:10]}_ab")
    line = list_filters.ingest(url.render_as_string(hide_password=False), base_rows=2000, jobs=200, rounds=2)
    assert set(line["events_per_s"]) == {"0013", "0012"}  # type: ignore[arg-type]
    assert line["ratio_0013_to_0012"] > 0  # type: ignore[operator]
    assert all(0 <= share <= 1 for shares in line["hot_update_share"].values() for share in shares)  # type: ignore[union-attr]
