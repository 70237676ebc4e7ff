"""Leases end to end (SPEC §6): a worker process heartbeating with `publisher.job`, a real `tracker consume`
checking for lost jobs. A killed worker's job fails once its lease runs out; an alive one's never does."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench.processes import environment
from tests.processes import ConsumerProcess, script_workers
from tracker import leases, merge
from tracker.store import JobStore, open_job_store

pytestmark = [pytest.mark.rabbitmq]

LEASE_S = 2
REAP_INTERVAL_S = 0.5

# The worker: reports on a job for SECONDS with nothing but the library's heartbeats, then succeeds.
WORKER = textwrap.dedent(
    """
    import sys, time
    from tracker.publisher import Publisher

    job_id, lease_s, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    with Publisher.from_env() as publisher, publisher.job(job_id, heartbeat_timeout_s=lease_s) as job:
        print("working", flush=True)
        time.sleep(seconds)
        job.final_message = "Done."
    """
)


@pytest.fixture
def store(settings, engine, tmp_path) -> Iterator[JobStore]:
    """The jobs of this test, and a `tracker consume` checking for lost ones every REAP_INTERVAL_S."""
    env = environment(settings, TRACKER_REAP_INTERVAL_S=str(REAP_INTERVAL_S))
    consumer = ConsumerProcess(env, tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        yield open_job_store(engine)
    finally:
        code, _ = consumer.terminate(timeout=15)
        assert code == 0, f"tracker consume exited with {code}:\n{consumer.tail()}"


def new_job(store: JobStore) -> int:
    return store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S)).id


@pytest.fixture
def start_worker(settings, tmp_path) -> Iterator[Any]:
    """Start the worker script on a job; it is killed at the end of the test if still running."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with script_workers(script, settings, "working") as start:
        yield lambda job_id, seconds: start(job_id, LEASE_S, seconds)


def test_a_worker_killed_mid_job_has_its_job_failed_once_the_lease_runs_out(store, start_worker):
    job_id = new_job(store)
    worker = start_worker(job_id, 600)
    # Alive for twice its lease with no event but the library's heartbeats: still PENDING.
    until = time.monotonic() + 2 * LEASE_S
    while time.monotonic() < until:
        assert store.get_job(job_id).status == merge.PENDING
        time.sleep(0.2)

    worker.kill()  # SIGKILL: no final event, no goodbye
    worker.wait()
    killed = time.monotonic()
    deadline = killed + LEASE_S + REAP_INTERVAL_S + 2
    while (row := store.get_job(job_id)).status == merge.PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.monotonic() - killed

    assert row.status == merge.FAILED, f"still {row.status} {took:.1f} s after the kill"
    assert row.message == f"no event for {LEASE_S} s: the worker is presumed lost"
    assert row.end_time is not None and row.end_time >= row.start_time
    # The last beat went at most a third of the lease before the kill: the lease ran out after it.
    assert took > LEASE_S * 2 / 3 - 0.1, f"failed {took:.2f} s after the kill, before its lease can have run out"


def test_a_worker_alive_for_ten_leases_with_only_heartbeats_keeps_its_job(store, start_worker):
    job_id = new_job(store)
    worker = start_worker(job_id, 10 * LEASE_S)
    until = time.monotonic() + 10 * LEASE_S - 0.5  # the worker's block ends 10 leases after "working"
    while time.monotonic() < until:
        row = store.get_job(job_id)
        assert (row.status, row.end_time) == (merge.PENDING, None), row
        time.sleep(0.25)
    assert worker.wait(timeout=30) == 0, worker.stdout.read() if worker.stdout else ""

    deadline = time.monotonic() + 10
    while (row := store.get_job(job_id)).status == merge.PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (row.status, row.message) == (merge.SUCCEEDED, "Done.")
    assert row.end_time is not None
