"""The RabbitMQ side every process agrees on: which node to connect to, topology, back-off.

TRACKER_AMQP_URL may list the nodes of a cluster (SPEC §10). Every connection of every process
is made by a ``Connector``: it tries the nodes one after another until one takes the connection,
in an order shuffled once per connector (so that consumers spread over the nodes), and the next
time it starts with the node after the one it was last connected to (the one most likely gone).
"""

from __future__ import annotations

import contextlib
import logging
import random
import urllib.parse

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker.config import Settings, split_amqp_urls
from tracker.errors import DeadLettersUnavailable

log = logging.getLogger(__name__)

ROUTING_PREFIX = "job."


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


class BrokerUnreachable(pika.exceptions.AMQPConnectionError):  # type: ignore[misc]  # pika is untyped
    """No node of TRACKER_AMQP_URL took a connection; the text says what each one answered.

    An AMQPConnectionError, so that whoever retried a lost single node retries this the same way.
    """


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


def routing_key(event_type: str) -> str:
    return ROUTING_PREFIX + event_type


def declare_topology(channel: BlockingChannel, settings: Settings) -> None:
    """Declare exchange, quorum queue, dead-letter exchange and dead queue; idempotent.

    The dead queue is a classic queue (SPEC §3), which lives on one node of a cluster: while
    that node is down RabbitMQ refuses to declare it (404), although it exists. That is logged
    and passed over, so that a consumer can still move to another node and go on; dead letters
    are refused meanwhile (returned as unroutable), and the consumer does not ack what it could
    not dead-letter.

    Raises pika.exceptions.ChannelClosedByBroker (406) when one exists with other arguments.
    """
    channel.exchange_declare(settings.exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(settings.dead_exchange, exchange_type="fanout", durable=True)
    _declare_dead_queue(channel.connection, settings)
    channel.queue_declare(
        settings.queue,
        durable=True,
        arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": settings.dead_exchange},
    )
    channel.queue_bind(settings.queue, settings.exchange, routing_key=ROUTING_PREFIX + "#")


def _declare_dead_queue(connection: pika.BlockingConnection, settings: Settings) -> None:
    """Declare and bind the dead queue on a channel of its own, which a 404 may close."""
    channel = connection.channel()
    try:
        channel.queue_declare(settings.dead_queue, durable=True)
        channel.queue_bind(settings.dead_queue, settings.dead_exchange)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404 or "home node" not in str(exc.reply_text):
            raise
        log.warning(
            "the dead-letter queue %s is unavailable (%s); going on without it until its node is back",
            settings.dead_queue,
            exc.reply_text,
        )
        return
    channel.close()


def dead_letter_count(settings: Settings) -> int:
    """How many messages ``settings.dead_queue`` holds, read without touching them (a passive declare).

    A queue never declared holds none. Opens a connection of its own (to any node that answers)
    and closes it. Raises DeadLettersUnavailable when RabbitMQ cannot be reached or refuses, or
    when the queue's node is away.
    """
    connector = Connector(settings.amqp_url, "tracker-dead-count")
    try:
        connection = connector.connect()
    except pika.exceptions.AMQPError:
        raise DeadLettersUnavailable(f"cannot reach RabbitMQ at {connector.nodes}") from None
    try:
        return int(connection.channel().queue_declare(settings.dead_queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404 and "home node" not in str(exc.reply_text):  # never declared: empty
            return 0
        raise DeadLettersUnavailable(f"RabbitMQ refused: {exc.reply_text}") from None
    except pika.exceptions.AMQPError as exc:
        raise DeadLettersUnavailable(f"lost RabbitMQ: {type(exc).__name__}") from None
    finally:
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
