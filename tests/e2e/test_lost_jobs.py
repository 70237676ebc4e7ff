"""No job stays PENDING for ever (SPEC §6): real `tracker consume` processes, RabbitMQ, and both
databases, with leases of seconds and a check every half second."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator

import orjson
import pika
import pytest
import sqlalchemy as sa

from bench.processes import environment
from tests.processes import ConsumerProcess
from tracker import broker, events, leases, merge
from tracker.config import Settings
from tracker.model import Job
from tracker.publisher import Publisher
from tracker.store import JobStore, open_job_store

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]

INTERVAL_S = 0.5
LEASE_S = 2


@pytest.fixture
def store(engine: sa.Engine) -> JobStore:
    return open_job_store(engine)


@pytest.fixture
def lease_settings(settings: Settings) -> Settings:
    return settings.with_(reap_interval_s=INTERVAL_S)


@pytest.fixture
def spawn(lease_settings: Settings, tmp_path) -> Iterator[Callable[[str], ConsumerProcess]]:
    started: list[ConsumerProcess] = []

    def spawn(name: str) -> ConsumerProcess:
        process = ConsumerProcess(environment(lease_settings), tmp_path / f"{name}.log").start()
        started.append(process)
        process.wait_ready()
        return process

    yield spawn
    for process in started:
        if process.alive:
            process.kill()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def finished(store: JobStore, job_id: int) -> Callable[[], bool]:
    return lambda: store.get_job(job_id).status != merge.PENDING


class Heartbeats:
    """A worker's background heartbeats (``progress`` with a null message) every ``every_s`` until stopped.

    While a test holds ``between``, none is sent: what it publishes meanwhile lands in the queue
    between two heartbeats, not among them.
    """

    def __init__(self, settings: Settings, job_id: int, every_s: float) -> None:
        self._settings, self._job_id, self._every_s = settings, job_id, every_s
        self._stop = threading.Event()
        self.between = threading.Lock()
        self.sent = 0
        self.last_sent = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with Publisher(self._settings) as publisher:
            while not self._stop.is_set():
                with self.between:
                    publisher.emit(self._job_id, "progress", None)
                self.sent += 1
                self.last_sent = time.monotonic()
                self._stop.wait(self._every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_deadlines_and_lapsed_leases_fail_their_jobs_and_live_ones_stay_pending(lease_settings, store, engine, spawn):
    consumer = spawn("consumer")
    overrun = store.create_job("Importing.", leases.JobLimits(timeout_s=2, heartbeat_timeout_s=None))
    alive = store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S))
    dying = store.create_job("Purging.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S))
    keeping = Heartbeats(lease_settings, alive.id, every_s=LEASE_S / 3)
    killed = Heartbeats(lease_settings, dying.id, every_s=LEASE_S / 3)
    wait_for(lambda: killed.sent >= 3, 10, "a few heartbeats")
    killed.stop()  # the worker dies
    took = wait_for(finished(store, dying.id), LEASE_S + INTERVAL_S + 2, "the lost job to be FAILED")
    row = store.get_job(dying.id)
    assert (row.status, row.message) == (merge.FAILED, f"no event for {LEASE_S} s: the worker is presumed lost")
    assert (row.error_code, row.error_details_json) == ("lost", None)  # SPEC §11
    assert row.end_time is not None and row.end_time >= row.start_time
    assert took >= LEASE_S - 0.5  # not before its lease could have run out
    # The tracker's own failed event is in the job's timeline, after the worker's heartbeats.
    timeline = store.timeline(dying.id)
    assert [(e.type, e.message) for e in timeline] == [("progress", None)] * (len(timeline) - 1) + [
        ("failed", row.message)
    ]
    assert len(timeline) - 1 == killed.sent

    wait_for(finished(store, overrun.id), 2 + INTERVAL_S + 5, "the overrun job to be FAILED")
    row = store.get_job(overrun.id)
    assert (row.status, row.message, row.error_code) == (merge.FAILED, "not finished within 2 s", "timeout")
    assert row.end_time is not None

    time.sleep(LEASE_S)  # the live job's lease would have run out twice over without its heartbeats
    keeping.stop()
    assert store.get_job(alive.id).status == merge.PENDING
    log = consumer.output()
    assert log.count(f"job {dying.id} is lost") == 1 and log.count(f"job {overrun.id} is lost") == 1
    assert f"job {alive.id} is lost" not in log


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # the same on SQLite, and slow
def test_a_consumer_outage_never_fails_a_job_whose_heartbeats_wait_in_the_queue(lease_settings, store, spawn):
    consumer = spawn("consumer")
    job = store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S))
    beats = Heartbeats(lease_settings, job.id, every_s=LEASE_S / 4)
    try:
        wait_for(lambda: beats.sent >= 2, 10, "heartbeats")
        code, _ = consumer.terminate(timeout=15)
        assert code == 0
        time.sleep(3 * LEASE_S)  # the outage: heartbeats pile up in the queue
        consumer.start()
        consumer.wait_ready()
        time.sleep(LEASE_S + 4 * INTERVAL_S)  # checks run, the backlog is folded
    finally:
        beats.stop()
    assert store.get_job(job.id).status == merge.PENDING
    assert "is lost" not in consumer.output()


BACKLOG = 2000  # another job's events ahead of the heartbeats: 2000 prefetches, folded one by one in seconds
PREFETCH = 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_backlog_larger_than_the_prefetch_never_fails_a_live_job_whose_heartbeats_wait_behind_it(
    lease_settings, store, tmp_path
):
    # SPEC §6: "A consumer outage or a backlog never fails a live job." The consumer takes one
    # message at a time, so the backlog stays in the queue's ready count while it is folded.
    settings = lease_settings.with_(prefetch=PREFETCH, batch_size=PREFETCH)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    try:
        consumer.wait_ready()
        job = store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S))
        busy = store.create_job("Importing.")
        beats = Heartbeats(settings, job.id, every_s=LEASE_S / 4)  # alive all along: never a gap of a lease
        try:
            wait_for(lambda: len(store.timeline(job.id)) >= 2, 10, "heartbeats folded")
            code, _ = consumer.terminate(timeout=15)
            assert code == 0
            with beats.between:  # a burst of another job's events, ahead of the heartbeats to come
                publish_burst(settings, busy.id, BACKLOG)
            # The outage outlasts the lease as recorded (its last receipt, + RENEW_SLACK_S): by the
            # tracker's clock the job is overdue until its heartbeats behind the backlog are folded.
            time.sleep(LEASE_S + leases.RENEW_SLACK_S + 1)
            consumer.start()
            consumer.wait_ready()
            restarted = time.monotonic()
            wait_for(lambda: queue_ready(settings) == 0, 120, "the backlog to drain")
            drained_s = time.monotonic() - restarted
            time.sleep(LEASE_S + 4 * INTERVAL_S)  # the checks after the drain see the job's heartbeats
        finally:
            beats.stop()
        # Checks ran while the backlog was there: else this test would prove nothing.
        assert drained_s > 4 * INTERVAL_S, f"the backlog drained in {drained_s:.1f} s: make BACKLOG larger"
        print(f"lost jobs: a backlog of {BACKLOG} one-message prefetches drained in {drained_s:.1f} s")
        assert store.get_job(job.id).status == merge.PENDING
        assert "is lost" not in consumer.output()
        # Its events were applied, every one, and no failed event among them.
        wait_for(lambda: len(store.timeline(job.id)) >= beats.sent, 30, "every heartbeat folded")
        assert [(e.type, e.message) for e in store.timeline(job.id)] == [("progress", None)] * beats.sent
        assert len(store.timeline(busy.id)) == BACKLOG
    finally:
        if consumer.alive:  # its checks must not go on in the database the next test uses
            consumer.kill()


def publish_burst(settings: Settings, job_id: int, count: int) -> None:
    """``count`` progress events of ``job_id``, as fast as the broker takes them; all in the queue on return."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        for n in range(count):
            if n == count - 1:
                # Confirmed once it is in the queue, which on one channel means every one before it too.
                channel.confirm_delivery()
            event = events.new_event(job_id, "progress", f"Importing part {n}.", seq=n)
            channel.basic_publish(
                settings.exchange,
                broker.routing_key(event.type),
                orjson.dumps(event.to_wire()),
                broker.message_properties(event.event_id),
            )
    finally:
        connection.close()


def queue_ready(settings: Settings) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return connection.channel().queue_declare(settings.queue, passive=True).method.message_count
    finally:
        connection.close()


def test_a_workers_earlier_success_arriving_after_the_trackers_failure_wins(lease_settings, store, spawn):
    spawn("consumer")
    job = store.create_job("Deploying.", leases.JobLimits(timeout_s=600, heartbeat_timeout_s=LEASE_S))
    # Occurred inside the lease, but the worker's network held it back until after the decision.
    succeeded = events.new_event(job.id, "succeeded", "Deployed.")
    wait_for(finished(store, job.id), LEASE_S + INTERVAL_S + 5, "the tracker's failed event")
    assert store.get_job(job.id).status == merge.FAILED
    with Publisher(lease_settings) as publisher:
        publisher.publish(succeeded)
    wait_for(lambda: store.get_job(job.id).status == merge.SUCCEEDED, 10, "the worker's success to win")
    row = store.get_job(job.id)
    assert (row.message, row.end_time) == ("Deployed.", max(succeeded.occurred_at, row.start_time))


def test_two_consumers_checking_at_once_publish_one_failed_event_per_lost_job(lease_settings, store, spawn):
    # A queue of the test's own, bound to the exchange, sees every failed event published.
    connection = pika.BlockingConnection(pika.URLParameters(lease_settings.amqp_url))
    channel = connection.channel()
    channel.exchange_declare(lease_settings.exchange, exchange_type="topic", durable=True)
    watch = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(watch, lease_settings.exchange, routing_key="job.failed")
    try:
        spawn("first")
        spawn("second")
        jobs: list[Job] = [
            store.create_job(limits=leases.JobLimits(timeout_s=600, heartbeat_timeout_s=1)) for _ in range(20)
        ]
        for job in jobs:
            wait_for(finished(store, job.id), 1 + INTERVAL_S + 10, f"job {job.id} to be FAILED")
        time.sleep(4 * INTERVAL_S)  # checks after the fold find nothing more to publish
        published: dict[int, set[str]] = collections.defaultdict(set)
        while True:
            method, _properties, body = channel.basic_get(watch, auto_ack=True)
            if method is None:
                break
            event = orjson.loads(body)
            published[event["job_id"]].add(event["event_id"])
    finally:
        connection.close()
    assert {job.id: len(published[job.id]) for job in jobs} == {job.id: 1 for job in jobs}
    for job in jobs:
        assert store.get_job(job.id).message == "no event for 1 s: the worker is presumed lost"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL: tests/e2e/test_purge.py
def test_old_jobs_are_purged_by_the_periodic_check(lease_settings, store, engine, tmp_path):
    old = store.create_job("old")
    store.apply([events.new_event(old.id, "succeeded", "done")])
    pending = store.create_job("running")
    consumer = ConsumerProcess(
        environment(lease_settings, TRACKER_RETENTION_DAYS="0.00002"),  # 1.7 s
        tmp_path / "purging.log",
    ).start()
    try:
        consumer.wait_ready()
        wait_for(lambda: _gone(store, old.id), 15, "the old job to be purged")
        assert store.get_job(pending.id).status == merge.PENDING
    finally:
        consumer.kill()


def _gone(store: JobStore, job_id: int) -> bool:
    try:
        store.get_job(job_id)
    except LookupError:
        return True
    return False
