"""The dead-letter queue as an operator sees it: how many messages, and why, without removing any.

Messages are read with ``basic_get`` without acking and then handed back with a requeueing
nack, so looking changes nothing but their ``redelivered`` flag. Raises DeadLettersUnavailable
when RabbitMQ cannot be reached.
"""

from __future__ import annotations

import collections
import dataclasses

import pika
import pika.exceptions

from tracker import broker
from tracker.config import Settings
from tracker.errors import DeadLettersUnavailable

REASON_HEADER = "x-tracker-reason"
NO_REASON = "(no x-tracker-reason header)"


@dataclasses.dataclass(frozen=True)
class DeadLetterCount:
    """The dead-letter queue's size, and the reasons among the first ``examined`` messages."""

    queue: str
    total: int
    examined: int
    reasons: tuple[tuple[str, int], ...]  # most frequent first


def count(settings: Settings, limit: int = 1000) -> DeadLetterCount:
    """Count the messages in ``settings.dead_queue`` and the reasons of at most ``limit`` of them.

    A queue that was never declared counts as empty. Raises DeadLettersUnavailable.
    """
    params = broker.parameters(settings.amqp_url, "tracker-dead")
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(
            f"cannot reach RabbitMQ at {params.host}:{params.port}: {type(exc).__name__} {exc}".strip()
        ) from None
    try:
        return _count(connection, settings.dead_queue, limit)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return DeadLetterCount(settings.dead_queue, 0, 0, ())
        raise DeadLettersUnavailable(f"RabbitMQ refused: {exc.reply_text}") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(f"lost RabbitMQ: {type(exc).__name__} {exc}".strip()) from None
    finally:
        if connection.is_open:
            connection.close()


def _count(connection: pika.BlockingConnection, queue: str, limit: int) -> DeadLetterCount:
    channel = connection.channel()
    total = channel.queue_declare(queue, passive=True).method.message_count
    reasons: collections.Counter[str] = collections.Counter()
    last_tag = None
    # Bounded by the count seen first, so messages dead-lettered meanwhile cannot keep us here.
    for _ in range(min(total, limit)):
        method, properties, _body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        last_tag = method.delivery_tag
        reasons[_reason(properties)] += 1
    if last_tag is not None:
        channel.basic_nack(delivery_tag=last_tag, multiple=True, requeue=True)
    channel.close()
    examined = sum(reasons.values())
    return DeadLetterCount(queue, total, examined, tuple(reasons.most_common()))


def _reason(properties: pika.BasicProperties) -> str:
    headers = properties.headers or {}
    reason = headers.get(REASON_HEADER)
    if reason is not None:
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    # Dead-lettered by RabbitMQ itself (rejected, expired, over a limit), not by a consumer.
    first = headers.get("x-first-death-reason")
    if first is not None:
        return f"(dead-lettered by RabbitMQ: {first.decode() if isinstance(first, bytes) else first})"
    return NO_REASON
