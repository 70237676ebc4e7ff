"""A publish no queue can take, or that RabbitMQ refuses, fails at once with a clear error naming
the exchange and the routing key, not after the publisher's patience of 30 s; the publisher goes
on once the broker's setup is put right."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from bench.processes import environment
from tracker import events
from tracker.config import Settings
from tracker.errors import PublishFailed
from tracker.publisher import Publisher

pytestmark = [pytest.mark.rabbitmq, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

AT_ONCE_S = 3.0  # far below the 30 s a passing trouble is retried for


@pytest.fixture
def channel(settings: Settings) -> Iterator[BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    yield connection.channel()
    connection.close()


def test_a_mistyped_exchange_fails_at_once_naming_it(settings: Settings) -> None:
    mistyped = settings.with_(exchange=f"test.{uuid.uuid4().hex[:8]}.async_stauts")
    event = events.new_event(1, "progress", "to nowhere")
    started = time.monotonic()
    with Publisher(mistyped, declare=False, timeout_s=30.0) as publisher, pytest.raises(PublishFailed) as raised:
        publisher.publish(event)
    assert time.monotonic() - started < AT_ONCE_S
    assert str(raised.value) == (
        f"event {event.event_id} not published to exchange {mistyped.exchange!r} with routing key 'job.progress': "
        f"RabbitMQ refused: NOT_FOUND - no exchange {mistyped.exchange!r} in vhost '/'"
    )


def test_an_exchange_with_no_queue_bound_fails_at_once_and_the_publisher_goes_on_once_one_is(
    settings: Settings, channel: BlockingChannel
) -> None:
    channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    event = events.new_event(1, "succeeded", "unheard")
    with Publisher(settings, declare=False, timeout_s=30.0) as publisher:
        started = time.monotonic()
        with pytest.raises(PublishFailed) as raised:
            publisher.publish(event)
        assert time.monotonic() - started < AT_ONCE_S
        assert str(raised.value) == (
            f"event {event.event_id} not published to exchange {settings.exchange!r} with routing key "
            "'job.succeeded': no queue is bound to take it (RabbitMQ returned it as unroutable)"
        )
        channel.queue_declare(settings.queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(settings.queue, settings.exchange, routing_key="job.#")
        publisher.publish(event)
    assert channel.queue_declare(settings.queue, passive=True).method.message_count == 1


def test_tracker_jobs_emit_says_in_one_line_what_the_broker_refused(
    settings: Settings, channel: BlockingChannel
) -> None:
    """`jobs emit` declares the topology first (so it is routable); here the exchange exists with
    another type, which RabbitMQ refuses to declare as the topic exchange the tracker wants."""
    channel.exchange_declare(settings.exchange, exchange_type="direct", durable=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tracker.cli", "jobs", "emit", "1", "progress", "half way"],
        env=environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 10.0  # its patience is 15 s
    assert (done.returncode, done.stdout) == (1, "")
    [line] = done.stderr.splitlines()
    assert line.startswith("tracker: event "), line
    assert line.endswith(
        f" not published to exchange {settings.exchange!r} with routing key 'job.progress': RabbitMQ refused: "
        f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange {settings.exchange!r} in vhost '/': "
        "received 'topic' but current is 'direct'"
    ), line
