"""The dead-letter queue as an operator handles it (SPEC §9): count, show, replay and drop.

Every command takes messages with ``basic_get`` without acking, so that until it says otherwise
the broker still owns them: whatever stops the command (an error, Ctrl-C, SIGKILL, a lost
connection) hands every message it has not finished with back to the queue.

- count and show ack nothing; they hand every message back with one requeueing nack at the end,
  so looking changes nothing but the messages' ``redelivered`` flag.
- replay publishes a copy of each chosen message to the events exchange, with its routing key,
  body, ``message_id`` and content type, on a confirming channel with ``mandatory``; only once
  the broker has confirmed the copy is the dead one acked (removed). Killed between the two, the
  dead copy comes back and a later replay sends the event again: the same event, which the
  merge rule absorbs. Nothing is ever lost.
- drop acks the chosen messages, which deletes them.

Messages not chosen (another reason) are held unacked until the end, so that ``basic_get`` does
not hand them to us again; and no command takes more messages than the queue held when it
started, so messages dead-lettered meanwhile (a replayed event for a job that still does not
exist comes straight back) cannot keep it going for ever.

One command at a time (``exclusive_use``): a command looking at the queue does not see the
messages another one holds, and ``tracker migrate`` must not delete an older, classic dead queue
while a command holds some of its messages.

Raises DeadLettersUnavailable when RabbitMQ cannot be reached or refuses.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker import broker
from tracker.config import Settings
from tracker.errors import DeadLettersUnavailable
from tracker.logs import printable
from tracker.reasons import NO_REASON, ReasonFilter, broker_reason, reason_code

log = logging.getLogger(__name__)

PREVIEW_CHARS = 160
LOCK_SUFFIX = ".lock"
WAIT_S = 60.0  # for another command to be done with the queue


@dataclasses.dataclass(frozen=True)
class DeadLetterCount:
    """The dead-letter queue's size, and the reasons among the first ``examined`` messages."""

    queue: str
    total: int
    examined: int
    reasons: tuple[tuple[str, int], ...]  # most frequent first


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message as the commands see it."""

    reason: str
    routing_key: str
    message_id: str | None
    content_type: str | None
    headers: dict[str, Any]
    body: bytes

    @property
    def code(self) -> str:
        return reason_code(self.reason)

    @classmethod
    def from_message(cls, routing_key: str, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
        headers: dict[str, Any] = dict(properties.headers or {})
        original_key = headers.get(broker.ROUTING_KEY_HEADER)
        if isinstance(original_key, bytes):
            original_key = original_key.decode("utf-8", "replace")
        return cls(
            reason=reason_of(headers),
            routing_key=original_key if isinstance(original_key, str) and original_key else routing_key,
            message_id=properties.message_id,
            content_type=properties.content_type,
            headers=headers,
            body=body,
        )

    def replay_properties(self) -> pika.BasicProperties:
        """The properties the event is re-published with: its own, less what says it died."""
        return broker.message_properties(self.message_id, self.content_type, broker.replay_headers(self.headers))


@dataclasses.dataclass(frozen=True)
class Handled:
    """What show, replay or drop did: how many messages it handled, out of how many it looked at."""

    queue: str
    total: int  # in the queue when the command started
    examined: int
    handled: int


def reason_of(headers: dict[str, Any]) -> str:
    """The reason a message was dead-lettered, from its headers (ours, or RabbitMQ's own)."""
    reason = headers.get(broker.REASON_HEADER)
    if reason is not None:
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    # Dead-lettered by RabbitMQ itself (rejected, expired, over a limit), not by a consumer.
    first = headers.get(broker.FIRST_DEATH_REASON_HEADER)
    if first is not None:
        return broker_reason(first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first))
    return NO_REASON


def preview(body: bytes, chars: int = PREVIEW_CHARS) -> str:
    """The start of a body as one printable line: invalid UTF-8 and control characters escaped."""
    text = body[: chars * 4].decode("utf-8", "backslashreplace")
    return printable(text[:chars]) + ("…" if len(text) > chars or len(body) > chars * 4 else "")


def describe(letter: DeadLetter) -> str:
    """Three lines for ``tracker dead show``: the reason, where it was going, the body's start.

    Everything in them came from the broker, so each line is escaped (``tracker.logs.printable``):
    a message_id or routing key cannot forge a line or send the terminal an escape sequence.
    """
    return shown(
        f"{letter.code}: {letter.reason}",
        f"    routing key {letter.routing_key}, message_id {letter.message_id}, {len(letter.body)} bytes",
        f"    {preview(letter.body)}",
    )


def shown(*lines: str) -> str:
    """``lines`` as the dead-letter commands print them: each escaped, one per line."""
    return "\n".join(map(printable, lines))


def count(settings: Settings, limit: int = 1000) -> DeadLetterCount:
    """Count the messages in ``settings.dead_queue`` and the reasons of at most ``limit`` of them.

    A queue that was never declared counts as empty. Raises DeadLettersUnavailable.
    """
    reasons: collections.Counter[str] = collections.Counter()

    def tally(_channel: BlockingChannel, _tag: int, letter: DeadLetter) -> bool:
        reasons[letter.reason] += 1
        return False  # not acked: it stays

    done = _walk(settings, ReasonFilter(None), limit, tally)
    return DeadLetterCount(done.queue, done.total, done.examined, tuple(reasons.most_common()))


def show(settings: Settings, reason: ReasonFilter, limit: int, on_each: Callable[[DeadLetter], None]) -> Handled:
    """Call ``on_each`` for at most ``limit`` dead letters with ``reason``; all stay queued."""

    def look(_channel: BlockingChannel, _tag: int, letter: DeadLetter) -> bool:
        on_each(letter)
        return False

    return _walk(settings, reason, limit, look)


def replay(
    settings: Settings, reason: ReasonFilter, limit: int | None, on_each: Callable[[DeadLetter], None]
) -> Handled:
    """Re-publish at most ``limit`` dead letters with ``reason`` to the events exchange, each once.

    Each copy is confirmed by the broker before its dead letter is removed; ``on_each`` is called
    after that. Raises DeadLettersUnavailable, having removed only what was confirmed, if the
    broker refuses or cannot route a copy (the events queue is gone).
    """

    def republish(channel: BlockingChannel, tag: int, letter: DeadLetter) -> bool:
        try:
            channel.basic_publish(
                settings.exchange, letter.routing_key, letter.body, letter.replay_properties(), mandatory=True
            )
        except pika.exceptions.UnroutableError:
            raise DeadLettersUnavailable(
                f"exchange {settings.exchange!r} routes {letter.routing_key!r} to no queue; nothing more replayed"
            ) from None
        except pika.exceptions.NackError:
            raise DeadLettersUnavailable("RabbitMQ refused a replayed event; nothing more replayed") from None
        channel.basic_ack(tag)
        on_each(letter)
        return True

    return _walk(settings, reason, limit, republish, declare=True)


def drop(settings: Settings, reason: ReasonFilter, limit: int | None, on_each: Callable[[DeadLetter], None]) -> Handled:
    """Delete at most ``limit`` dead letters with ``reason``; ``on_each`` after each is gone."""

    def delete(channel: BlockingChannel, tag: int, letter: DeadLetter) -> bool:
        channel.basic_ack(tag)
        on_each(letter)
        return True

    return _walk(settings, reason, limit, delete)


# handle(channel, delivery tag, letter) -> True when it acked the message (it is gone).
_Handler = Callable[[BlockingChannel, int, DeadLetter], bool]


def _walk(
    settings: Settings, reason: ReasonFilter, limit: int | None, handle: _Handler, declare: bool = False
) -> Handled:
    """Take the queue's messages one by one, hand those with ``reason`` to ``handle``, give back the rest.

    Stops after ``limit`` handled, or after as many messages as the queue held at the start.
    """
    with broker.dead_letters_channel(settings, "tracker-dead") as channel, exclusive_use(channel, settings, WAIT_S):
        if declare:
            broker.declare_topology(channel, settings)
        try:
            total = broker.count_messages(channel, settings.dead_queue)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if not broker.home_node_down(exc):
                raise
            total = None  # its node is down: nothing to walk through, as when it was never declared
        if total is None:
            return Handled(settings.dead_queue, 0, 0, 0)
        examined = handled = 0
        held: int | None = None  # the newest delivery tag not acked: the rest go back with it
        try:
            while examined < total and (limit is None or handled < limit):
                method, properties, body = channel.basic_get(settings.dead_queue, auto_ack=False)
                if method is None:
                    break
                examined += 1
                letter = DeadLetter.from_message(method.routing_key, properties, body)
                if not reason.matches(letter.reason):
                    held = method.delivery_tag
                    continue
                # Held while it is handled, so that if handling fails it goes back with the rest.
                before, held = held, method.delivery_tag
                if handle(channel, method.delivery_tag, letter):
                    held = before
                handled += 1
        finally:
            if held is not None and channel.is_open:
                # If this fails the connection is going, and closing it hands them back anyway.
                with contextlib.suppress(pika.exceptions.AMQPError):
                    channel.basic_nack(delivery_tag=held, multiple=True, requeue=True)
        return Handled(settings.dead_queue, total, examined, handled)


@contextlib.contextmanager
def exclusive_use(channel: BlockingChannel, settings: Settings, wait_s: float) -> Iterator[None]:
    """Hold ``settings.dead_queue`` for ``channel``'s connection alone among the commands that
    take its messages (``tracker dead …`` and ``tracker migrate``'s move), while the block runs.

    The hold is an exclusive queue, ``<dead queue>.lock``: RabbitMQ gives it to one connection
    at a time, and deletes it with that connection however it ends (a crash, a lost node), so a
    hold is never left behind. Waits up to ``wait_s`` for another holder, then raises
    DeadLettersUnavailable.
    """
    lock = settings.dead_queue + LOCK_SUFFIX
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        holder = channel.connection.channel()
        try:
            holder.queue_declare(lock, exclusive=True)
            break
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 405:  # RESOURCE_LOCKED: another connection holds it
                raise
        if time.monotonic() >= deadline:
            raise DeadLettersUnavailable(
                f"another `tracker dead` or `tracker migrate` is using {settings.dead_queue}; try again once it is done"
            )
        if not waiting:
            log.warning(
                "waiting for another `tracker dead` or `tracker migrate` to be done with %s", lock[: -len(LOCK_SUFFIX)]
            )
            waiting = True
        channel.connection.sleep(0.5)
    try:
        yield
    finally:
        if holder.is_open:
            # If this fails the connection is going, and the broker deletes it with the connection.
            with contextlib.suppress(pika.exceptions.AMQPError):
                holder.queue_delete(lock)
