"""The workers' client: confirmed, persistent, mandatory publishing of job events.

    from tracker.publisher import Publisher

    with Publisher.from_env() as publisher, publisher.job(job_id) as job:
        job.progress("copying files")
        do_the_work()
    # -> "succeeded" on normal exit; "failed" with the exception's text if it raised

``publish`` returns only once the broker has confirmed the event; it reconnects and resends by
itself (the same event_id, so a resend is harmless) until ``timeout_s`` runs out, then raises
PublishFailed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
import types

import orjson
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from tracker import broker, events
from tracker.config import Settings
from tracker.errors import PublishFailed

log = logging.getLogger(__name__)

_RETRYABLE = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.NackError,
    pika.exceptions.UnroutableError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
)


class Publisher:
    """A connection that publishes events; one per thread (pika connections are not thread-safe)."""

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0, declare: bool = True) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        self._declare = declare
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._seq: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, *, timeout_s: float = 30.0, declare: bool = True) -> Publisher:
        """A publisher configured by the environment's TRACKER_* variables; raises ConfigError."""
        return cls(Settings.from_env(os.environ), timeout_s=timeout_s, declare=declare)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(*_RETRYABLE):
                connection.close()

    def emit(self, job_id: int, type: str, message: str | None = None) -> events.Event:
        """Publish a new event for ``job_id`` now, with this client's next seq for the job."""
        with self._lock:
            seq = self._seq[job_id]
            if type in events.TERMINAL_TYPES:
                # A finished job needs no more numbers: forget it, so that a long-lived worker's
                # memory does not grow with every job it ever reported on.
                del self._seq[job_id]
            else:
                self._seq[job_id] += 1
        event = events.new_event(job_id, type, message, seq=seq)
        self.publish(event)
        return event

    def publish(self, event: events.Event) -> None:
        """Send ``event`` and wait for the broker's confirm; raises PublishFailed."""
        body = orjson.dumps(event.to_wire())
        properties = pika.BasicProperties(
            content_type=events.CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event.event_id,
        )
        deadline = time.monotonic() + self._timeout_s
        backoff = broker.Backoff(cap=5.0)
        while True:
            try:
                channel = self._ensure_channel()
                channel.basic_publish(
                    self._settings.exchange, broker.routing_key(event.type), body, properties, mandatory=True
                )
                return
            except _RETRYABLE as exc:
                self.close()
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise PublishFailed(f"event {event.event_id} not confirmed: {type(exc).__name__}") from exc
                log.warning("publish of %s failed (%s); retrying in %.1f s", event.event_id, type(exc).__name__, delay)
                time.sleep(delay)

    def job(self, job_id: int) -> JobReport:
        """A context manager reporting on one job: succeeded on exit, failed on an exception."""
        return JobReport(self, job_id)

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            params = broker.parameters(self._settings.amqp_url, "tracker-publisher")
            self._connection = pika.BlockingConnection(params)
            channel = self._connection.channel()
            if self._declare:
                broker.declare_topology(channel, self._settings)
            channel.confirm_delivery()
            self._channel = channel
        return self._channel


class JobReport:
    """Reports on one job; see ``Publisher.job``."""

    def __init__(self, publisher: Publisher, job_id: int) -> None:
        self._publisher = publisher
        self.job_id = job_id
        self.final_message: str | None = None

    def progress(self, message: str | None = None) -> events.Event:
        return self._publisher.emit(self.job_id, "progress", message)

    def __enter__(self) -> JobReport:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: types.TracebackType | None
    ) -> None:
        if exc is None:
            self._publisher.emit(self.job_id, "succeeded", self.final_message)
        else:
            self._publisher.emit(self.job_id, "failed", _failure_text(exc))


def _failure_text(exc: BaseException) -> str:
    """The exception's text as a valid event message: no NUL, no lone surrogates, not too long."""
    text = str(exc) or type(exc).__name__
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[: events.MAX_MESSAGE_CHARS]
