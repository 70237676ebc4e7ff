"""Publisher → RabbitMQ → consumer → row, on SQLite and PostgreSQL, with real brokers and databases."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from consumers.amqp import Consumer
from consumers.status import StatusProjector
from tracker import events, merge, timefmt
from tracker.publisher import JobFailed, Publisher
from tracker.store import JobStore, open_job_store

pytestmark = [pytest.mark.rabbitmq]


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RunningConsumer:
    def __init__(self, settings, engine) -> None:
        self.consumer = Consumer(settings, StatusProjector(open_job_store(engine)))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "consumer did not stop"
        assert self.error is None, f"consumer died: {self.error!r}"


@pytest.fixture
def store(engine) -> JobStore:
    return open_job_store(engine)


@pytest.fixture
def start_consumer(settings, engine) -> Iterator[Callable[[], RunningConsumer]]:
    running: list[RunningConsumer] = []

    def start() -> RunningConsumer:
        running.append(RunningConsumer(settings, engine))
        return running[-1]

    yield start
    for consumer in running:
        consumer.stop()


@pytest.fixture
def publisher(settings) -> Iterator[Publisher]:
    with Publisher(settings) as publisher:
        yield publisher


def queue_depth(channel, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def drain_dead(channel, queue: str) -> list[tuple[bytes, dict]]:
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return found
        found.append((body, properties.headers or {}))


def random_events(job_ids: list[int], count: int, rng: random.Random) -> list[events.Event]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    result = []
    for _ in range(count):
        kind = rng.choices(["progress", "succeeded", "failed"], weights=[8, 1, 1])[0]
        result.append(
            events.new_event(
                rng.choice(job_ids),
                kind,
                rng.choice([None, f"note {rng.randrange(1000)}"]),
                seq=rng.randrange(3),
                occurred_at=base + dt.timedelta(microseconds=rng.randrange(2000)),
            )
        )
    return result


def expected_rows(store: JobStore, published: list[events.Event]) -> dict[int, tuple]:
    by_job: dict[int, list[events.Event]] = {}
    for event in published:
        by_job.setdefault(event.job_id, []).append(event)
    expected = {}
    for job_id, job_events in by_job.items():
        created = store.get_job(job_id)
        state = merge.replay(created.start_time, merge.DEFAULT_MESSAGE, job_events)
        expected[job_id] = (state.status, state.message, state.end_time)
    return expected


def actual_rows(store: JobStore, job_ids) -> dict[int, tuple]:
    rows = {}
    for job_id in job_ids:
        job = store.get_job(job_id)
        rows[job_id] = (job.status, job.message, job.end_time)
    return rows


def test_published_event_reaches_the_row(store, start_consumer, publisher):
    job = store.create_job()
    start_consumer()
    with publisher.job(job.id) as report:
        report.progress("half way")
        report.final_message = "all done"
    wait_until(lambda: store.get_job(job.id).status == merge.SUCCEEDED, what="SUCCEEDED")
    row = store.get_job(job.id)
    assert row.message == "all done"
    assert row.end_time is not None and row.end_time >= row.start_time


def test_failure_in_the_context_manager_reports_failed(store, start_consumer, publisher):
    job = store.create_job("copying")
    start_consumer()
    with pytest.raises(RuntimeError), publisher.job(job.id):
        raise RuntimeError("disk full")
    wait_until(lambda: store.get_job(job.id).status == merge.FAILED, what="FAILED")
    assert store.get_job(job.id).message == "disk full"


def test_a_block_reports_progress_percent_and_its_result(store, start_consumer, publisher):
    """SPEC §11's worker library through RabbitMQ and the consumer: the percent, then the result."""
    job = store.create_job("exporting", kind="export.csv")
    start_consumer()
    with publisher.job(job.id) as report:
        report.progress("half way", percent=50)
        wait_until(lambda: store.get_job(job.id).progress == 50, what="progress 50")
        assert store.get_job(job.id).message == "half way"
        report.result = {"rows": 1200}
        report.final_message = "exported"
    wait_until(lambda: store.get_job(job.id).status == merge.SUCCEEDED, what="SUCCEEDED")
    row = store.get_job(job.id)
    assert (row.message, row.progress, row.result_json, row.error_code) == ("exported", 50, '{"rows":1200}', None)


def test_job_failed_reports_failed_with_its_error(store, start_consumer, publisher):
    job = store.create_job("copying")
    start_consumer()
    with pytest.raises(JobFailed), publisher.job(job.id) as report:
        report.progress(percent=10)
        raise JobFailed("Disk full.", code="disk_full", details={"free_bytes": 0})
    wait_until(lambda: store.get_job(job.id).status == merge.FAILED, what="FAILED")
    row = store.get_job(job.id)
    assert (row.message, row.progress, row.result_json) == ("Disk full.", 10, None)
    assert (row.error_code, row.error_details_json) == ("disk_full", '{"free_bytes":0}')


def test_duplicates_and_reordering_converge_to_the_merge_rule(store, start_consumer, publisher):
    rng = random.Random(7)
    job_ids = [store.create_job().id for _ in range(20)]
    published = random_events(job_ids, 400, rng)
    stream = published + rng.sample(published, 100)  # duplicates
    rng.shuffle(stream)
    for event in stream:
        publisher.publish(event)
    start_consumer()
    expected = expected_rows(store, published)
    wait_until(lambda: actual_rows(store, expected) == expected, what="rows to match the merge rule")
    # Every event once in its job's timeline, in the key order of SPEC §3, whatever came twice.
    timelines = {
        job_id: [
            e.event_id
            for e in sorted({e.event_id: e for e in published if e.job_id == job_id}.values(), key=merge.key_of)
        ]
        for job_id in job_ids
    }
    wait_until(
        lambda: {job_id: [e.event_id for e in store.timeline(job_id)] for job_id in job_ids} == timelines,
        what="every event in its job's timeline once",
    )


def test_bad_input_is_dead_lettered_with_its_reason_and_good_events_still_apply(
    settings, store, start_consumer, raw_channel
):
    job = store.create_job()
    good = [events.new_event(job.id, "progress", f"step {i}", seq=i) for i in range(3)]
    valid = good[0].to_wire()
    bad = {
        b"{not json": "not valid JSON",
        b"\xff\xfe": "not valid UTF-8",
        b"[1, 2]": "must be a JSON object",
        json.dumps({**valid, "job_id": "1"}).encode(): "job_id: must be an integer",
        json.dumps({**valid, "type": "paused"}).encode(): "type: must be one of",
        json.dumps({**valid, "occurred_at": "2021-02-18T17:13:56"}).encode(): "occurred_at:",
        json.dumps({**valid, "job_id": 987654321}).encode(): "job 987654321 does not exist",
        b"x" * (64 * 1024 + 1): "over the limit",
    }
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    for i, body in enumerate(bad):
        good_body = json.dumps(good[i % len(good)].to_wire()).encode()
        raw_channel.basic_publish(settings.exchange, "job.progress", good_body, properties)
        raw_channel.basic_publish(settings.exchange, "job.progress", body, properties)
    raw_channel.basic_publish(
        settings.exchange, "job.progress", json.dumps(valid).encode(), pika.BasicProperties(content_type="text/plain")
    )
    start_consumer()
    wait_until(lambda: queue_depth(raw_channel, settings.dead_queue) == len(bad) + 1, what="dead letters")
    dead = drain_dead(raw_channel, settings.dead_queue)
    reasons = {body: headers["x-tracker-reason"] for body, headers in dead}
    for body, expected in bad.items():
        assert expected in reasons[body], (body[:40], reasons[body])
    assert any("content_type" in reason for reason in reasons.values())
    wait_until(lambda: queue_depth(raw_channel, settings.queue) == 0, what="queue drained")
    assert store.get_job(job.id).message == "step 2"
    # Only accepted events are in the timeline, each once: not the dead-lettered copy of good[0].
    assert sorted(e.event_id for e in store.timeline(job.id)) == sorted(e.event_id for e in good)


def body_of_size(document: dict, size: int) -> bytes:
    """``document`` as JSON of exactly ``size`` bytes, padded by an unknown field (ignored by SPEC §3)."""
    bare = json.dumps({**document, "padding": ""}).encode()
    body = json.dumps({**document, "padding": "p" * (size - len(bare))}).encode()
    assert len(body) == size
    return body


def test_the_limits_of_spec_3_are_exact(settings, store, start_consumer, raw_channel):
    """64 KiB is 65,536 bytes and taken; one byte more is not. A job_id of 2^63-1 is valid (the
    job just does not exist); 2^63 is invalid."""
    job = store.create_job()
    properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)

    def send(document: dict, size: int | None = None) -> bytes:
        body = json.dumps(document).encode() if size is None else body_of_size(document, size)
        raw_channel.basic_publish(settings.exchange, "job.progress", body, properties, mandatory=True)
        return body

    send(events.new_event(job.id, "progress", "the largest body").to_wire(), 65_536)
    too_large = send(events.new_event(job.id, "succeeded", "one byte too many").to_wire(), 65_537)
    valid_id = send({**events.new_event(1, "progress").to_wire(), "job_id": 9223372036854775807})
    invalid_id = send({**events.new_event(1, "progress").to_wire(), "job_id": 9223372036854775808})
    start_consumer()
    wait_until(
        lambda: queue_depth(raw_channel, settings.queue) == 0 and queue_depth(raw_channel, settings.dead_queue) >= 3,
        what="the queue drained into the row and the dead letters",
    )
    reasons = {body: headers["x-tracker-reason"] for body, headers in drain_dead(raw_channel, settings.dead_queue)}
    assert set(reasons) == {too_large, valid_id, invalid_id}, "the 65,536-byte body was dead-lettered"
    assert "body is 65537 bytes, over the limit of 65536" in reasons[too_large]
    assert reasons[valid_id] == "job 9223372036854775807 does not exist"
    assert "job_id: must be at most 9223372036854775807" in reasons[invalid_id]
    row = store.get_job(job.id)
    assert (row.status, row.message) == (merge.PENDING, "the largest body")


def test_two_consumers_on_the_same_jobs_converge(store, start_consumer, publisher):
    rng = random.Random(11)
    job_ids = [store.create_job().id for _ in range(30)]
    published = random_events(job_ids, 1500, rng)
    start_consumer()
    start_consumer()
    for event in published + rng.sample(published, 200):
        publisher.publish(event)
    expected = expected_rows(store, published)
    wait_until(lambda: actual_rows(store, expected) == expected, timeout=60, what="rows to match the merge rule")


class Broker:
    """A connection of the test's own that declares nothing; each check on a fresh channel."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))

    def accepts(self, declare: Callable[[BlockingChannel], object]) -> bool:
        """Whether the broker takes this declare; False on 406 PRECONDITION_FAILED (it differs)."""
        channel = self.connection.channel()
        try:
            declare(channel)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 406, exc
            return False
        channel.close()
        return True

    def exists(self, queue: str) -> bool:
        channel = self.connection.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404, exc
            return False
        channel.close()
        return True


def test_consumer_declares_the_topology_of_the_spec(settings, engine):
    """The consumer alone declares, on names nothing else has declared; each part is then checked
    by re-declaring it: the broker refuses (406) a declare that differs from what exists."""
    broker = Broker(settings.amqp_url)
    assert not broker.exists(settings.queue) and not broker.exists(settings.dead_queue)
    running = RunningConsumer(settings, engine)
    try:
        wait_until(lambda: broker.exists(settings.queue), what="the consumer to declare its queue")
    finally:
        running.stop()  # so that it takes none of the messages below
    events_queue = {"x-queue-type": "quorum", "x-dead-letter-exchange": settings.dead_exchange}
    exchange, queue = settings.exchange, settings.queue
    dead_exchange, dead_queue = settings.dead_exchange, settings.dead_queue
    # the events exchange: topic, durable
    assert broker.accepts(lambda ch: ch.exchange_declare(exchange, exchange_type="topic", durable=True))
    assert not broker.accepts(lambda ch: ch.exchange_declare(exchange, exchange_type="topic", durable=False))
    assert not broker.accepts(lambda ch: ch.exchange_declare(exchange, exchange_type="fanout", durable=True))
    # the events queue: durable, quorum, dead-lettering to the dead-letter exchange
    assert broker.accepts(lambda ch: ch.queue_declare(queue, durable=True, arguments=events_queue))
    assert not broker.accepts(lambda ch: ch.queue_declare(queue, durable=False, arguments=events_queue))
    assert not broker.accepts(
        lambda ch: ch.queue_declare(queue, durable=True, arguments={**events_queue, "x-queue-type": "classic"})
    )
    assert not broker.accepts(
        lambda ch: ch.queue_declare(queue, durable=True, arguments={**events_queue, "x-dead-letter-exchange": "x"})
    )
    # the dead-letter exchange and the dead queue: durable, the queue a quorum queue
    assert broker.accepts(lambda ch: ch.exchange_declare(dead_exchange, exchange_type="fanout", durable=True))
    assert not broker.accepts(lambda ch: ch.exchange_declare(dead_exchange, exchange_type="fanout", durable=False))
    quorum = {"x-queue-type": "quorum"}
    assert broker.accepts(lambda ch: ch.queue_declare(dead_queue, durable=True, arguments=quorum))
    assert not broker.accepts(lambda ch: ch.queue_declare(dead_queue, durable=True))

    # bound with job.#: job.<anything> reaches the queue, other keys reach no queue at all
    channel = broker.connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(exchange, "job.progress.extra", b"{}", mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange, "task.progress", b"{}", mandatory=True)
    wait_until(lambda: queue_depth(channel, queue) == 1, what="the job.# message in the events queue")
    # a rejected message goes through the dead-letter exchange to the dead queue
    method, _, _ = channel.basic_get(queue)
    assert method is not None and method.routing_key == "job.progress.extra"
    channel.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: queue_depth(channel, dead_queue) == 1, what="the rejected message in the dead queue")
    broker.connection.close()


def test_an_event_published_before_its_timestamp_is_kept_in_utc(store, start_consumer, publisher):
    job = store.create_job()
    start_consumer()
    at = dt.datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    publisher.publish(events.new_event(job.id, "succeeded", "done", occurred_at=at, event_id=str(uuid.uuid4())))
    wait_until(lambda: store.get_job(job.id).status == merge.SUCCEEDED)
    assert timefmt.format_time(store.get_job(job.id).end_time) == "2030-05-01T10:00:00.123456Z"


def test_the_consumer_touches_its_health_file(settings, engine, tmp_path):
    alive = tmp_path / "alive"
    running = RunningConsumer(settings.with_(health_file=str(alive)), engine)
    try:
        wait_until(alive.exists, what="the health file")
        first = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > first, timeout=15, what="the health file to be touched again")
    finally:
        running.stop()


def test_a_deleted_queue_is_declared_again_and_consumed(settings, store, start_consumer, publisher, raw_channel):
    """basic.cancel (the queue was deleted under the consumer): it reconnects and consumes again."""
    job = store.create_job()
    start_consumer()
    publisher.emit(job.id, "progress", "before")
    wait_until(lambda: store.get_job(job.id).message == "before", what="the first event applied")
    raw_channel.queue_delete(settings.queue)

    def consumed_again() -> bool:
        # A consumer on it, not merely the queue: it is declared before it is bound, and a publish
        # in between is unroutable (refused at once, SPEC §3).
        try:
            declared = raw_channel.connection.channel().queue_declare(settings.queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return False
        return declared.method.consumer_count >= 1

    wait_until(consumed_again, timeout=30, what="the consumer to declare, bind and consume its queue again")
    publisher.emit(job.id, "succeeded", "after")
    wait_until(lambda: store.get_job(job.id).status == merge.SUCCEEDED, timeout=30, what="the event after the deletion")
    assert store.get_job(job.id).message == "after"
