"""The workers' client: confirmed, persistent, mandatory publishing of job events.

    from tracker.publisher import Publisher

    with Publisher.from_env() as publisher, publisher.job(job_id, heartbeat_timeout_s=60) as job:
        job.progress("copying files", percent=40)
        job.result = do_the_work()
    # -> "succeeded" (with job.result) on normal exit; "failed" with the exception's text if it
    #    raised (and with its error if it was a JobFailed); meanwhile a heartbeat every 20 s keeps
    #    the job's lease alive, and job.cancelled is set if the job's cancellation is asked
    #    (job.check_cancelled() raises JobCancelled: the block ends quietly, the job FAILED with
    #    error.code "cancelled")

``publish`` returns only once the broker has confirmed the event; it reconnects and resends by
itself (the same event_id, so a resend is harmless; to another node when TRACKER_AMQP_URL lists a
cluster's and its node went) until ``timeout_s`` runs out, then raises PublishFailed. An event
that no queue would take (a mistyped exchange, or one with no queue bound), or that the broker
refuses (a permission, a declaration that differs from what exists), raises PublishFailed at
once: sending it again cannot help.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import types
from typing import Any

import pika
import pika.exceptions

from tracker import broker, cancels, events
from tracker.backoff import Backoff
from tracker.cancellation import CancelListener
from tracker.config import Settings
from tracker.errors import InvalidEvent, JobCancelled, PublishFailed

log = logging.getLogger(__name__)

# A lost connection, and the broker's refusals of a channel operation: a closed channel, a nack,
# an event returned as unroutable. Each is tried again, unless ``_final`` says it is no passing
# trouble.
_RETRYABLE: tuple[type[Exception], ...] = (*broker.CONNECTION_ERRORS, pika.exceptions.AMQPChannelError)
# The channel closed by the broker for good reasons: ACCESS_REFUSED, NOT_FOUND (no such exchange),
# PRECONDITION_FAILED (a declaration that differs from what exists).
_REFUSALS = frozenset({403, 404, 406})


class JobFailed(Exception):
    """Raised in a ``Publisher.job`` block: the job failed, with ``message`` for people and
    ``code`` (and ``details``, any JSON value) for machines, as SPEC §11's ``error``.

    Checked when made: a ``code`` that is not 1 to 64 characters of ``a-z 0-9 _ . -``,
    ``details`` JSON cannot carry or over 16 KiB as compact JSON, or ``details`` without a
    ``code``, raise InvalidEvent (a ValueError) instead, which fails the job with that reason.
    """

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        try:
            if code is not None:
                events.check_error_code(code)
            elif details is not None:
                raise ValueError("details go only with a code")
            events.json_text(details)
        except ValueError as exc:
            raise InvalidEvent(f"error: {exc}") from None
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details


class Publisher:
    """A connection that publishes events.

    Every use of the connection (connect, publish and confirm, close) is serialised by one lock,
    so the heartbeat thread of a ``job`` block, or any other thread, may share one Publisher.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = 30.0,
        declare: bool = True,
        channel: broker.ConfirmingChannel | None = None,
    ) -> None:
        """``declare``: declare the topology on each new channel. ``channel``: publish on this one
        (its own declare setting holds) instead of one of the publisher's own."""
        self._settings = settings
        self._timeout_s = timeout_s
        # pika's BlockingConnection is not thread-safe, so a job block and its heartbeat thread
        # could each have had a connection. They share this one under a lock instead: one
        # connection per worker rather than two; the beats keep it serviced while the block works
        # in silence (a BlockingConnection answers the broker's AMQP heartbeats only while it is
        # called, so an idle one is dropped and the block's next publish has to reconnect); and
        # the cost is at most one confirm round trip of waiting, or one connect attempt while the
        # broker is away, because a beat never sleeps or retries with the lock held.
        self._connection_lock = threading.Lock()
        self._channel = channel or broker.ConfirmingChannel(settings, "tracker-publisher", declare=declare)
        self._numbering_lock = threading.Lock()
        self._seq: collections.Counter[int] = collections.Counter()
        self._listener_lock = threading.Lock()
        self._listener: CancelListener | None = None  # made when a job block first listens

    @classmethod
    def from_env(cls, *, timeout_s: float = 30.0, declare: bool = True) -> Publisher:
        """A publisher configured by the environment's TRACKER_* variables; raises ConfigError."""
        return cls(Settings.from_env(os.environ), timeout_s=timeout_s, declare=declare)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._connection_lock:
            self._channel.close()

    def cancel_listener(self) -> CancelListener:
        """The ear of this publisher's job blocks for cancel messages (SPEC §12), made on first use."""
        with self._listener_lock:
            if self._listener is None:
                self._listener = CancelListener(self._settings)
            return self._listener

    def emit_cancelled(self, job_id: int, message: str | None) -> events.Event:
        """Publish ``failed`` with ``error.code`` ``cancelled`` for ``job_id`` now: the worker stopped (SPEC §12)."""
        event = self._next_event(job_id, "failed", message, error_code=cancels.ERROR_CODE)
        self.publish(event)
        return event

    def emit(
        self,
        job_id: int,
        type: str,
        message: str | None = None,
        *,
        progress: float | None = None,
        result: Any = None,
        error_code: str | None = None,
        error_details: Any = None,
    ) -> events.Event:
        """Publish a new event for ``job_id`` now, with this client's next seq for the job.

        ``progress``, ``result`` (a JSON value, on ``succeeded`` only) and ``error_code`` with
        ``error_details`` (on ``failed`` only) as SPEC §11 bounds them; None: none. Raises
        InvalidEvent, before anything is sent, for a value outside those bounds, and
        PublishFailed as ``publish`` does.
        """
        event = self._next_event(
            job_id,
            type,
            message,
            progress=progress,
            result=result,
            error_code=error_code,
            error_details=error_details,
        )
        self.publish(event)
        return event

    def publish(self, event: events.Event) -> None:
        """Send ``event`` and wait for the broker's confirm; raises PublishFailed."""
        body, properties = broker.event_message(event)
        routing_key = broker.routing_key(event.type)
        deadline = time.monotonic() + self._timeout_s
        backoff = Backoff(cap=5.0)
        while True:
            try:
                self._send(routing_key, body, properties)
                return
            except _RETRYABLE as exc:
                if (why := _final(exc)) is not None:
                    raise PublishFailed(self._not_published(f"event {event.event_id}", routing_key, why)) from exc
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise PublishFailed(f"event {event.event_id} not confirmed: {type(exc).__name__}") from exc
                log.warning("publish of %s failed (%s); retrying in %.1f s", event.event_id, type(exc).__name__, delay)
                time.sleep(delay)

    def heartbeat(self, job_id: int) -> events.Event:
        """Renew ``job_id``'s lease (SPEC §6) with a ``progress`` event whose message is null.

        Quick rather than patient: one attempt, and at once a second on a new connection if the
        first failed (the broker drops a connection left idle past its AMQP heartbeat, as one is
        between the beats of a long lease); raises PublishFailed, and the next beat tries afresh.
        """
        event = self._next_event(job_id, "progress", None)
        body, properties = broker.event_message(event)
        routing_key = broker.routing_key(event.type)
        for attempt in (1, 2):
            try:
                self._send(routing_key, body, properties)
                break
            except _RETRYABLE as exc:
                if (why := _final(exc)) is not None:
                    raise PublishFailed(self._not_published(f"heartbeat {event.event_id}", routing_key, why)) from exc
                if attempt == 2:
                    raise PublishFailed(f"heartbeat {event.event_id} not confirmed: {type(exc).__name__}") from exc
        return event

    def job(self, job_id: int, *, heartbeat_timeout_s: float | None = None, listen: bool = True) -> JobReport:
        """A context manager reporting on one job: succeeded on exit, failed on an exception.

        With ``listen`` (the default), the block hears its job's cancellation (SPEC §12): from the
        first cancel message on, ``job.cancelled`` is set, and ``job.check_cancelled()`` raises
        JobCancelled; leaving the block with it publishes ``failed`` with ``error.code``
        ``cancelled`` and raises nothing (``tracker.cancellation`` says how it listens).

        With ``heartbeat_timeout_s`` (the job's heartbeat lease, as given when it was created;
        None or 0: no lease), a background thread keeps the lease alive while the block runs: a
        heartbeat at once, then every third of the lease. The beats stop, and their thread is
        joined, as soon as the block ends and before its final event is published. A beat that
        cannot be published is logged and tried again at the next; it never fails the block. The
        final event is published as ``emit`` does and raises PublishFailed as it does. Raises
        ValueError for a negative lease.
        """
        if heartbeat_timeout_s is not None and heartbeat_timeout_s < 0:
            raise ValueError(f"heartbeat_timeout_s must be 0 or more, not {heartbeat_timeout_s}")
        return JobReport(self, job_id, heartbeat_timeout_s=heartbeat_timeout_s or None, listen=listen)

    def _next_event(self, job_id: int, type: str, message: str | None, **fields: Any) -> events.Event:
        with self._numbering_lock:
            seq = self._seq[job_id]
            # The time is taken under the same lock as the number, so that the merge key
            # (occurred_at, seq) orders a job's events as this client made them, whichever of
            # its threads made them. Made before the number is used up: an event that cannot be
            # made (InvalidEvent) changes nothing.
            event = events.new_event(job_id, type, message, seq=seq, **fields)
            if type in events.TERMINAL_TYPES:
                # A finished job needs no more numbers: forget it, so that a long-lived worker's
                # memory does not grow with every job it ever reported on.
                del self._seq[job_id]
            else:
                self._seq[job_id] += 1
            return event

    def _not_published(self, what: str, routing_key: str, why: str) -> str:
        return f"{what} not published to exchange {self._settings.exchange!r} with routing key {routing_key!r}: {why}"

    def _send(self, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        """One publish-and-confirm, the lock held throughout; drops the connection if it fails."""
        with self._connection_lock:
            try:
                self._channel.open().basic_publish(
                    self._settings.exchange, routing_key, body, properties, mandatory=True
                )
            except _RETRYABLE:
                self._channel.close()
                raise


class JobReport:
    """Reports on one job; see ``Publisher.job``.

    ``final_message`` and ``result``, set before the block ends, go with its ``succeeded``
    event. A ``JobFailed`` raised in the block goes as a ``failed`` event with its message and
    its error; any other exception with its text and no error. Either is raised on.
    """

    def __init__(
        self, publisher: Publisher, job_id: int, *, heartbeat_timeout_s: float | None = None, listen: bool = False
    ) -> None:
        self._publisher = publisher
        self.job_id = job_id
        self.final_message: str | None = None
        self._result: Any = None
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._heartbeat: _Heartbeat | None = None
        self._listen = listen
        self.cancelled = threading.Event()  # set on the job's first cancel message (SPEC §12)
        self.cancel_notice: cancels.CancelNotice | None = None  # that message

    def check_cancelled(self) -> None:
        """Raise JobCancelled (its text the request's message) once the job's cancellation was heard."""
        notice = self.cancel_notice
        if self.cancelled.is_set() and notice is not None:
            raise JobCancelled(notice.message or "cancelled")

    def _heard(self, notice: cancels.CancelNotice) -> None:
        if self.cancel_notice is None:
            self.cancel_notice = notice
            self.cancelled.set()

    def progress(self, message: str | None = None, percent: float | None = None) -> events.Event:
        """Publish a ``progress`` event: ``message`` (None: the row keeps the one it has) and
        ``percent``, 0 to 100 (None: the row keeps the one it has). Raises InvalidEvent for a
        percent or message out of bounds, PublishFailed as ``Publisher.emit`` does."""
        return self._publisher.emit(self.job_id, "progress", message, progress=percent)

    @property
    def result(self) -> Any:
        """What the job produced, any JSON value: sent with the ``succeeded`` event (None: none).

        Checked when set: a value JSON cannot carry, or over 16 KiB as compact JSON, raises
        InvalidEvent there, in the block, which then fails with that reason.
        """
        return self._result

    @result.setter
    def result(self, value: Any) -> None:
        try:
            events.json_text(value)
        except ValueError as exc:
            raise InvalidEvent(f"result: {exc}") from None
        self._result = value

    def __enter__(self) -> JobReport:
        if self._heartbeat_timeout_s:
            if self._heartbeat is not None:
                raise RuntimeError(f"the report on job {self.job_id} is already running")
            self._heartbeat = _Heartbeat(self._publisher, self.job_id, heartbeat_interval(self._heartbeat_timeout_s))
        if self._listen:
            self._publisher.cancel_listener().watch(self.job_id, self._heard)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: types.TracebackType | None
    ) -> bool:
        if self._listen:
            self._publisher.cancel_listener().unwatch(self.job_id, self._heard)
        if self._heartbeat is not None:
            # Stopped and joined first, so that no heartbeat follows the job's final event.
            self._heartbeat.stop()
            self._heartbeat = None
        if exc is None:
            self._publisher.emit(self.job_id, "succeeded", self.final_message, result=self._result)
        elif isinstance(exc, JobCancelled):
            self._publisher.emit_cancelled(self.job_id, _failure_text(exc))
            return True  # the block ends quietly: stopping was asked for
        elif isinstance(exc, JobFailed):
            self._publisher.emit(
                self.job_id,
                "failed",
                _failure_text(exc),
                error_code=exc.code,
                error_details=exc.details,
            )
        else:
            self._publisher.emit(self.job_id, "failed", _failure_text(exc))
        return False


def _final(exc: Exception) -> str | None:
    """Why sending again cannot help, when ``exc`` says so; None for a passing trouble.

    No queue bound to take the event, or the broker's refusal of the exchange (it does not
    exist), of a permission, or of a declaration, stays so until someone changes the broker's
    setup or ours. None of them is a passing state of a cluster losing a node: exchanges and
    bindings live on every node, and a quorum queue is routed to while it elects a leader (the
    publish waits for its confirm meanwhile). A lost connection, a nack, or any other refusal
    is tried again.
    """
    if isinstance(exc, pika.exceptions.UnroutableError):
        return "no queue is bound to take it (RabbitMQ returned it as unroutable)"
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code in _REFUSALS:
        return f"RabbitMQ refused: {exc.reply_text}"
    return None


def heartbeat_interval(heartbeat_timeout_s: float) -> float:
    """How often to renew a lease of ``heartbeat_timeout_s``: three beats a lease, so that one lost
    beat, or a slow one, does not lose the job."""
    return heartbeat_timeout_s / 3


class _Heartbeat:
    """A daemon thread calling ``publisher.heartbeat(job_id)`` at once and then every ``interval_s``
    until ``stop``. A daemon, so that a worker dying without leaving its block stops beating."""

    def __init__(self, publisher: Publisher, job_id: int, interval_s: float) -> None:
        self._publisher = publisher
        self._job_id = job_id
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tracker-heartbeat-{job_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Wake the thread, which ends at once or after the beat it is sending; wait for it."""
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        """The thread: beat, wait (woken early by ``stop``), beat again."""
        # The first beat goes at once: the lease has been running since the job was created,
        # perhaps long before this block began.
        while not self._stopped.is_set():
            try:
                self._publisher.heartbeat(self._job_id)
            except PublishFailed as exc:
                log.warning("heartbeat of job %s: %s; next in %.1f s", self._job_id, exc, self._interval_s)
            except Exception:
                # A beat must never end the beating: an alive worker would lose its job.
                log.exception("heartbeat of job %s failed; next in %.1f s", self._job_id, self._interval_s)
            self._stopped.wait(self._interval_s)


def _failure_text(exc: BaseException) -> str:
    """The exception's text as a valid event message: no NUL, no lone surrogates, not too long."""
    text = str(exc) or type(exc).__name__
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[: events.MAX_MESSAGE_CHARS]
