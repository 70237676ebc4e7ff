"""`tracker purge --older-than DAYS` on PostgreSQL while `tracker api` and `tracker consume` keep serving."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.e2e.live_api import add_users, running_api
from tests.processes import ConsumerProcess
from tracker import events
from tracker.publisher import Publisher
from tracker.store import open_job_store

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

OLD_JOBS = 5000


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_purge_deletes_old_finished_jobs_while_the_api_and_ingest_serve(settings, engine, tmp_path):
    store = open_job_store(engine)
    with engine.begin() as conn:
        old_ids = list(
            conn.exec_driver_sql(
                "INSERT INTO async_status (status, message, initial_message, start_time, end_time, terminal_at, "
                "terminal_seq, terminal_event_id) "
                "SELECT 'SUCCEEDED', 'done', 'x', now() - interval '10 days', now() - interval '10 days', "
                "now() - interval '10 days', 0, gen_random_uuid()::text FROM generate_series(1, %(n)s) "
                "RETURNING id",
                {"n": OLD_JOBS},
            ).scalars()
        )
        conn.exec_driver_sql(
            "INSERT INTO async_status_event (job_id, event_id, occurred_at, seq, type, message, received_at) "
            "SELECT id, terminal_event_id, start_time, 0, 'succeeded', 'done', start_time FROM async_status "
            "WHERE id = ANY(%(ids)s)",
            {"ids": old_ids},
        )
    recent = store.create_job("recent")
    store.apply([events.new_event(recent.id, "succeeded", "done")])
    pending = store.create_job("running")
    add_users(settings.database_url, ops="operations")

    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        with running_api(settings.database_url, tmp_path, amqp_url=settings.amqp_url) as api:
            token = api.login("ops")
            headers = {"Authorization": f"Bearer {token}"}
            stop = threading.Event()
            slowest: list[float] = [0.0]
            failures: list[int] = []
            published: list[str] = []

            def read() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    answer = api.request("GET", f"/api/5.0/async_status/{pending.id}", headers=headers)
                    slowest[0] = max(slowest[0], time.monotonic() - started)
                    if answer.status != 200:
                        failures.append(answer.status)

            def ingest() -> None:
                with Publisher(settings) as publisher:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        published.append(publisher.emit(pending.id, "progress", f"step {n}").message or "")
                        time.sleep(0.01)

            threads = [threading.Thread(target=read), threading.Thread(target=ingest)]
            for thread in threads:
                thread.start()
            try:
                purged = subprocess.run(
                    [sys.executable, "-m", "tracker.cli", "purge", "--older-than", "1"],
                    env=environment(settings),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=15)
            assert purged.returncode == 0, purged.stderr
            assert purged.stdout.startswith(f"purged {OLD_JOBS} jobs finished before ")
            assert failures == [] and slowest[0] < 1.0
            last = published[-1]
            deadline = time.monotonic() + 10
            while store.get_job(pending.id).message != last and time.monotonic() < deadline:
                time.sleep(0.02)
            assert store.get_job(pending.id).message == last  # ingest went on throughout

            for job_id in old_ids[:: OLD_JOBS // 10]:
                assert api.request("GET", f"/api/5.0/async_status/{job_id}", headers=headers).status == 404
                assert api.request("GET", f"/api/5.0/async_status/{job_id}/events", headers=headers).status == 404
            for job in (recent, pending):
                assert api.request("GET", f"/api/5.0/async_status/{job.id}", headers=headers).status == 200
            assert len(store.timeline(recent.id)) == 1  # a finished job kept: its timeline too
    finally:
        consumer.kill()
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM async_status_event WHERE job_id = ANY(:ids)"), {"ids": old_ids}
            ).scalar_one()
            == 0
        )
