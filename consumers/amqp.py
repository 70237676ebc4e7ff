"""The pika loop: deliveries gathered into batches, committed, dead-lettered, then acked.

Failure policy:
- bad input (``Outcome.dead``): republished to the dead-letter exchange with ``x-tracker-reason``,
  confirmed, then acked with the rest of its batch;
- database unavailable: nothing acked, the same batch retried with capped back-off while the
  connection keeps its heartbeats;
- broker connection lost: deliveries not yet acked are dropped (the broker redelivers them) and
  the consumer reconnects with capped back-off;
- broker refuses our credentials or topology: fatal, exit status 2;
- SIGTERM/SIGINT: the batch in hand is finished if the database answers, else abandoned
  (unacked, so redelivered); exit status 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from consumers.status import DeadLetter, Delivery, StatusProjector
from tracker import broker
from tracker.config import Settings
from tracker.db import make_engine
from tracker.store import JobStore, StoreUnavailable

log = logging.getLogger(__name__)

_RECONNECTABLE = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
)
_IDLE_WAIT_S = 0.5  # how long an idle loop blocks before looking at the stop flag again


class FatalBrokerError(RuntimeError):
    """The broker will not take us as configured (credentials, permissions, topology)."""


class Consumer:
    """One consumer connection folding ``settings.queue`` into the store."""

    def __init__(self, settings: Settings, projector: StatusProjector,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self._settings = settings
        self._projector = projector
        self._on_batch = on_batch
        self._stop = threading.Event()
        self._pending: list[Delivery] = []
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.dead_lettered = 0
        self.applied = 0

    def stop(self) -> None:
        """Ask the loop to finish its batch and return; safe from signal handlers and threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def run(self) -> None:
        """Consume until stopped; reconnects by itself. Raises FatalBrokerError."""
        backoff = broker.Backoff()
        while not self._stop.is_set():
            try:
                self._connect()
                backoff.reset()
                self._consume()
            except pika.exceptions.ProbableAuthenticationError as exc:
                raise FatalBrokerError(f"RabbitMQ refused the credentials: {exc}") from None
            except pika.exceptions.ProbableAccessDeniedError as exc:
                raise FatalBrokerError(f"RabbitMQ refused access to the virtual host: {exc}") from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (403, 406):
                    raise FatalBrokerError(f"RabbitMQ refused the topology: {exc.reply_text}") from None
                self._lost(exc, backoff)
            except _RECONNECTABLE as exc:
                self._lost(exc, backoff)
            finally:
                self._close()

    def _lost(self, exc: BaseException, backoff: broker.Backoff) -> None:
        delay = backoff.next()
        log.warning("broker connection lost (%s: %s); %d unacked deliveries will be redelivered; "
                    "reconnecting in %.1f s", type(exc).__name__, exc, len(self._pending), delay)
        self._pending.clear()
        self._stop.wait(delay)

    def _connect(self) -> None:
        params = broker.parameters(self._settings.amqp_url, "tracker-consumer")
        self._connection = pika.BlockingConnection(params)
        channel = self._connection.channel()
        broker.declare_topology(channel, self._settings)
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=self._settings.prefetch)
        channel.basic_consume(self._settings.queue, self._on_message)
        self._channel = channel
        log.info("consuming %s (batch %d, flush %d ms, prefetch %d)", self._settings.queue,
                 self._settings.batch_size, self._settings.flush_ms, self._settings.prefetch)

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._pending.clear()
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except _RECONNECTABLE:
                pass

    def _on_message(self, _channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        """Runs inside process_data_events/sleep for each delivery: only buffers it."""
        self._pending.append(Delivery(
            tag=method.delivery_tag,
            body=body,
            content_type=properties.content_type,
            routing_key=method.routing_key,
            headers=properties.headers,
            message_id=properties.message_id,
        ))

    def _consume(self) -> None:
        assert self._connection is not None
        flush_s = self._settings.flush_ms / 1000
        batch_size = self._settings.batch_size
        first_seen = 0.0
        while not self._stop.is_set():
            if not self._pending:
                self._connection.process_data_events(time_limit=_IDLE_WAIT_S)
                first_seen = time.monotonic()
                continue
            wait = first_seen + flush_s - time.monotonic()
            if len(self._pending) < batch_size and wait > 0:
                self._connection.process_data_events(time_limit=wait)
                continue
            started = time.monotonic()
            self._flush(self._pending[:batch_size])
            first_seen = started  # what is left arrived while the batch was being written
        # Stopping: finish what is in hand if the database answers; whatever is left unacked
        # goes back to the queue when the connection closes.
        while self._pending:
            if not self._flush(self._pending[:batch_size]):
                break

    def _flush(self, batch: list[Delivery]) -> bool:
        """Commit, dead-letter and ack one batch; False if abandoned because we are stopping."""
        backoff = broker.Backoff()
        while True:
            try:
                outcome = self._projector.handle(batch)
                break
            except StoreUnavailable as exc:
                if self._stop.is_set():
                    log.warning("database unavailable while stopping; abandoning %d deliveries "
                                "(they will be redelivered)", len(batch))
                    return False
                delay = backoff.next()
                log.warning("database unavailable (%s); retrying %d deliveries in %.1f s",
                            exc, len(batch), delay)
                self._sleep(delay)
        for dead in outcome.dead:
            self._dead_letter(dead)
        assert self._channel is not None
        self._channel.basic_ack(delivery_tag=batch[-1].tag, multiple=True)
        del self._pending[:len(batch)]
        self.applied += outcome.applied
        self.dead_lettered += len(outcome.dead)
        if self._on_batch is not None:
            self._on_batch(outcome.applied, len(outcome.dead))
        return True

    def _sleep(self, seconds: float) -> None:
        """Wait while keeping heartbeats and deliveries flowing; wakes early when stopping."""
        assert self._connection is not None
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self._connection.sleep(min(left, _IDLE_WAIT_S))

    def _dead_letter(self, dead: DeadLetter) -> None:
        """Republish to the dead-letter exchange, confirmed, with the reason in a header."""
        assert self._channel is not None
        delivery = dead.delivery
        headers = dict(delivery.headers or {})
        headers["x-tracker-reason"] = dead.reason
        headers["x-tracker-routing-key"] = delivery.routing_key
        self._channel.basic_publish(
            self._settings.dead_exchange,
            delivery.routing_key,
            delivery.body,
            pika.BasicProperties(
                content_type=delivery.content_type,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=delivery.message_id,
                headers=headers,
            ),
            mandatory=True,
        )
        log.warning("dead-lettered delivery %s (message_id %s): %s",
                    delivery.tag, delivery.message_id, dead.reason)


def consume(settings: Settings) -> int:
    """Run one consumer process until SIGTERM/SIGINT; the exit status (0, or 2 when fatal)."""
    engine = make_engine(settings.database_url)
    consumer = Consumer(settings, StatusProjector(JobStore(engine)))
    consumer.install_signal_handlers()
    try:
        consumer.run()
    except FatalBrokerError as exc:
        log.error("%s", exc)
        return 2
    finally:
        engine.dispose()
    log.info("stopped: %d events applied, %d dead-lettered", consumer.applied, consumer.dead_lettered)
    return 0
