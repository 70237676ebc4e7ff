"""A dead letter the broker will not take (its queue gone, or on a cluster node that is down) is
not acked: the consumer stays up, and dead-letters it once the dead queue takes messages again."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from bench.processes import environment
from tests.polling import poll_until
from tests.processes import ConsumerProcess
from tracker import events
from tracker.config import Settings
from tracker.publisher import Publisher
from tracker.store import make_engine, open_job_store

pytestmark = [pytest.mark.rabbitmq]


def dead_letters(connection: pika.BlockingConnection, queue: str) -> int:
    """Messages ready in ``queue``; 0 while it does not exist."""
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise


def test_a_dead_letter_the_broker_refuses_is_kept_until_it_can_be_stored(settings: Settings, tmp_path) -> None:
    engine = make_engine(settings.database_url)
    consumer = ConsumerProcess(environment(settings), tmp_path / "consumer.log").start()
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        job = open_job_store(engine).create_job()
        consumer.wait_ready()
        channel = connection.channel()
        channel.queue_delete(settings.dead_queue)  # the dead-letter exchange now routes nowhere
        channel.basic_publish(
            settings.exchange,
            "job.progress",
            b"{not json",
            pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2),
        )
        with Publisher(settings, declare=False) as publisher:
            publisher.emit(job.id, "succeeded", "Done.")
        poll_until(lambda: "could not dead-letter" in consumer.output(), 30, "the refused dead letter noticed")
        # The consumer reconnects, declares its topology again (the dead queue with it), and the
        # bad message, never acked, comes back and is dead-lettered this time.
        poll_until(
            lambda: dead_letters(connection, settings.dead_queue) == 1,
            60,
            "the bad message in the dead-letter queue",
            interval=0.2,
        )
        assert consumer.alive, consumer.tail()
        assert open_job_store(engine).get_job(job.id).status == "SUCCEEDED"
    finally:
        connection.close()
        consumer.stop()
        engine.dispose()
