"""Publisher.publish on a fake channel: what goes on the wire, and how failures are retried."""

from __future__ import annotations

import re
from typing import Any

import pika.exceptions
import pytest

from tracker import events
from tracker.config import Settings
from tracker.errors import BrokerUnreachable, PublishFailed
from tracker.publisher import Publisher


class FakeKept:
    """A ConfirmingChannel whose ``open`` gives itself; ``failures`` are raised by the next publishes."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.sent: list[tuple[Any, ...]] = []
        self.opened = self.closed = 0

    def open(self) -> FakeKept:
        self.opened += 1
        return self

    def close(self) -> None:
        self.closed += 1

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((exchange, routing_key, body, properties, mandatory))


def test_an_event_is_published_to_the_exchange_by_type_confirmed_persistent_and_mandatory() -> None:
    kept = FakeKept()
    event = events.new_event(7, "succeeded", "done")
    Publisher(Settings(exchange="x"), channel=kept).publish(event)
    [(exchange, key, body, properties, mandatory)] = kept.sent
    assert (exchange, key, mandatory) == ("x", "job.succeeded", True)
    assert events.parse(body, properties.content_type) == event
    assert (properties.message_id, properties.delivery_mode) == (event.event_id, 2)


@pytest.mark.parametrize(
    "failure",
    [
        BrokerUnreachable("no node answered"),
        pika.exceptions.StreamLostError("reset"),
        pika.exceptions.NackError([]),
        pika.exceptions.ChannelClosedByBroker(541, "INTERNAL_ERROR"),
    ],
)
def test_a_failed_send_drops_the_connection_and_is_sent_again(failure: Exception) -> None:
    kept = FakeKept(failure)
    Publisher(Settings(), channel=kept, timeout_s=5.0).emit(1, "progress", "again")
    assert len(kept.sent) == 1 and kept.closed == 1 and kept.opened == 2


def test_with_no_time_to_wait_one_failure_is_final() -> None:
    """The lost-job check publishes so (timeout 0): a failed check is tried again at the next."""
    kept = FakeKept(pika.exceptions.NackError([]))
    with pytest.raises(PublishFailed, match="not confirmed: NackError"):
        Publisher(Settings(), channel=kept, timeout_s=0.0).emit(1, "failed", "lost")
    assert kept.opened == 1 and kept.closed == 1 and not kept.sent


NO_ROUTE = "no queue is bound to take it (RabbitMQ returned it as unroutable)"


@pytest.mark.parametrize(
    ("failure", "why"),
    [
        (pika.exceptions.UnroutableError([]), NO_ROUTE),
        (
            pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no exchange 'x' in vhost '/'"),
            "RabbitMQ refused: NOT_FOUND - no exchange 'x' in vhost '/'",
        ),
        (
            pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - access to exchange 'x' refused"),
            "RabbitMQ refused: ACCESS_REFUSED - access to exchange 'x' refused",
        ),
        (
            pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg 'type'"),
            "RabbitMQ refused: PRECONDITION_FAILED - inequivalent arg 'type'",
        ),
    ],
)
def test_an_event_no_queue_takes_or_the_broker_refuses_fails_at_once_naming_where_it_went(
    failure: Exception, why: str
) -> None:
    kept = FakeKept(failure)
    event = events.new_event(1, "progress", "nowhere")
    with pytest.raises(PublishFailed) as raised:
        Publisher(Settings(exchange="x"), channel=kept, timeout_s=30.0).publish(event)
    assert str(raised.value) == (
        f"event {event.event_id} not published to exchange 'x' with routing key 'job.progress': {why}"
    )
    assert raised.value.__cause__ is failure
    assert kept.opened == 1 and not kept.sent  # not sent again


def test_a_heartbeat_no_queue_takes_fails_at_once_and_a_lost_one_is_sent_again_once() -> None:
    kept = FakeKept(pika.exceptions.UnroutableError([]))
    publisher = Publisher(Settings(exchange="x"), channel=kept)
    with pytest.raises(PublishFailed, match=f"^heartbeat .* not published to exchange 'x' .*: {re.escape(NO_ROUTE)}$"):
        publisher.heartbeat(1)
    assert kept.opened == 1
    kept.failures = [pika.exceptions.StreamLostError("reset"), pika.exceptions.StreamLostError("reset")]
    with pytest.raises(PublishFailed, match="not confirmed: StreamLostError"):
        publisher.heartbeat(1)
    assert kept.opened == 3 and not kept.sent
    kept.failures = [pika.exceptions.StreamLostError("reset")]
    publisher.heartbeat(1)
    assert len(kept.sent) == 1
