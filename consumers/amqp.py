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

The parts: ``Consumer`` is the loop, in the shape of kombu's ConsumerMixin (a short ``run`` and
a hook for each step); ``consumers.writers.Writers`` commits batches on threads of their own,
and ``consumers.batching`` says when to hand one over; ``dead_letter`` republishes bad input;
``refusal`` tells a fatal refusal from a loss; ``HealthFile`` and ``stop_on_signals`` tie the
process to whatever runs it. ``tracker.broker`` connects, declares and opens the channel.
"""

from __future__ import annotations

import contextlib
import functools
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
from consumers.status import DeadLetter, Delivery, StatusProjector
from consumers.telemetry import BatchTelemetry
from consumers.webhooks import Deliverer
from consumers.writers import DATABASE_BROKEN, Batch, Projector, Writers
from tracker import broker, metrics
from tracker.config import Settings
from tracker.outages import OutageLog
from tracker.readiness import NotReady
from tracker.reasons import reason_code
from tracker.store import make_engine, open_job_store, schema_problem

log = logging.getLogger(__name__)

_BEAT_EVERY_S = 5.0  # how often the loop touches settings.health_file


class FatalBrokerError(RuntimeError):
    """The broker will not take us as configured (credentials, permissions, topology)."""


class ConsumerCancelled(RuntimeError):
    """The broker ended our subscription (``basic.cancel``: say, the queue was deleted).

    Handled like a lost connection: reconnect, declare the topology again, consume again.
    """


# What ends a session with the broker: the connection or the subscription lost, a dead letter it
# did not take, or its refusal of the channel's work (fatal when ``refusal`` says so).
_SESSION_ENDS: tuple[type[Exception], ...] = (
    *broker.CONNECTION_ERRORS,
    pika.exceptions.ChannelClosedByBroker,
    pika.exceptions.UnroutableError,
    pika.exceptions.NackError,
    ConsumerCancelled,
)


class Consumer:
    """One consumer connection folding ``settings.queue`` into the store.

    ``run`` is the loop: connect (the topology declared), subscribe, consume; when the session
    ends, drop what it held and connect again. Each step is a hook below that says when it runs;
    all run on the connection's thread (the one calling ``run``).

    ``on_batch(applied, dead_lettered)``, if given, runs on the connection's thread after each
    batch has been dead-lettered and acked. ``telemetry``, if given, is told of each batch.
    """

    def __init__(
        self,
        settings: Settings,
        projector: Projector,
        on_batch: Callable[[int, int], None] | None = None,
        telemetry: BatchTelemetry | None = None,
    ) -> None:
        self._settings = settings
        self._on_batch = on_batch
        self._telemetry = telemetry
        self._policy = FlushPolicy.from_settings(settings)
        self._stop = threading.Event()
        self._writers = Writers(projector, self._policy.writers, self._stop, telemetry)
        self._link = broker.ConfirmingChannel(settings, "tracker-consumer", declare=True)
        self._reconnect = broker.ReconnectDelay()
        self._health = HealthFile(settings.health_file)
        self._broker = OutageLog(log, "broker connection back")
        self._ever_subscribed = False
        self._channel: BlockingChannel | None = None  # while subscribed
        self._pending: list[Delivery] = []  # received, not yet handed to a writer
        self._pending_since = 0.0  # when the oldest of them arrived (monotonic)
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

    @property
    def database_problem(self) -> NotReady | None:
        """Why the batches in hand cannot be committed (the database unavailable, or broken), or
        None (readiness); from any thread."""
        problem = self._writers.problem
        if problem is None:
            return None
        return NotReady("writes" if problem == DATABASE_BROKEN else "database", problem)

    def stop(self) -> None:
        """Ask the loop to finish its batch and return; safe from signal handlers and threads."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call ``stop``; from the main thread, before ``run``."""
        stop_on_signals(self.stop)

    def run(self) -> None:
        """Consume until stopped; reconnects by itself. Raises FatalBrokerError."""
        with self._writers:
            while not self._stop.is_set():
                connected_at = None
                try:
                    self.on_connection_revived(self._link.open())
                    connected_at = time.monotonic()
                    self.consume()
                except _SESSION_ENDS as exc:
                    if (refused := refusal(exc)) is not None:
                        raise FatalBrokerError(refused) from None
                    self.on_connection_error(exc, None if connected_at is None else time.monotonic() - connected_at)
                finally:
                    self.on_connection_closed()

    def on_connection_revived(self, channel: BlockingChannel) -> None:
        """Runs once connected, the topology declared and confirms on: subscribe."""
        channel.basic_qos(prefetch_count=self._settings.prefetch)
        self._cancelled = False
        channel.add_on_cancel_callback(self.on_cancelled)
        channel.basic_consume(self._settings.queue, self.on_message)
        self._channel = channel
        self._ever_subscribed = True
        self._broker.recovered()
        log.info(
            "consuming %s at %s (batch %d, flush %d ms, prefetch %d)",
            self._settings.queue,
            self._link.node,
            self._settings.batch_size,
            self._settings.flush_ms,
            self._settings.prefetch,
        )

    def consume(self) -> None:
        """Runs while subscribed: receive, hand batches to the writers, settle those written; until stopped."""
        assert self._channel is not None
        connection = self._channel.connection
        while not self._stop.is_set():
            self.on_iteration()
            # A Wait ends early when a delivery arrives or a writer finishes (see _flush).
            step = self._policy.decide(len(self._pending), len(self._writers), time.monotonic() - self._pending_since)
            if isinstance(step, Flush):
                self._flush(step.count)
            else:
                connection.process_data_events(time_limit=step.seconds)
        self.on_consume_end()

    def on_iteration(self) -> None:
        """Runs before each decision of the loop: end a cancelled session, beat, settle what is written."""
        if self._cancelled:
            # Without a subscription nothing more would arrive, ever: start over. What is
            # being written is abandoned unacked (redelivered if the queue still holds it).
            raise ConsumerCancelled(f"RabbitMQ cancelled the subscription to {self._settings.queue}")
        self._health.beat()
        while (batch := self._writers.next_written()) is not None:
            self._settle(batch)

    def on_message(
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

    def on_cancelled(self, _method: pika.frame.Method) -> None:
        """Runs inside process_data_events when the broker cancels our subscription."""
        self._cancelled = True

    def on_consume_end(self) -> None:
        """Runs when stopping, still subscribed: finish what is in hand if the database answers;
        whatever is left unacked goes back to the queue when the connection closes."""
        while (batch := self._writers.next_written(wait=True)) is not None:
            if not self._settle(batch):
                return
        while self._pending:
            self._flush(self._policy.batch_size)
            batch = self._writers.next_written(wait=True)
            if batch is None or not self._settle(batch):
                return

    def on_connection_error(self, exc: Exception, held_s: float | None) -> None:
        """Runs when a session ends by a loss (after ``held_s`` connected; None: no connection):
        say so, then wait before the next (an early return when stopped)."""
        if isinstance(exc, (pika.exceptions.UnroutableError, pika.exceptions.NackError)):
            log.warning("could not dead-letter: %s is not taking messages (%s)", self._settings.dead_queue, exc)
        delay = self._reconnect.after(held_s)
        # Once when the connection goes, then every minute while no node takes one; each attempt at debug.
        unacked = len(self._pending) + self._writers.deliveries
        redelivered = f"; {unacked} unacked deliveries will be redelivered" if unacked else ""
        self._broker.failed(
            "broker connection lost" if self._ever_subscribed else "broker unavailable",
            f"{type(exc).__name__}: {exc}{redelivered}; reconnecting with back-off",
        )
        log.debug("broker connection lost (%s: %s); reconnecting in %.1f s", type(exc).__name__, exc, delay)
        self._pending.clear()
        self._stop.wait(delay)

    def on_connection_closed(self) -> None:
        """Runs after every session, however it ended: the writers' batches abandoned and what
        was pending dropped (the broker redelivers both), the connection closed."""
        self._writers.abandon()
        self._channel = None
        self._pending.clear()
        self.settled = self.received  # what was in hand goes back to the queue
        self._link.close()

    def _flush(self, count: int) -> None:
        """Hand the ``count`` oldest pending deliveries to a writer."""
        assert self._channel is not None
        deliveries = self._pending[:count]
        del self._pending[:count]
        # What is left arrived while this batch was gathered: count its wait from now.
        self._pending_since = time.monotonic()
        through = self.received - len(self._pending)
        self._writers.write(deliveries, through, functools.partial(_wake, self._channel.connection))

    def _settle(self, batch: Batch) -> bool:
        """Dead-letter and ack a written batch; False if the writer abandoned it.

        Re-raises what the writer raised other than StoreUnavailable: that is a bug.
        """
        outcome = batch.outcome.result()
        self.settled = batch.through
        if outcome is None:
            return False
        assert self._channel is not None
        for dead in outcome.dead:
            dead_letter(self._channel, self._settings.dead_exchange, dead)
        self._channel.basic_ack(delivery_tag=batch.deliveries[-1].tag, multiple=True)
        self.applied += outcome.applied
        self.dead_lettered += len(outcome.dead)
        if self._telemetry is not None:
            self._telemetry.acked(outcome)
        if self._on_batch is not None:
            self._on_batch(outcome.applied, len(outcome.dead))
        return True


def refusal(exc: BaseException) -> str | None:
    """Why the broker will never take this consumer as configured, if ``exc`` says so (its
    credentials, virtual host or topology refused: fatal); None for a loss to reconnect after."""
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
        return f"RabbitMQ refused the credentials: {exc}"
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return f"RabbitMQ refused access to the virtual host: {exc}"
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code in (403, 406):
        return f"RabbitMQ refused the topology: {exc.reply_text}"
    return None


def dead_letter(channel: BlockingChannel, exchange: str, dead: DeadLetter) -> None:
    """Republish ``dead``'s delivery to ``exchange`` (mandatory), with why in its headers, and log it.

    On a confirming channel it returns once the broker has taken it, and raises pika's
    UnroutableError or NackError when it does not.
    """
    delivery = dead.delivery
    headers = broker.dead_letter_headers(delivery.headers, delivery.routing_key, dead.reason)
    properties = broker.message_properties(delivery.message_id, delivery.content_type, headers)
    channel.basic_publish(exchange, delivery.routing_key, delivery.body, properties, mandatory=True)
    reason = str(headers[broker.REASON_HEADER])
    log.warning(
        "dead-lettered delivery %s (message_id %s): %s",
        delivery.tag,
        delivery.message_id,
        reason,
        extra={"event_id": delivery.message_id, "reason_code": reason_code(reason)},
    )


class HealthFile:
    """Touches ``path`` (None: nothing) each time the loop turns, at most every ``every_s``: a
    container's health check sees the loop alive by the file's age."""

    def __init__(
        self, path: str | None, every_s: float = _BEAT_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = None if path is None else pathlib.Path(path)
        self._every_s = every_s
        self._clock = clock
        self._touched_at: float | None = None

    def beat(self) -> None:
        """Say the loop turns; touches the file if ``every_s`` has passed since it last did."""
        if self._path is None:
            return
        now = self._clock()
        if self._touched_at is not None and now - self._touched_at < self._every_s:
            return
        self._touched_at = now
        self._path.touch()


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Make SIGTERM and SIGINT call ``stop``; from the main thread."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())


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
    if (problem := schema_problem(engine)) is not None:
        # Started before its database (compose, Kubernetes): say so once, and consume anyway. (Not
        # the words "consuming ", which tests and the benchmark wait for: bench.processes.READY_LINE.)
        log.warning(
            "%s (%s): starting anyway; batches wait for it (nothing is acked or dead-lettered meanwhile), "
            "and /readyz answers 503 until then",
            problem.alert,
            problem.detail,
        )
    telemetry = BatchTelemetry(settings.metrics_max_kinds) if settings.metrics and settings.metrics_bind else None
    # With webhooks on, every consumer delivers them (one at a time for each), woken by its own folds too.
    deliverer = Deliverer(settings) if settings.webhook_origins else None
    projector = StatusProjector(
        open_job_store(engine),
        on_applied=None if deliverer is None else deliverer.applied,
        on_cancelled=metrics.count_cancelled_job if telemetry is not None else None,
    )
    consumer = Consumer(settings, projector, telemetry=telemetry)
    consumer.install_signal_handlers()
    # Every consumer checks for lost jobs (one at a time across them all): nothing else to run.
    reaper = Reaper(settings, backlog=consumer)
    endpoints = metrics_server.start(settings, consumer)
    # Start-up's objects live as long as the process: out of every later collection's sight (docs/performance.md).
    gc.freeze()
    reaper.start()
    if deliverer is not None:
        deliverer.start()
    try:
        consumer.run()
    except FatalBrokerError as exc:
        log.error("%s", exc)
        return 2
    finally:
        reaper.stop()
        if deliverer is not None:
            deliverer.stop()
        engine.dispose()
        if endpoints is not None:
            endpoints.stop()
    log.info("stopped: %d events applied, %d dead-lettered", consumer.applied, consumer.dead_lettered)
    return 0
