"""The RabbitMQ side both processes agree on: connection parameters, topology, back-off."""

from __future__ import annotations

import contextlib
import dataclasses
import random

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker.config import Settings
from tracker.errors import DeadLettersUnavailable

ROUTING_PREFIX = "job."


def parameters(url: str, name: str) -> pika.URLParameters:
    """Connection parameters for ``url`` with heartbeats on and short connect timeouts.

    Values given in the URL's query string win over these defaults.
    """
    params = pika.URLParameters(url)
    query = url.partition("?")[2]
    if "heartbeat" not in query:
        params.heartbeat = 30
    if "socket_timeout" not in query:
        params.socket_timeout = 5
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = 60
    params.client_properties = {"connection_name": name}
    return params


def routing_key(event_type: str) -> str:
    return ROUTING_PREFIX + event_type


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Declare exchange, quorum queue, dead-letter exchange and dead queue; idempotent.

    Raises pika.exceptions.ChannelClosedByBroker (406) when one exists with other arguments.
    """
    channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(settings.dead_exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(settings.dead_queue, durable=True)
    channel.queue_bind(settings.dead_queue, settings.dead_exchange)
    channel.queue_declare(
        settings.queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": settings.dead_exchange},
    )
    channel.queue_bind(settings.queue, settings.exchange, routing_key=ROUTING_PREFIX + "#")


def dead_letter_count(settings: Settings) -> int:
    """How many messages ``settings.dead_queue`` holds, read without touching them (a passive declare).

    A queue never declared holds none. Opens a connection of its own and closes it. Raises
    DeadLettersUnavailable when RabbitMQ cannot be reached or refuses.
    """
    params = parameters(settings.amqp_url, "tracker-dead-count")
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError:
        raise DeadLettersUnavailable(f"cannot reach RabbitMQ at {params.host}:{params.port}") from None
    try:
        return int(connection.channel().queue_declare(settings.dead_queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:  # never declared: empty
            return 0
        raise DeadLettersUnavailable(f"RabbitMQ refused: {exc.reply_text}") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(f"lost RabbitMQ: {type(exc).__name__}") from None
    finally:
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()


@dataclasses.dataclass
class Backoff:
    """Capped exponential back-off with jitter: 0.25 s, 0.5 s, 1 s … up to ``cap``."""

    first: float = 0.25
    cap: float = 15.0
    _attempt: int = 0

    def next(self) -> float:
        growth: int = 2**self._attempt  # typeshed types int ** int as Any (a negative power is a float)
        delay = min(self.cap, self.first * growth)
        self._attempt += 1
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self._attempt = 0
