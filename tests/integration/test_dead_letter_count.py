"""The dead-letter count the dashboard shows (``GET /api/{v}/dead_letters``), read from a real RabbitMQ."""

from __future__ import annotations

import pika
import pytest

from bench.processes import free_port
from tracker import broker
from tracker.config import Settings
from tracker.errors import DeadLettersUnavailable

pytestmark = [pytest.mark.rabbitmq, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]


def test_a_queue_never_declared_holds_none(settings: Settings) -> None:
    assert broker.dead_letter_count(settings) == 0


def test_the_count_is_what_the_queue_holds_and_reading_it_takes_nothing(settings: Settings, raw_channel) -> None:
    assert broker.dead_letter_count(settings) == 0
    for n in range(3):
        raw_channel.basic_publish(settings.dead_exchange, "job.progress", b"%d" % n, pika.BasicProperties())
    assert broker.dead_letter_count(settings) == 3
    assert broker.dead_letter_count(settings) == 3  # a passive look: nothing consumed
    assert raw_channel.queue_declare(settings.dead_queue, passive=True).method.message_count == 3


def test_a_broker_that_does_not_answer_is_unavailable(settings: Settings) -> None:
    closed = settings.with_(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    with pytest.raises(DeadLettersUnavailable, match=r"cannot reach RabbitMQ.* 127\.0\.0\.1:"):
        broker.dead_letter_count(closed)
