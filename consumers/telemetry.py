"""What a consumer tells Prometheus: counts once per batch (never per message), gauges on a timer.

The connection's thread handles tens of thousands of messages a second, so nothing here runs per
message on it: counters move by a batch's totals, label children are resolved once, and a batch
gives one lag observation (its oldest applied event's: one ``observe`` costs as much as parsing
an event; docs/performance.md). The job counts are a full ``count(*)``, so they are refreshed no
more often than keeps their cost at ``COUNT_BUDGET`` of one database core.
"""

from __future__ import annotations

import collections
import logging
import operator
import threading
import time
import typing

import sqlalchemy as sa
from prometheus_client import Histogram
from sqlalchemy.engine import Engine

from consumers.status import Outcome
from tracker import broker, merge, metrics, reasons
from tracker.config import Settings
from tracker.events import EventType
from tracker.store.engine import BROKEN, UNAVAILABLE, ErrorKind
from tracker.store.tables import async_status

log = logging.getLogger(__name__)

UNKNOWN_TYPE = "unknown"  # the type label of a message that could not be read as an event
REFRESH_S = 15.0  # the queue gauges, and the job counts at most this often
COUNT_BUDGET = 0.01  # of one database core: a count that took 2 s waits 200 s for the next
STATUSES = (merge.PENDING, merge.SUCCEEDED, merge.FAILED)

_OCCURRED_AT = operator.attrgetter("occurred_at")
_TYPE = operator.attrgetter("type")


class BatchTelemetry:
    """Moves the event, dead-letter and batch metrics for each batch; safe from any thread."""

    def __init__(self, max_kinds: int = 50) -> None:
        """``max_kinds``: the kinds with a label value of their own in the job duration histogram
        (TRACKER_METRICS_MAX_KINDS; the rest are ``other``)."""
        types = (*typing.get_args(EventType), UNKNOWN_TYPE)
        # Every series exists from the start (at 0), so a rate over it has a beginning.
        self._events = {
            (kind, outcome): metrics.EVENTS.labels(type=kind, outcome=outcome)
            for kind in types
            for outcome in ("applied", "dead_lettered")
        }
        self._dead = {code: metrics.DEAD_LETTERS.labels(reason=code) for code in reasons.CODES}
        self._store_errors = {kind: metrics.STORE_ERRORS.labels(kind=kind) for kind in (UNAVAILABLE, BROKEN)}
        self._kinds = metrics.KindLabels(max_kinds)
        self._durations: dict[tuple[str, str], Histogram] = {}

    def store_error(self, kind: ErrorKind) -> None:
        """Runs on a writer thread when an attempt to commit a batch failed: ``unavailable`` or ``broken``."""
        self._store_errors[kind].inc()

    def written(self, outcome: Outcome, deliveries: int, seconds: float) -> None:
        """Runs on the writer thread once a batch of ``deliveries`` has committed, ``seconds`` after its first try."""
        committed = time.time()
        metrics.BATCH_DURATION.observe(seconds)
        metrics.BATCH_EVENTS.observe(deliveries)
        if outcome.applied_events:
            oldest = min(map(_OCCURRED_AT, outcome.applied_events))
            metrics.EVENT_LAG.observe(max(0.0, committed - oldest.timestamp()))
        for job in outcome.ended:
            # One observation per job ended (a job ends once: tracker.model.Applied), not per event.
            self._duration(job.kind, job.status).observe(job.duration_s)

    def _duration(self, kind: str | None, status: str) -> Histogram:
        """The duration histogram's child for a job of ``kind`` that ended ``status``, resolved
        once per label value (a map no larger than the series: the cap's kinds, other, none)."""
        key = (self._kinds.label(kind), status)
        child = self._durations.get(key)
        if child is None:
            child = self._durations[key] = metrics.JOB_DURATION.labels(kind=key[0], status=status)
        return child

    def acked(self, outcome: Outcome) -> None:
        """Runs on the connection's thread once a batch is dead-lettered and acked."""
        if outcome.applied_events:
            for kind, count in collections.Counter(map(_TYPE, outcome.applied_events)).items():
                self._events[kind, "applied"].inc(count)
        if outcome.dead:
            kinds = collections.Counter(dead.type or UNKNOWN_TYPE for dead in outcome.dead)
            for kind, count in kinds.items():
                self._events[kind, "dead_lettered"].inc(count)
            for code, count in collections.Counter(reasons.reason_code(dead.reason) for dead in outcome.dead).items():
                self._dead[code].inc(count)


class GaugeRefresher:
    """A thread that sets ``tracker_jobs`` and ``tracker_queue_messages_ready`` every ``REFRESH_S``.

    It has a broker connection of its own (pika's are not thread-safe) and uses ``engine`` for the
    counts. A failed refresh leaves the gauges as they were and is tried again next time.
    """

    def __init__(self, settings: Settings, engine: Engine, refresh_s: float = REFRESH_S) -> None:
        self._settings = settings
        self._engine = engine
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-gauges", daemon=True)
        self._channel = broker.ConfirmingChannel(settings, "tracker-gauges")
        self._queues = {
            settings.queue: metrics.QUEUE_READY.labels(queue="events"),
            settings.dead_queue: metrics.QUEUE_READY.labels(queue="dead"),
        }
        self._jobs = {status: metrics.JOBS.labels(status=status) for status in STATUSES}
        self._count = sa.select(async_status.c.status, sa.func.count()).group_by(async_status.c.status)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        count_at = 0.0
        while not self._stop.is_set():
            self._refresh_queues()
            if time.monotonic() >= count_at:
                started = time.monotonic()
                self._refresh_jobs()
                count_at = started + max(self._refresh_s, (time.monotonic() - started) / COUNT_BUDGET)
            self._stop.wait(self._refresh_s)
        self._channel.close()

    def _refresh_queues(self) -> None:
        """Set each queue's gauge; one not declared yet keeps its value (the channel is opened again)."""
        try:
            for queue, gauge in self._queues.items():
                ready = broker.count_messages(self._channel.open(), queue)
                if ready is not None:
                    gauge.set(ready)
        except broker.ERRORS as exc:
            log.debug("could not read the queue depths: %s: %s", type(exc).__name__, exc)
            self._channel.close()

    def _refresh_jobs(self) -> None:
        try:
            with self._engine.connect() as connection:
                counts: dict[str, int] = dict(connection.execute(self._count).tuples().all())
        except sa.exc.DBAPIError as exc:
            log.debug("could not count the jobs: %s", exc)
            return
        for status, gauge in self._jobs.items():
            gauge.set(counts.get(status, 0))
