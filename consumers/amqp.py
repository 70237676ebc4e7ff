"""The pika loop: deliveries gathered into batches, committed, dead-lettered, then acked.

The connection's thread receives, dead-letters and acks (pika is not thread-safe); writer
threads commit batches, and the connection's thread acks them in the order they were received.
When a batch goes to a writer, and how many may be written at once, is ``consumers.batching``'s
decision. While the writers wait on the database the next batch is being received, so prefetch
should hold a batch more than the writers do.

Failure policy:
- bad input (``Outcome.dead``): republished to the dead-letter exchange with ``x-tracker-reason``,
  confirmed, then acked with the rest of its batch;
- database unavailable: nothing acked, the same batch retried with capped back-off by the writer
  while the connection keeps its heartbeats;
- broker connection lost: deliveries not yet acked are dropped (the broker redelivers them), a
  batch being written is abandoned after its current attempt, and the consumer reconnects with
  capped back-off;
- broker cancels our subscription (``basic.cancel``, e.g. the queue was deleted): as a lost
  connection, so the topology is declared again and consuming resumes;
- a dead letter the broker does not take (returned as unroutable, or nacked: the dead queue is
  gone, or its node of a cluster is down): as a lost connection, so its batch is not acked and
  comes back, and is dead-lettered once the dead queue takes it again;
- broker refuses our credentials or topology: fatal, exit status 2;
- SIGTERM/SIGINT: the batch in hand is finished if the database answers, else abandoned
  (unacked, so redelivered); exit status 0.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import pathlib
import signal
import threading
import time
from collections.abc import Callable

import pika
import pika.exceptions
import pika.frame
from pika.adapters.blocking_connection import BlockingChannel

from consumers import metrics_server
from consumers.batching import Flush, FlushPolicy
from consumers.reaper import Reaper
from consumers.status import DeadLetter, Delivery, Outcome, StatusProjector
from consumers.telemetry import BatchTelemetry
from tracker import broker
from tracker.backoff import Backoff
from tracker.config import Settings
from tracker.reasons import reason_code
from tracker.store import StoreUnavailable, make_engine, open_job_store

log = logging.getLogger(__name__)

_RECONNECTABLE = broker.CONNECTION_ERRORS
_STOP_CHECK_S = 0.5  # how often a writer waiting to retry looks at the stop and abandon flags
_BEAT_EVERY_S = 5.0  # how often the loop touches settings.health_file
_STEADY_S = 5.0  # a broker connection that lasted this long resets the reconnect back-off


class FatalBrokerError(RuntimeError):
    """The broker will not take us as configured (credentials, permissions, topology)."""


class ConsumerCancelled(RuntimeError):
    """The broker ended our subscription (``basic.cancel``: say, the queue was deleted).

    Handled like a lost connection: reconnect, declare the topology again, consume again.
    """


@dataclasses.dataclass
class _Batch:
    """Deliveries handed to a writer; ``outcome`` resolves to None if the batch was abandoned."""

    deliveries: list[Delivery]
    outcome: concurrent.futures.Future[Outcome | None]
    abandon: threading.Event
    through: int = 0  # Consumer.received when its last delivery arrived


class Consumer:
    """One consumer connection folding ``settings.queue`` into the store.

    ``on_batch(applied, dead_lettered)``, if given, runs on the connection's thread after each
    batch has been dead-lettered and acked. ``telemetry``, if given, is told of each batch.
    """

    def __init__(
        self,
        settings: Settings,
        projector: StatusProjector,
        on_batch: Callable[[int, int], None] | None = None,
        telemetry: BatchTelemetry | None = None,
    ) -> None:
        self._settings = settings
        self._projector = projector
        self._on_batch = on_batch
        self._telemetry = telemetry
        self._policy = FlushPolicy.from_settings(settings)
        self._stop = threading.Event()
        self._pending: list[Delivery] = []  # received, not yet handed to a writer
        self._pending_since = 0.0  # when the oldest of them arrived (monotonic)
        self._writing: collections.deque[_Batch] = collections.deque()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._link = broker.ConfirmingChannel(settings, "tracker-consumer", declare=True)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._beat_at = 0.0
        self._cancelled = False  # set by the broker's basic.cancel
        self.dead_lettered = 0
        self.applied = 0
        # Deliveries received, and those committed or given back to the queue, counted on the
        # connection's thread; the lost-job check (consumers.reaper.Backlog) reads them.
        self.received = 0
        self.settled = 0

    @property
    def subscribed(self) -> bool:
        """Whether the consumer holds a subscription on the broker now (readiness); from any thread."""
        return self._channel is not None

    def stop(self) -> None:
        """Ask the loop to finish its batch and return; safe from signal handlers and threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call ``stop``; from the main thread, before ``run``."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    def run(self) -> None:
        """Consume until stopped; reconnects by itself. Raises FatalBrokerError."""
        backoff = Backoff()
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._policy.writers, thread_name_prefix="tracker-writer"
        )
        try:
            self._run(backoff)
        finally:
            self._writer.shutdown(wait=True)

    def _run(self, backoff: Backoff) -> None:
        while not self._stop.is_set():
            connected_at = None
            try:
                self._connect()
                connected_at = time.monotonic()
                self._consume()
            except pika.exceptions.ProbableAuthenticationError as exc:
                raise FatalBrokerError(f"RabbitMQ refused the credentials: {exc}") from None
            except pika.exceptions.ProbableAccessDeniedError as exc:
                raise FatalBrokerError(f"RabbitMQ refused access to the virtual host: {exc}") from None
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code in (403, 406):
                    raise FatalBrokerError(f"RabbitMQ refused the topology: {exc.reply_text}") from None
                self._lost(exc, backoff, connected_at)
            except _RECONNECTABLE as exc:
                self._lost(exc, backoff, connected_at)
            except ConsumerCancelled as exc:
                self._lost(exc, backoff, connected_at)
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                log.warning("could not dead-letter: %s is not taking messages (%s)", self._settings.dead_queue, exc)
                self._lost(exc, backoff, connected_at)
            finally:
                self._close()

    def _lost(self, exc: BaseException, backoff: Backoff, connected_at: float | None) -> None:
        # Only a connection that held for a while earns a quick reconnect: one that breaks at
        # once, again and again (say, on a message it cannot handle), backs off like a refused one.
        if connected_at is not None and time.monotonic() - connected_at >= _STEADY_S:
            backoff.reset()
        delay = backoff.next()
        unacked = len(self._pending) + sum(len(b.deliveries) for b in self._writing)
        log.warning(
            "broker connection lost (%s: %s); %d unacked deliveries will be redelivered; reconnecting in %.1f s",
            type(exc).__name__,
            exc,
            unacked,
            delay,
        )
        self._pending.clear()
        self._stop.wait(delay)

    def _connect(self) -> None:
        channel = self._link.open()
        self._connection = channel.connection
        channel.basic_qos(prefetch_count=self._settings.prefetch)
        self._cancelled = False
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_consume(self._settings.queue, self._on_message)
        self._channel = channel
        log.info(
            "consuming %s at %s (batch %d, flush %d ms, prefetch %d)",
            self._settings.queue,
            self._link.node,
            self._settings.batch_size,
            self._settings.flush_ms,
            self._settings.prefetch,
        )

    def _close(self) -> None:
        self._abandon_writing()
        self._connection, self._channel = None, None
        self._pending.clear()
        self.settled = self.received  # what was in hand goes back to the queue
        self._link.close()

    def _on_message(
        self, _channel: BlockingChannel, method: pika.spec.Basic.Deliver, properties: pika.BasicProperties, body: bytes
    ) -> None:
        """Runs inside process_data_events for each delivery: only buffers it."""
        self.received += 1
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(
            Delivery(
                tag=method.delivery_tag,
                body=body,
                content_type=properties.content_type,
                routing_key=method.routing_key,
                headers=properties.headers,
                message_id=properties.message_id,
            )
        )

    def _on_cancelled(self, _method: pika.frame.Method) -> None:
        """Runs inside process_data_events when the broker cancels our subscription."""
        self._cancelled = True

    def _consume(self) -> None:
        assert self._connection is not None
        while not self._stop.is_set():
            if self._cancelled:
                # Without a subscription nothing more would arrive, ever: start over. What is
                # being written is abandoned unacked (redelivered if the queue still holds it).
                raise ConsumerCancelled(f"RabbitMQ cancelled the subscription to {self._settings.queue}")
            self._beat()
            while self._writing and self._writing[0].outcome.done():
                self._finish(self._writing[0])
            # A Wait ends early when a delivery arrives or a writer finishes (see _start_writing).
            step = self._policy.decide(len(self._pending), len(self._writing), time.monotonic() - self._pending_since)
            if isinstance(step, Flush):
                self._start_writing(step.count)
                continue
            self._connection.process_data_events(time_limit=step.seconds)
        # Stopping: finish what is in hand if the database answers; whatever is left unacked
        # goes back to the queue when the connection closes.
        while self._writing:
            if not self._finish(self._writing[0], block=True):
                return
        while self._pending:
            self._start_writing(self._policy.batch_size)
            if not self._finish(self._writing[0], block=True):
                return

    def _beat(self) -> None:
        """Touch the health file, every few seconds at most: the loop is turning (container checks)."""
        now = time.monotonic()
        if self._settings.health_file is None or now - self._beat_at < _BEAT_EVERY_S:
            return
        self._beat_at = now
        pathlib.Path(self._settings.health_file).touch()

    def _start_writing(self, count: int) -> None:
        """Hand the ``count`` oldest pending deliveries to a writer."""
        assert self._writer is not None and self._connection is not None
        deliveries = self._pending[:count]
        del self._pending[:count]
        # What is left arrived while this batch was gathered: count its wait from now.
        self._pending_since = time.monotonic()
        abandon = threading.Event()
        batch = _Batch(
            deliveries,
            self._writer.submit(self._write, deliveries, abandon),
            abandon,
            through=self.received - len(self._pending),
        )
        connection = self._connection
        batch.outcome.add_done_callback(lambda _done: _wake(connection))
        self._writing.append(batch)

    def _finish(self, batch: _Batch, block: bool = False) -> bool:
        """Dead-letter and ack a written batch; False if the writer abandoned it.

        Re-raises what the writer raised other than StoreUnavailable: that is a bug.
        """
        outcome = batch.outcome.result() if block else batch.outcome.result(timeout=0)
        self._writing.popleft()
        self.settled = batch.through
        if outcome is None:
            return False
        for dead in outcome.dead:
            self._dead_letter(dead)
        assert self._channel is not None
        self._channel.basic_ack(delivery_tag=batch.deliveries[-1].tag, multiple=True)
        self.applied += outcome.applied
        self.dead_lettered += len(outcome.dead)
        if self._telemetry is not None:
            self._telemetry.acked(outcome)
        if self._on_batch is not None:
            self._on_batch(outcome.applied, len(outcome.dead))
        return True

    def _abandon_writing(self) -> None:
        """Drop the batches being written (their deliveries will be redelivered) once their attempts end."""
        batches = list(self._writing)
        self._writing.clear()
        for batch in batches:
            batch.abandon.set()
        concurrent.futures.wait([batch.outcome for batch in batches])

    def _write(self, deliveries: list[Delivery], abandon: threading.Event) -> Outcome | None:
        """Runs on a writer thread: commit one batch, retrying while the database is away.

        None if the batch was abandoned instead: we are stopping, or its deliveries were lost
        with the broker connection.
        """
        backoff = Backoff()
        started = time.monotonic()
        while True:
            try:
                outcome = self._projector.handle(deliveries)
                if self._telemetry is not None:
                    self._telemetry.written(outcome, len(deliveries), time.monotonic() - started)
                return outcome
            except StoreUnavailable as exc:
                if self._stop.is_set() or abandon.is_set():
                    why = "while stopping" if self._stop.is_set() else "and the broker connection is gone"
                    log.warning(
                        "database unavailable %s; abandoning %d deliveries (they will be redelivered)",
                        why,
                        len(deliveries),
                    )
                    return None
                delay = backoff.next()
                log.warning("database unavailable (%s); retrying %d deliveries in %.1f s", exc, len(deliveries), delay)
                deadline = time.monotonic() + delay
                while not (self._stop.is_set() or abandon.is_set()) and (left := deadline - time.monotonic()) > 0:
                    abandon.wait(min(left, _STOP_CHECK_S))

    def _dead_letter(self, dead: DeadLetter) -> None:
        """Republish to the dead-letter exchange, confirmed, with the reason in a header."""
        assert self._channel is not None
        delivery = dead.delivery
        headers = broker.dead_letter_headers(delivery.headers, delivery.routing_key, dead.reason)
        self._channel.basic_publish(
            self._settings.dead_exchange,
            delivery.routing_key,
            delivery.body,
            broker.message_properties(delivery.message_id, delivery.content_type, headers),
            mandatory=True,
        )
        reason = headers[broker.REASON_HEADER]
        log.warning(
            "dead-lettered delivery %s (message_id %s): %s",
            delivery.tag,
            delivery.message_id,
            reason,
            extra={"event_id": delivery.message_id, "reason_code": reason_code(str(reason))},
        )


def _wake(connection: pika.BlockingConnection) -> None:
    """Runs on a writer thread when a batch is done: wake the connection's thread to ack it."""
    # Closed meanwhile: the batch is being abandoned, and there is nobody to wake.
    with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
        connection.add_callback_threadsafe(_nothing)


def _nothing() -> None:
    """A callback whose only effect is to end the connection thread's wait."""


def consume(settings: Settings) -> int:
    """Run one consumer process until SIGTERM/SIGINT; the exit status (0, or 2 when fatal)."""
    # No ping before each batch: a batch that finds its connection dead fails as StoreUnavailable,
    # the pool drops every connection of that age, and the retry connects afresh. A ping would be
    # one more round trip in every event's latency.
    engine = make_engine(settings.database_url, pool_pre_ping=False)
    telemetry = BatchTelemetry() if settings.metrics and settings.metrics_bind else None
    consumer = Consumer(settings, StatusProjector(open_job_store(engine)), telemetry=telemetry)
    consumer.install_signal_handlers()
    # Every consumer checks for lost jobs (one at a time across them all): nothing else to run.
    reaper = Reaper(settings, backlog=consumer)
    endpoints = metrics_server.start(settings, consumer)
    # Start-up's objects live as long as the process: out of every later collection's sight (docs/performance.md).
    gc.freeze()
    reaper.start()
    try:
        consumer.run()
    except FatalBrokerError as exc:
        log.error("%s", exc)
        return 2
    finally:
        reaper.stop()
        engine.dispose()
        if endpoints is not None:
            endpoints.stop()
    log.info("stopped: %d events applied, %d dead-lettered", consumer.applied, consumer.dead_lettered)
    return 0
