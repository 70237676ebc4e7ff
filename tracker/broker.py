"""RabbitMQ, written once for every process: connecting, the channel, topology, counts, messages.

- Connecting: TRACKER_AMQP_URL may list the nodes of a cluster (SPEC §10). Every connection is
  made by a ``Connector``: it tries the nodes one after another until one takes the connection,
  in an order shuffled once per connector (so that consumers spread over the nodes), and the
  next time it starts with the node after the one it was last connected to (the one most likely
  gone). ``ConfirmingChannel`` keeps a confirming channel on such a connection, and opens it
  again once lost: the publisher, the lost-job check, the gauges, the dead-letter commands and
  the consumer all use one. ``CONNECTION_ERRORS`` are what says it is lost.
- Topology and counts: ``declare_topology`` (the control exchange of SPEC §12 among it; an
  older, classic dead queue kept until ``tracker
  migrate`` moves it: ``still_classic``), and ``count_messages``, the one passive declare.
- Messages: ``message_properties`` of everything the tracker publishes (SPEC §3), and the
  headers a dead letter carries (``REASON_HEADER`` …), written and read here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker import cancels, events
from tracker.backoff import Backoff
from tracker.config import Settings, split_amqp_urls
from tracker.errors import BrokerUnreachable, DeadLettersUnavailable

log = logging.getLogger(__name__)

# The connection (or the channel) is gone: connect again. Not the broker's refusals of a channel
# operation (pika's AMQPChannelError), which each caller judges for itself.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    pika.exceptions.AMQPConnectionError,  # StreamLostError, ConnectionClosed … among them
    pika.exceptions.ChannelWrongStateError,
    BrokerUnreachable,
)
# Anything the broker, or pika on its behalf, raises: "the broker is unavailable" to a caller
# that does not tell the cases apart.
ERRORS: tuple[type[Exception], ...] = (pika.exceptions.AMQPError, BrokerUnreachable)

ROUTING_PREFIX = "job."

# The headers of a dead letter: ours (the consumer writes them, ``tracker dead`` reads them) …
REASON_HEADER = "x-tracker-reason"
ROUTING_KEY_HEADER = "x-tracker-routing-key"
HEADERS_DROPPED_HEADER = "x-tracker-headers-dropped"
_OWN_HEADER_PREFIX = "x-tracker-"
# … and RabbitMQ's: on a message it dead-lettered itself (rejected, expired, over a limit), and
# on every delivery from a quorum queue (its count of that message's deliveries there).
FIRST_DEATH_REASON_HEADER = "x-first-death-reason"
DELIVERY_COUNT_HEADER = "x-delivery-count"
DEATH_HEADERS = frozenset(
    f"x-{which}-death-{what}" for which in ("first", "last") for what in ("exchange", "queue", "reason")
) | {"x-death", DELIVERY_COUNT_HEADER}
MAX_REASON_CHARS = 1000
MAX_KEPT_HEADER_BYTES = 16 * 1024  # far below any broker frame size, whatever we add


def parameters(url: str, name: str) -> pika.URLParameters:
    """Connection parameters for one broker ``url`` with heartbeats on and short connect timeouts.

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


def address(url: str) -> str:
    """``host:port`` of one broker URL, for logs and errors (never its credentials)."""
    parts = urllib.parse.urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    return f"{parts.hostname}:{parts.port or default}"


class Rotation:
    """Which node to try first, second …: the connector's policy, apart from its I/O.

    The nodes are shuffled once; attempts go round that ring, starting just after the node last
    connected to. A node that drops its connections is so tried last, and two processes started
    together most often begin on different nodes.
    """

    def __init__(self, count: int, rng: random.Random | None = None) -> None:
        if count < 1:
            raise ValueError("at least one broker address is needed")
        self._ring = list(range(count))
        (rng or random.Random()).shuffle(self._ring)
        self._start = 0

    def order(self) -> list[int]:
        """The nodes' indexes in the order the next connect tries them: each once."""
        return self._ring[self._start :] + self._ring[: self._start]

    def connected(self, index: int) -> None:
        """Say that node ``index`` took the connection: the next connect starts after it."""
        self._start = (self._ring.index(index) + 1) % len(self._ring)


class Connector:
    """Opens connections to the broker (one node of several) for one named client.

    Not thread-safe: each thread that connects keeps a connector of its own, as it keeps its
    own connection.

    pika's BlockingConnection takes a sequence of parameters too, but tries them in the same
    order every time, reports only the last failure, and does not say which one it reached;
    this says all three.
    """

    def __init__(self, amqp_url: str, name: str, rng: random.Random | None = None) -> None:
        self._urls = split_amqp_urls(amqp_url)
        self._name = name
        self._rotation = Rotation(len(self._urls), rng)
        self.node = ""  # host:port of the node last connected to

    @property
    def nodes(self) -> str:
        """Every node's ``host:port``, comma-separated, for messages."""
        return ", ".join(address(url) for url in self._urls)

    def connect(self) -> pika.BlockingConnection:
        """A connection to the first node that takes one.

        Raises the broker's refusal of the credentials or of the virtual host at once (a
        cluster's nodes share their users, so the others would say the same), and
        BrokerUnreachable when no node answered.
        """
        failures = []
        for index in self._rotation.order():
            url = self._urls[index]
            try:
                connection = pika.BlockingConnection(parameters(url, self._name))
            except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ProbableAccessDeniedError):
                raise
            except pika.exceptions.AMQPConnectionError as exc:
                # pika's text is empty; what the socket or the handshake said is its argument.
                why = f"{exc.args[0]!r}" if exc.args else type(exc).__name__
                failures.append(f"{address(url)} ({why})")
                continue
            self._rotation.connected(index)
            self.node = address(url)
            return connection
        raise BrokerUnreachable(f"no node answered: {'; '.join(failures)}")


def connect(amqp_url: str, name: str) -> pika.BlockingConnection:
    """A connection to one node of ``amqp_url`` that answers (a one-off ``Connector``)."""
    return Connector(amqp_url, name).connect()


@dataclasses.dataclass
class ReconnectDelay:
    """How long to wait before connecting again after a connection was lost: the one Backoff.

    Only a connection that held for ``steady_s`` earns a quick reconnect: one that breaks at
    once, again and again (say, on a message it cannot handle), backs off like a refused one.
    """

    steady_s: float = 5.0
    backoff: Backoff = dataclasses.field(default_factory=Backoff)

    def after(self, held_s: float | None) -> float:
        """The seconds to wait after a connection that held ``held_s`` (None: none was made)."""
        if held_s is not None and held_s >= self.steady_s:
            self.backoff.reset()
        return self.backoff.next()


class ConfirmingChannel:
    """A channel in confirm mode on a connection of its own (named ``name`` on the broker),
    opened when first asked for and again once it is lost; with ``declare``, every new channel
    declares the topology first.

    Not thread-safe (pika's connections are not): one per thread, or under its user's lock.
    """

    def __init__(self, settings: Settings, name: str, *, declare: bool = False) -> None:
        self._settings = settings
        self._declare = declare
        self._connector = Connector(settings.amqp_url, name)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @property
    def node(self) -> str:
        """``host:port`` of the node last connected to."""
        return self._connector.node

    @property
    def nodes(self) -> str:
        """Every node's ``host:port``, comma-separated, for messages."""
        return self._connector.nodes

    def open(self) -> BlockingChannel:
        """The open channel: a new one if there is none (on a new connection if that is gone too).

        Raises what ``Connector.connect`` and ``declare_topology`` raise, and CONNECTION_ERRORS.
        """
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            self.close()
            self._connection = self._connector.connect()
        channel = self._connection.channel()
        if self._declare:
            declare_topology(channel, self._settings)
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def close(self) -> None:
        """Close the connection, if any, quietly: the next ``open`` connects again."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*ERRORS):
                connection.close()


def routing_key(event_type: str) -> str:
    return ROUTING_PREFIX + event_type


# The dead queue is a quorum queue (SPEC §3, §14): a dead letter survives the loss of a node.
DEAD_QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "quorum"}


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Declare exchange, events queue, dead-letter exchange and dead queue, and the control
    exchange (SPEC §12); idempotent.

    Both queues are quorum queues (SPEC §3). A dead queue that an older tracker declared as a
    classic queue cannot be declared again as a quorum one (RabbitMQ refuses: 406, and cannot
    change a queue's type): it is kept as it is, with a warning that says to run
    ``tracker migrate``, and dead letters go on to it as before. While such a classic queue's
    node is down (it lives on one node of a cluster) RabbitMQ refuses to declare it (404); that
    is passed over with a warning too, so that a consumer can still move to another node and go
    on; dead letters are refused meanwhile, and the consumer does not ack what it could not
    dead-letter.

    Raises pika.exceptions.ChannelClosedByBroker (406) when any other part exists with other
    arguments.
    """
    channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(settings.dead_exchange, exchange_type="fanout", durable=True)
    declare_control_exchange(channel, settings)
    _declare_dead_queue(channel.connection, settings)
    channel.queue_declare(
        settings.queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": settings.dead_exchange},
    )
    channel.queue_bind(settings.queue, settings.exchange, routing_key=ROUTING_PREFIX + "#")


def declare_control_exchange(channel: BlockingChannel, settings: Settings) -> None:
    """Declare the control exchange (durable, topic) that cancel messages go to; idempotent.

    The consumer declares it with the rest; the API, before it first tells workers, and the
    worker library, before it binds, declare it too: none of them needs another to have started.
    """
    channel.exchange_declare(settings.control_exchange, exchange_type="topic", durable=True)


def publish_control(channel: BlockingChannel, settings: Settings, notice: cancels.CancelNotice) -> None:
    """Tell the workers of ``notice``'s job that its cancellation was asked (SPEC §12).

    Not ``mandatory``: no worker listening is no error (the message is simply dropped). Raises
    CONNECTION_ERRORS and pika's channel errors.
    """
    channel.basic_publish(
        settings.control_exchange,
        notice.routing_key,
        notice.body(),
        message_properties(None, headers=None),
    )


class ControlPublisher:
    """Tells workers of cancellations (``publish_control``) from any thread: one confirming
    channel of its own, under a lock, opened when first needed and declaring the control
    exchange on each new channel. What it cannot send is logged, not raised: the consumers
    repeat every cancel message while its job stays PENDING (SPEC §12)."""

    def __init__(self, settings: Settings, name: str = "tracker-control") -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._link = ConfirmingChannel(settings, name)
        self._declared: BlockingChannel | None = None

    def tell(self, notices: Sequence[cancels.CancelNotice]) -> bool:
        """Publish a cancel message for each of ``notices``; whether all went (a second
        connection is tried once if the kept one has gone)."""
        if not notices:
            return True
        with self._lock:
            for attempt in (1, 2):
                try:
                    channel = self._link.open()
                    if self._declared is not channel:
                        declare_control_exchange(channel, self._settings)
                        self._declared = channel
                    for notice in notices:
                        publish_control(channel, self._settings, notice)
                    return True
                except ERRORS as exc:
                    self._link.close()
                    if attempt == 2:
                        log.warning(
                            "cancel messages of %d jobs not sent (%s: %s); the consumers repeat them",
                            len(notices),
                            type(exc).__name__,
                            exc,
                        )
        return False

    def close(self) -> None:
        with self._lock:
            self._link.close()


def _declare_dead_queue(connection: pika.BlockingConnection, settings: Settings) -> None:
    """Declare and bind the dead queue on a channel of its own, which a refusal may close.

    A classic dead queue is left unbound as it is: ``tracker migrate`` unbinds it on purpose
    while it moves its messages (tracker.cli.dead_queue_move), and an older tracker bound it.
    """
    channel = connection.channel()
    try:
        channel.queue_declare(settings.dead_queue, durable=True, arguments=DEAD_QUEUE_ARGUMENTS)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if still_classic(exc):
            log.warning(
                "the dead-letter queue %s is a classic queue, as an older tracker declared it: dead letters "
                "go on to it, but they would not survive the loss of its node; run `tracker migrate` to "
                "move them into a quorum queue",
                settings.dead_queue,
            )
        elif home_node_down(exc):
            log.warning(
                "the dead-letter queue %s is unavailable (%s); going on without it until its node is back",
                settings.dead_queue,
                exc.reply_text,
            )
        else:
            raise
        return
    channel.queue_bind(settings.dead_queue, settings.dead_exchange)
    channel.close()


def still_classic(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    """Whether the broker refused a quorum queue's declaration because a classic queue of that
    name exists (406 on ``x-queue-type``: none, or ``classic``, where ``quorum`` was asked)."""
    text = str(exc.reply_text)
    current = text.rpartition("but current is ")[2]
    return bool(
        exc.reply_code == 406
        and "'x-queue-type'" in text
        and (current == "none" or current.startswith("the value 'classic'"))
    )


def home_node_down(exc: pika.exceptions.ChannelClosedByBroker) -> bool:
    """Whether the broker refused a classic queue because the node it lives on is down (a 404,
    as for a queue never declared, which it is not). Only an older, classic dead queue has a
    home node: a quorum queue has members."""
    return bool(exc.reply_code == 404 and "home node" in str(exc.reply_text))


def count_messages(channel: BlockingChannel, queue: str) -> int | None:
    """Messages ready in ``queue``, read by a passive declare (nothing is taken); None when the
    queue was never declared, and the broker has then closed ``channel``.

    Raises pika.exceptions.ChannelClosedByBroker when the broker refuses otherwise (among them
    the 404 of a queue whose node is down: ``home_node_down``), and CONNECTION_ERRORS.
    """
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404 and not home_node_down(exc):
            return None
        raise


@contextlib.contextmanager
def dead_letters_channel(settings: Settings, name: str) -> Iterator[BlockingChannel]:
    """A confirming channel on a connection of its own (named ``name``), closed after, to look at
    or handle the dead letters; every broker error, on connecting or after, as DeadLettersUnavailable.
    """
    link = ConfirmingChannel(settings, name)
    try:
        channel = link.open()
    except BrokerUnreachable as exc:
        raise DeadLettersUnavailable(f"cannot reach RabbitMQ: {exc}") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(
            f"cannot reach RabbitMQ at {link.nodes}: {type(exc).__name__} {exc}".strip()
        ) from None
    try:
        yield channel
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise DeadLettersUnavailable(f"RabbitMQ refused: {exc.reply_text}") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(f"lost RabbitMQ: {type(exc).__name__} {exc}".strip()) from None
    finally:
        link.close()


def dead_letter_count(settings: Settings) -> int:
    """How many messages ``settings.dead_queue`` holds, read without touching them.

    A queue never declared holds none. Opens a connection of its own (to any node that answers)
    and closes it. Raises DeadLettersUnavailable when RabbitMQ cannot be reached or refuses, or
    when the queue's node is away.
    """
    with dead_letters_channel(settings, "tracker-dead-count") as channel:
        return count_messages(channel, settings.dead_queue) or 0


def message_properties(
    message_id: str | None, content_type: str | None = events.CONTENT_TYPE, headers: Mapping[str, Any] | None = None
) -> pika.BasicProperties:
    """The properties of every message the tracker publishes, events and dead letters (SPEC §3):
    persistent, with ``message_id`` (an event's ``event_id``), ``content_type`` and ``headers``."""
    return pika.BasicProperties(
        content_type=content_type,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        headers=headers,
    )


def event_message(event: events.Event) -> tuple[bytes, pika.BasicProperties]:
    """The body and properties ``event`` is published with (SPEC §3)."""
    return orjson.dumps(event.to_wire()), message_properties(event.event_id)


def dead_letter_headers(original: Mapping[str, Any] | None, routing_key: str, reason: str) -> dict[str, Any]:
    """A dead letter's headers: the delivery's own, unless they are big, plus the reason and its
    routing key (``REASON_HEADER``, ``ROUTING_KEY_HEADER``).

    A dead letter must always fit in one frame: if it did not, the broker would close the
    connection, the message would come back, and the consumer would stall on it for ever. So the
    reason (which may quote the input) is cut short, and large original headers are left out
    (``HEADERS_DROPPED_HEADER`` says so).
    """
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    headers: dict[str, Any] = {}
    if original:
        size = _encoded_size(original)
        if size is not None and size <= MAX_KEPT_HEADER_BYTES:
            headers.update(original)
        else:
            headers[HEADERS_DROPPED_HEADER] = f"{size} bytes" if size is not None else "not encodable"
    headers[REASON_HEADER] = reason
    headers[ROUTING_KEY_HEADER] = routing_key
    return headers


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any] | None:
    """A dead letter's own headers, less those that say why and how it died (ours and
    RabbitMQ's) and the dead queue's count of its deliveries: what it is published again with.
    None when none is left."""
    kept = {
        name: value
        for name, value in headers.items()
        if not name.startswith(_OWN_HEADER_PREFIX) and name not in DEATH_HEADERS
    }
    return kept or None


def _encoded_size(headers: Mapping[str, Any]) -> int | None:
    """Bytes the headers take on the wire, or None when pika cannot encode them back."""
    try:
        return len(b"".join(pika.BasicProperties(headers=dict(headers)).encode()))
    except (pika.exceptions.AMQPError, TypeError, ValueError, OverflowError):
        return None
