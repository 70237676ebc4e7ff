"""Looking into RabbitMQ: a queue's ready messages (any node), the unacked ones (the local node).

Nothing here stops, restarts or changes a node: the tests that do so start nodes of their own
(tests/cluster.py), and the local node serves other test runs meanwhile.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pika
import pika.exceptions

from tracker.config import split_amqp_urls

_CTL_TIMEOUT_S = 120


def _ctl(*args: str) -> str:
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=_CTL_TIMEOUT_S)
    except FileNotFoundError:
        raise RuntimeError("rabbitmqctl is not on PATH: the fault tests need it, next to the broker") from None
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _ctl_json(*args: str) -> list[dict[str, object]]:
    return json.loads(_ctl(*args, "-q", "--formatter", "json") or "[]")


def _connect(url: str, timeout: float = 5.0) -> pika.BlockingConnection:
    """A connection to the first of ``url``'s addresses (one, or a cluster's list) that answers."""
    failure: pika.exceptions.AMQPConnectionError | None = None
    for one in split_amqp_urls(url):
        params = pika.URLParameters(one)
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.connection_attempts = 1
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError as exc:
            failure = exc
    assert failure is not None
    raise failure


def ready_count(url: str, queue: str) -> int:
    """Messages ready for delivery in ``queue`` (unacked ones are not counted)."""
    connection = _connect(url)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def unacked_count(queue: str, ctl_json: Callable[..., list[dict[str, object]]] = _ctl_json) -> int:
    """Messages delivered from ``queue`` to its consumers and not yet acked, counted right now.

    Asked of the consumers' channels: a quorum queue's own ``messages`` figure is a metric
    refreshed every few seconds, and lags far behind under load. ``ctl_json`` runs rabbitmqctl
    and reads its JSON: of the local node by default, or of a node of the tests' own.
    """
    channels = {
        entry["channel_pid"]
        for entry in ctl_json("list_consumers", "queue_name", "channel_pid")
        if entry["queue_name"] == queue
    }
    if not channels:
        return 0
    return sum(
        int(str(entry["messages_unacknowledged"]))
        for entry in ctl_json("list_channels", "pid", "messages_unacknowledged")
        if entry["pid"] in channels
    )


def answering(url: str) -> bool:
    """Whether the broker takes a connection and opens a channel right now."""
    try:
        connection = _connect(url, timeout=3)
    except pika.exceptions.AMQPError:
        return False
    try:
        connection.channel()
        return True
    except pika.exceptions.AMQPError:
        return False
    finally:
        if connection.is_open:
            connection.close()
