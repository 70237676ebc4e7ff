"""bench.capacity and bench.cputime, small: CPU read from /proc, and a real ingest by two consumers accounted."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import socket
import subprocess
import sys
import time
import uuid

import pytest
import sqlalchemy as sa

import bench.testbed
from bench import cputime, workload
from bench.capacity import DatabaseMonitor, broker_pid_of, ingest_window
from bench.capacity_model import BROKER, CONSUMER, POSTGRESQL, busy
from bench.report import Progress, Run
from bench.services import BenchBroker, BenchDatabase
from bench.testbed import QUICK

_SPIN = "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'while True: pass'])\ntime.sleep(60)"


def test_a_meter_counts_the_cpu_of_a_childs_own_children() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _SPIN])
    try:
        deadline = time.monotonic() + 20
        while not cputime.descendants(parent.pid):
            assert time.monotonic() < deadline, "the spinning grandchild never appeared"
            time.sleep(0.05)
        spinner = cputime.descendants(parent.pid)[0]
        assert cputime.comm(spinner) is not None
        meter = cputime.CpuMeter(lambda: [parent.pid, *cputime.descendants(parent.pid)]).start()
        time.sleep(1.0)
        meter.sample()
        assert meter.seen == 2
        assert meter.seconds() > 0.1  # a spinning process, even on a busy machine
    finally:
        for pid in cputime.descendants(parent.pid):
            os.kill(pid, 9)
        parent.kill()
        parent.wait()
    assert cputime.cpu_of(parent.pid) is None  # gone: no figure rather than a wrong one


def test_the_process_listening_on_a_port_is_found_and_a_free_port_has_none() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert cputime.listening_pid(port) == os.getpid()
    assert cputime.listening_pid(port) is None


def test_an_amqp_url_of_another_host_has_no_local_broker() -> None:
    assert broker_pid_of("amqp://guest:guest@rabbit.example.com:5672/%2F") is None


@pytest.fixture
def testbed(postgres_server: str, rabbitmq_server: str, tmp_path):
    url = sa.make_url(postgres_server).set(database=f"tracker_test_{uuid.uuid4().hex[:10]}_capacity")
    database = BenchDatabase(url.render_as_string(hide_password=False))
    broker = BenchBroker(rabbitmq_server, uuid.uuid4().hex[:8])
    database.recreate()
    run = Run("test", "quick", dt.datetime.now(dt.UTC), {})
    scale = dataclasses.replace(QUICK, ingest_events=3000, ingest_jobs=600)
    base = bench.testbed.Testbed.settings_for(database.url, rabbitmq_server, tmp_path)
    bed = bench.testbed.Testbed(scale, database, broker, base, tmp_path, Progress(), run)
    yield bed
    bed.stop_all()
    broker.delete_all()
    database.drop()


def test_two_consumers_released_together_fold_every_event_and_the_work_is_accounted(
    testbed: bench.testbed.Testbed,
) -> None:
    db = testbed.database
    settings = testbed.settings("capacity", prefetch=500, batch_size=100)
    ids = db.seed_jobs(testbed.scale.ingest_jobs)
    bodies = workload.lifecycles(ids, workload.EVENTS_PER_JOB, random.Random(1)).bodies
    db.dispose()
    with DatabaseMonitor(db.url) as monitor:
        window = ingest_window(testbed, settings, bodies, 2, monitor, broker_pid_of(settings.amqp_url))
        assert monitor.local  # PostgreSQL of the tests runs on this machine
    assert (window.processes, window.work) == (2, len(bodies))
    assert window.seconds > 0
    share = busy(window.ticks)
    assert share is not None and 0 < share <= 1
    assert window.cpu_s[CONSUMER] and window.cpu_s[CONSUMER] > 0
    assert window.cpu_s[POSTGRESQL] and window.cpu_s[POSTGRESQL] > 0
    assert window.cpu_s[BROKER] is None or window.cpu_s[BROKER] > 0
    # Every event is one row of the timeline; PostgreSQL's statistics saw them all, in commits of batches.
    assert window.counters["rows_written:async_status_event"] == len(bodies)
    assert window.counters["rows_written"] >= len(bodies) + len(ids)  # each job's row updated at least once
    assert 0 < window.counters["commits"] < len(bodies)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM async_status WHERE status = 'PENDING'").scalar_one() == 0
