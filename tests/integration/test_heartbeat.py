"""The worker library's heartbeats (SPEC §6): `publisher.job(id, heartbeat_timeout_s=…)` on a real RabbitMQ."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pika
import pytest

from tests.conftest import AMQP_URL
from tests.faults.proxy import TcpProxy
from tracker import broker, events
from tracker.config import Settings
from tracker.publisher import Publisher

pytestmark = [pytest.mark.rabbitmq]

JOB = 42


@pytest.fixture
def settings(amqp_names: dict[str, str]) -> Settings:
    """The broker names of this test; no database (nothing here consumes the events queue)."""
    return Settings(amqp_url=AMQP_URL, **amqp_names)


@pytest.fixture
def tap(settings: Settings) -> Iterator[Tap]:
    tap = Tap(settings)
    yield tap
    tap.close()


class Tap:
    """A queue of the test's own bound to the test's exchange: every event published, in arrival order."""

    def __init__(self, settings: Settings) -> None:
        self._connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self._channel = self._connection.channel()
        broker.declare_topology(self._channel, settings)
        self._queue = self._channel.queue_declare("", exclusive=True).method.queue
        self._channel.queue_bind(self._queue, settings.exchange, routing_key=broker.ROUTING_PREFIX + "#")

    def drain(self) -> list[events.Event]:
        """Everything that arrived so far, each checked against the wire contract."""
        found = []
        while True:
            method, properties, body = self._channel.basic_get(self._queue, auto_ack=True)
            if method is None:
                return found
            event = events.parse(body, properties.content_type)
            assert properties.message_id == event.event_id
            assert properties.delivery_mode == 2
            found.append(event)

    def close(self) -> None:
        self._connection.close()


def is_heartbeat(event: events.Event) -> bool:
    return event.type == "progress" and event.message is None


def heartbeat_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("tracker-heartbeat-")]


def assert_numbered_in_order(job_events: list[events.Event]) -> None:
    """One client's events of one job: seq unique, and increasing with occurred_at (the merge key)."""
    seqs = [event.seq for event in sorted(job_events, key=lambda event: (event.occurred_at, event.seq))]
    assert seqs == sorted(set(seqs)), "seq must be unique and follow occurred_at"
    assert seqs == list(range(len(seqs))), "no number skipped when every publish succeeded"


def seconds(later: dt.datetime, earlier: dt.datetime) -> float:
    return (later - earlier).total_seconds()


def test_heartbeats_every_third_of_the_lease_while_the_block_runs_and_none_after(settings, tap, caplog):
    caplog.set_level(logging.INFO, logger="tracker.publisher")
    with Publisher(settings) as publisher:
        with publisher.job(JOB, heartbeat_timeout_s=0.6) as job:
            assert len(heartbeat_threads()) == 1
            began = time.monotonic()
            for step in range(4):
                job.progress(f"step {step}")
                time.sleep(0.5)
            job.final_message = "done"
        took = time.monotonic() - began
        assert heartbeat_threads() == [], "the heartbeat thread is joined when the block ends"
        time.sleep(0.6)  # a full lease: any beat still going would have been published by now
        received = tap.drain()

    assert 1.9 < took < 2.5, "leaving the block waits for no beat's interval"
    final = received[-1]
    assert (final.type, final.message) == ("succeeded", "done")
    beats = [event for event in received if is_heartbeat(event)]
    own = [event.message for event in received if event.type == "progress" and event.message is not None]
    assert own == ["step 0", "step 1", "step 2", "step 3"]
    assert len(received) == len(beats) + 4 + 1
    # One at once, then every 0.2 s for 2 s: about 10 (an unhurried machine makes 10 or 11).
    assert 8 <= len(beats) <= 12, [event.occurred_at for event in beats]
    gaps = [seconds(later.occurred_at, earlier.occurred_at) for earlier, later in itertools.pairwise(beats)]
    assert max(gaps) < 0.6, f"a gap as long as the lease loses the job: {gaps}"
    assert 0.17 < sum(gaps) / len(gaps) < 0.3, gaps
    assert all(event.occurred_at < final.occurred_at for event in beats), "no heartbeat after the final event"
    assert {event.job_id for event in received} == {JOB}
    assert_numbered_in_order(received)
    assert library_log(caplog) == []


def test_heartbeats_and_a_block_publishing_flat_out_share_the_connection_safely(settings, tap, caplog):
    caplog.set_level(logging.INFO, logger="tracker.publisher")
    with Publisher(settings) as publisher:
        sent_beats = count_heartbeats(publisher)
        with publisher.job(JOB, heartbeat_timeout_s=0.15) as job:
            published = [job.progress(f"event {number}") for number in range(500)]
        received = tap.drain()

    assert [event.event_id for event in received if event.message and event.message.startswith("event ")] == [
        event.event_id for event in published
    ], "every progress event confirmed and arrived once"
    beats = [event for event in received if is_heartbeat(event)]
    assert len(beats) == len(sent_beats) >= 1, "every confirmed heartbeat arrived, and none else"
    assert received[-1].type == "succeeded"
    assert_numbered_in_order(received)
    assert library_log(caplog) == [], "no heartbeat failed"


def test_blocks_of_many_threads_share_one_publisher_with_their_heartbeats(settings, tap, caplog):
    caplog.set_level(logging.INFO, logger="tracker.publisher")
    jobs = range(1, 7)
    errors: list[BaseException] = []

    def work(publisher: Publisher, job_id: int) -> None:
        try:
            for iteration in range(3):
                with publisher.job(job_id, heartbeat_timeout_s=0.15) as job:
                    for number in range(40):
                        job.progress(f"{iteration}.{number}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with Publisher(settings) as publisher:
        threads = [threading.Thread(target=work, args=(publisher, job_id)) for job_id in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        received = tap.drain()

    assert errors == []
    assert heartbeat_threads() == []
    for job_id in jobs:
        mine = [event for event in received if event.job_id == job_id]
        assert [event.message for event in mine if not is_heartbeat(event)] == [
            message for iteration in range(3) for message in [*(f"{iteration}.{n}" for n in range(40)), None]
        ]
        assert [event.type for event in mine].count("succeeded") == 3
        # Each block ends the job's numbering with its final event; the next block starts again at 0.
        blocks: list[list[events.Event]] = [[]]
        for event in mine:
            blocks[-1].append(event)
            if event.terminal:
                blocks.append([])
        assert blocks.pop() == []
        for block in blocks:
            assert_numbered_in_order(block)
    assert library_log(caplog) == []


def test_a_block_that_raises_stops_its_heartbeats_and_publishes_failed(settings, tap):
    with Publisher(settings) as publisher:
        with pytest.raises(RuntimeError, match="disk full"), publisher.job(JOB, heartbeat_timeout_s=0.3) as job:
            job.progress("copying")
            time.sleep(0.5)
            raise RuntimeError("disk full")
        assert heartbeat_threads() == []
        time.sleep(0.4)
        received = tap.drain()

    final = received[-1]
    assert (final.type, final.message) == ("failed", "disk full")
    beats = [event for event in received if is_heartbeat(event)]
    assert len(beats) >= 3
    assert all(event.occurred_at < final.occurred_at for event in beats)
    assert_numbered_in_order(received)


def test_heartbeats_that_fail_while_the_broker_is_away_do_not_fail_the_block(settings, tap, caplog):
    caplog.set_level(logging.INFO, logger="tracker.publisher")
    url = urllib.parse.urlsplit(AMQP_URL)
    with TcpProxy((url.hostname or "127.0.0.1", url.port or 5672)) as proxy:
        via_proxy = Settings(
            amqp_url=url._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}").geturl(),
            exchange=settings.exchange,
            queue=settings.queue,
            dead_exchange=settings.dead_exchange,
            dead_queue=settings.dead_queue,
        )
        with Publisher(via_proxy) as publisher, publisher.job(JOB, heartbeat_timeout_s=0.3) as job:
            job.progress("before")
            time.sleep(0.3)
            proxy.cut()
            time.sleep(1.0)  # five beats fail meanwhile
            proxy.restore()
            restored = dt.datetime.now(dt.UTC)
            time.sleep(0.5)
            job.progress("after")
        received = tap.drain()

    log = library_log(caplog)
    failures = [message for level, message in log if message.startswith(f"heartbeat of job {JOB}:")]
    assert len(failures) >= 3, log
    assert {level for level, _ in log} == {logging.WARNING}, "a failed beat is a warning, no more"
    assert [event.message for event in received if not is_heartbeat(event)] == ["before", "after", None]
    assert received[-1].type == "succeeded"
    assert any(is_heartbeat(event) and event.occurred_at > restored for event in received), "beats resumed"


def library_log(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """What tracker.publisher logged (pika's own complaints about a lost connection left out)."""
    return [(record.levelno, record.getMessage()) for record in caplog.records if record.name == "tracker.publisher"]


def count_heartbeats(publisher: Publisher) -> list[events.Event]:
    """Record each heartbeat the broker confirmed (the job block calls ``publisher.heartbeat``)."""
    confirmed: list[events.Event] = []
    beat = publisher.heartbeat

    def counting(job_id: int) -> events.Event:
        event = beat(job_id)
        confirmed.append(event)
        return event

    publisher.heartbeat = counting  # type: ignore[method-assign]
    return confirmed
