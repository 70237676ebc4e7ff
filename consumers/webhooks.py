"""Webhook deliveries (SPEC §13) as threads of ``tracker consume``: take what is due, POST it signed, record it.

The deliverer's thread takes due deliveries (``tracker.store.deliveries``: one deliverer at a time
per delivery, across every consumer) as soon as one is queued: woken by this process's own fold
(``applied``), on PostgreSQL by migration 0012's notification (``QueuedListener``, a thread with
a connection of its own), and in any case when the next queued delivery falls due, or every
``reap_interval_s`` (a delivery another process queued on SQLite, which notifies no one; a
notification missed while not listening). It takes as many as it has idle senders
(``TRACKER_WEBHOOK_CONCURRENCY``) and hands each to one: a thread that renders the job's row as
GET does, signs it, POSTs it (``post``) and records the outcome. Nothing here runs on, or waits
for, the consumer's connection, its writers or the lost-job check.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping

from tracker import metrics, webhooks
from tracker.backoff import Backoff
from tracker.config import Settings
from tracker.errors import StoreUnavailable
from tracker.model import Applied
from tracker.rendering import job_view
from tracker.store import make_engine
from tracker.store.deliveries import Claimed, Deliveries

log = logging.getLogger(__name__)

CHANNEL = "tracker_webhooks"  # what migration 0012's trigger notifies when a delivery is queued
USER_AGENT = "async-status-tracker-webhooks"
# A claim outlives its attempt (at most TIMEOUT_S) by this much, for the attempt to be recorded:
# only then may another deliverer take the delivery over.
_SETTLE_MARGIN_S = 5.0
_IDLE_FLOOR_S = 0.01  # the shortest wait when nothing could be taken (another deliverer was taking the due ones)
_LISTEN_CHECK_S = 1.0  # how often the listener looks at its stop flag
_REASON_CHARS = 100  # of an answer's reason phrase, in a log line


@dataclasses.dataclass(frozen=True)
class Answer:
    """How one POST went: the status it was answered with (None: no answer), and why it is not a
    delivery (None when it is one: a 2xx)."""

    status: int | None
    problem: str | None = None

    @property
    def delivered(self) -> bool:
        return self.problem is None


def post(target: webhooks.Target, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer:
    """POST ``body`` to ``target``, within ``timeout_s`` from the first byte sent to the status line
    received; a 2xx is a delivery, and anything else, a redirect included (never followed), is not.

    Reads the status line and headers only (within http.client's bounds: 100 lines of at most
    64 KiB), never the body; the connection is closed at once. A watchdog closes the socket when
    the time is up, so a receiver that trickles its answer is cut off too. Never raises for what
    the receiver or the network does.
    """
    kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    connection = kind(target.host, target.port, timeout=timeout_s)
    watchdog = threading.Timer(timeout_s, _cut, (connection,))
    watchdog.daemon = True
    started = time.monotonic()
    watchdog.start()
    try:
        sent = {"User-Agent": USER_AGENT, "Connection": "close", **headers}
        connection.request("POST", target.path, body=body, headers=sent)
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() - started >= timeout_s or isinstance(exc, TimeoutError):
            return Answer(None, f"no answer within {timeout_s:g} s")
        return Answer(None, f"{type(exc).__name__}: {exc}"[:200])
    finally:
        watchdog.cancel()
        connection.close()
    status = response.status
    if 200 <= status <= 299:
        return Answer(status)
    reason = response.reason[:_REASON_CHARS]
    if 300 <= status <= 399:
        return Answer(status, f"answered {status} {reason} (a redirect: not followed)")
    return Answer(status, f"answered {status} {reason}")


def _cut(connection: http.client.HTTPConnection) -> None:
    """Runs on the watchdog's thread when an attempt's time is up: end its exchange."""
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


class QueuedListener:
    """A thread that LISTENs on ``CHANNEL`` with a PostgreSQL connection of its own and calls
    ``heard`` for each notification, and each time it starts listening (whatever was queued while it
    was not); it connects again, with capped back-off, when the connection fails."""

    def __init__(self, settings: Settings, heard: Callable[[], None]) -> None:
        self._engine = make_engine(settings.database_url, pool_size=1, max_overflow=0)
        self._heard = heard
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-webhooks-listener", daemon=True)

    def start(self) -> QueuedListener:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._engine.dispose()

    def _run(self) -> None:
        backoff = Backoff(first=0.1, cap=5.0)
        while not self._stop.is_set():
            try:
                self._listen(backoff)
            except Exception as exc:  # noqa: BLE001 - any failure: the deliverer polls meanwhile; listen again
                delay = backoff.next()
                first_line = (str(exc).strip().splitlines() or [""])[0]
                log.warning(
                    "webhooks: not listening (%s: %s); trying again in %.1f s", type(exc).__name__, first_line, delay
                )
                self._stop.wait(delay)

    def _listen(self, backoff: Backoff) -> None:
        raw = self._engine.raw_connection()
        conn = raw.driver_connection
        raw.detach()  # it will be listening for good: never back into the pool
        try:
            assert conn is not None, "a psycopg connection"
            conn.rollback()
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            backoff.reset()
            self._heard()
            while not self._stop.is_set():
                for _notify in conn.notifies(timeout=_LISTEN_CHECK_S):
                    self._heard()
        finally:
            raw.close()


class Deliverer:
    """Delivers the queued webhooks (the module's docstring); ``start`` it, ``stop`` it (joins).

    Needs webhooks on (``settings.webhook_origins`` not empty, so a secret): a URL outside this
    process's allow-list (narrowed since the job was created) is given up at once, not sent.
    """

    def __init__(self, settings: Settings) -> None:
        key = settings.webhook_key
        if key is None or not settings.webhook_origins:
            raise ValueError("webhooks are off: TRACKER_WEBHOOK_ALLOW and TRACKER_WEBHOOK_SECRET must be set")
        self._key = key
        self._allowed = settings.webhook_origins
        self._retries = settings.webhook_retries
        self._senders = settings.webhook_concurrency
        self._poll_s = settings.reap_interval_s
        self._engine = make_engine(settings.database_url, pool_size=2, max_overflow=settings.webhook_concurrency)
        self._deliveries = Deliveries(self._engine, lease_s=webhooks.TIMEOUT_S + _SETTLE_MARGIN_S)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(self._senders, thread_name_prefix="tracker-webhook")
        self._thread = threading.Thread(target=self._run, name="tracker-deliverer", daemon=True)
        postgresql = self._engine.dialect.name == "postgresql"
        self._listener = QueuedListener(settings, self.wake) if postgresql else None
        for outcome in webhooks.OUTCOMES:  # every series from the start, at 0
            metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome)

    def start(self) -> Deliverer:
        if self._listener is not None:
            self._listener.start()
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking deliveries, let the attempts in flight end (``TIMEOUT_S`` at most), close what it opened."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._listener is not None:
            self._listener.close()
        self._pool.shutdown(wait=True)
        self._engine.dispose()

    def wake(self) -> None:
        """Look for due deliveries now; from any thread."""
        self._wake.set()

    def applied(self, applied: Applied) -> None:
        """Runs on a writer thread after each committed batch: wake the deliverer if it queued a delivery."""
        if applied.queued_deliveries:
            self._wake.set()

    def _run(self) -> None:
        """Runs on the deliverer's thread until stopped: take what is due, then wait to be woken."""
        while not self._stop.is_set():
            # Cleared before looking: a wake-up that comes after is for a commit the look may not see.
            self._wake.clear()
            try:
                wait_s = self.take_due()
            except StoreUnavailable as exc:
                log.warning("webhooks: database unavailable (%s); looking again in %.1f s", exc, self._poll_s)
                wait_s = self._poll_s
            except Exception:
                # A bug here must not take the consumer down with it: say so, and try again later.
                log.exception("webhooks: taking due deliveries failed")
                wait_s = self._poll_s
            self._wake.wait(wait_s)

    def take_due(self) -> float:
        """Hand every due delivery an idle sender can take to one; how long to wait before looking again."""
        with self._lock:
            idle = self._senders - self._in_flight
        if idle <= 0 or self._stop.is_set():
            return self._poll_s  # a sender that ends wakes the deliverer
        claimed, next_due_s = self._deliveries.claim(idle)
        for each in claimed:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._attempt, each)
        if next_due_s is None:
            return self._poll_s
        floor = 0.0 if claimed else _IDLE_FLOOR_S
        return min(self._poll_s, max(next_due_s, floor))

    def _attempt(self, claimed: Claimed) -> None:
        """Runs on a sender thread: one attempt of one delivery, recorded."""
        try:
            self.deliver(claimed)
        except StoreUnavailable as exc:
            # Its claim lapses, and the delivery is taken again then (once more, if this one reached it).
            log.warning(
                "webhooks: job %d: the attempt's outcome could not be recorded (%s); it will be made again",
                claimed.job.id,
                exc,
                extra={"job_id": claimed.job.id},
            )
        except Exception:
            log.exception("webhooks: job %d: the attempt failed", claimed.job.id, extra={"job_id": claimed.job.id})
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()

    def deliver(self, claimed: Claimed) -> str:
        """Make the attempt ``claimed`` was taken for, record it, count it; its outcome
        (``tracker.webhooks.OUTCOMES``). Raises StoreUnavailable when it cannot be recorded."""
        job = claimed.job
        assert job.notify_url is not None, "a delivery is queued only for a job with a notify_url"
        extra = {"job_id": job.id}
        try:
            target = webhooks.parse_url(job.notify_url)
        except ValueError:
            target = None
        if target is None or not self._allowed.admits(target):
            self._deliveries.given_up(claimed)
            where = "its notify_url" if target is None else target.origin
            log.warning(
                "webhooks: job %d: %s is not allowed here (TRACKER_WEBHOOK_ALLOW); given up", job.id, where, extra=extra
            )
            return self._counted(webhooks.FAILED)
        body = webhooks.message(job_view(job))
        msg_id = webhooks.webhook_id(job.id, job.start_time, job.notify_url)
        answer = post(
            target, body, webhooks.signed_headers(self._key, msg_id, int(time.time()), body), webhooks.TIMEOUT_S
        )
        if answer.delivered:
            self._deliveries.delivered(claimed)
            log.debug(
                "webhooks: job %d: delivered to %s (attempt %d)",
                job.id,
                target.origin,
                job.notify_attempts,
                extra=extra,
            )
            return self._counted(webhooks.DELIVERED)
        attempts = job.notify_attempts or 1
        wait_s = self._retries.next_in(attempts, claimed.since_queued_s)
        if wait_s is None:
            self._deliveries.given_up(claimed)
            log.warning(
                "webhooks: job %d: attempt %d to %s failed (%s); given up after %d attempts",
                job.id,
                attempts,
                target.origin,
                answer.problem,
                attempts,
                extra=extra,
            )
            return self._counted(webhooks.FAILED)
        self._deliveries.retry(claimed, wait_s)
        log.warning(
            "webhooks: job %d: attempt %d to %s failed (%s); trying again in %g s",
            job.id,
            attempts,
            target.origin,
            answer.problem,
            wait_s,
            extra=extra,
        )
        return self._counted("retried")

    @staticmethod
    def _counted(outcome: str) -> str:
        metrics.count_webhook_attempt(outcome)
        return outcome
