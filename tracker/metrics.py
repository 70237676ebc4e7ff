"""The metrics of SPEC §8, defined once for every process, in prometheus_client's default registry.

A consumer serves them at ``TRACKER_METRICS_BIND`` (``consumers.metrics_server``); ``tracker api``
serves its workers' figures together at ``/metrics`` (``api.metrics``), in prometheus_client's
multiprocess mode, which ``api.server`` turns on before anything imports this module. Label values
are always from a small fixed set: event types, outcomes, reason codes (``tracker.reasons``),
statuses, queue names, HTTP methods, route templates and status codes, and at most
``TRACKER_METRICS_MAX_KINDS`` job kinds (``KindLabels``); never a job id or a path.

Which process moves which: a consumer the events, dead letters, batches, store errors, lag, lost
jobs, job durations, cancelled jobs, webhook deliveries and the two gauges (refreshed on a timer);
the API the HTTP pair and the held waits.
"""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from tracker import cancels, webhooks

# ``*_created`` series double what is exposed and say nothing a counter's reset does not.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

EVENTS = Counter(
    "tracker_events",
    "Events taken from the queue, by type and what became of them (applied, or dead_lettered).",
    ["type", "outcome"],
)
DEAD_LETTERS = Counter("tracker_dead_letters", "Messages dead-lettered, by reason code.", ["reason"])
BATCH_DURATION = Histogram(
    "tracker_batch_duration_seconds",
    "Time to commit one batch (parse, fold, commit; retries after an outage included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BATCH_EVENTS = Histogram(
    "tracker_batch_events",
    "Deliveries in one batch.",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
)
EVENT_LAG = Histogram(
    "tracker_event_lag_seconds",
    "From an event's occurred_at (the worker's clock) to the commit of its batch, per applied event.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
STORE_ERRORS = Counter(
    "tracker_store_errors",
    "Failed attempts to commit a batch, by kind: unavailable (an outage) or broken (the schema or grants "
    "not the code's); both are retried, nothing acked or dead-lettered. Data the database refuses is "
    "counted as dead letters (reason database_refused).",
    ["kind"],
)
JOBS_LOST = Counter(
    "tracker_jobs_lost",
    "Jobs failed by the tracker itself: no heartbeat within the lease (heartbeat), or not finished in time (timeout).",
    ["reason"],
)
JOBS_CANCELLED = Counter(
    "tracker_jobs_cancelled",
    "Jobs ended by their cancellation (SPEC §12), by who ended them: the worker (a failed event with "
    "error.code cancelled), or the tracker (the worker did not stop within the grace).",
    ["by"],
)
JOBS = Gauge(
    "tracker_jobs",
    "Jobs by status, counted on a timer (not at each scrape).",
    ["status"],
    multiprocess_mode="mostrecent",
)
QUEUE_READY = Gauge(
    "tracker_queue_messages_ready",
    "Messages ready in the events and dead-letter queues, read on a timer.",
    ["queue"],
    multiprocess_mode="mostrecent",
)
HTTP_REQUESTS = Counter(
    "tracker_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "code"],
)
HTTP_DURATION = Histogram(
    "tracker_http_request_duration_seconds",
    "Time from a request's routing to its answer, by route template.",
    ["route"],
)
WAITS_HELD = Gauge(
    "tracker_waits_held",
    "Requests held now for Prefer: wait (each holds one of an API worker's threads).",
    multiprocess_mode="livesum",
)
WAITS_REFUSED = Counter(
    "tracker_waits_refused",
    "Requests with Prefer: wait answered at once, not held, because a cap was reached: the worker's, or the user's.",
    ["cap"],
)

STREAMS_OPEN = Gauge(
    "tracker_streams_open",
    "Event streams (Accept: text/event-stream, SPEC §13) open now.",
    multiprocess_mode="livesum",
)
STREAMS_REFUSED = Counter(
    "tracker_streams_refused",
    "Event streams refused (503) because an API worker held TRACKER_API_MAX_STREAMS of them.",
)

WEBHOOK_DELIVERIES = Counter(
    "tracker_webhook_deliveries",
    "Webhook delivery attempts (SPEC §13), by outcome: delivered, retried (failed, to be tried again), "
    "failed (failed, and given up).",
    ["outcome"],
)

JOB_DURATION = Histogram(
    "tracker_job_duration_seconds",
    "From a job's start_time to its end_time, observed as the job ends, by kind (the first "
    "TRACKER_METRICS_MAX_KINDS kinds a consumer sees; later ones as other; none: empty) and status.",
    ["kind", "status"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)

LOST_REASONS = ("heartbeat", "timeout")
OTHER_KIND = "other"  # the kind label of kinds beyond the cap
NO_KIND = ""  # the kind label of jobs created without one: Prometheus shows no kind label at all


class KindLabels:
    """Which label value a job kind gets: its own for the first ``max_kinds`` kinds asked about,
    ``other`` for the rest (so that a tracker running thousands of kinds, or a bug minting one per
    job, cannot grow the series without bound); jobs without a kind, none. Safe from any thread.

    First come, first kept, for the life of the process: a kind's series never changes meaning
    while it runs. Each consumer chooses for itself, so with more kinds than the cap, one
    consumer's ``other`` may hold a kind another one names.
    """

    def __init__(self, max_kinds: int) -> None:
        self._max_kinds = max_kinds
        self._named: set[str] = set()
        self._lock = threading.Lock()

    def label(self, kind: str | None) -> str:
        if kind is None:
            return NO_KIND
        if kind in self._named:
            return kind
        with self._lock:
            if len(self._named) < self._max_kinds:
                self._named.add(kind)
                return kind
            return kind if kind in self._named else OTHER_KIND


WAIT_CAPS = ("process", "user")


def count_lost_jobs(reason: str, count: int = 1) -> None:
    """Add ``count`` jobs failed as lost for ``reason`` (``heartbeat`` or ``timeout``); raises ValueError otherwise.

    For the lease reaper, after the ``failed`` events it publishes are confirmed.
    """
    if reason not in LOST_REASONS:
        raise ValueError(f"reason must be one of {', '.join(LOST_REASONS)}, not {reason!r}")
    JOBS_LOST.labels(reason=reason).inc(count)


def count_cancelled_job(by: str) -> None:
    """Count one job ended by its cancellation, ``by`` ``worker`` or ``tracker``; raises ValueError otherwise.

    For the consumer, once the batch that ended the job has committed.
    """
    if by not in cancels.BY:
        raise ValueError(f"by must be one of {', '.join(cancels.BY)}, not {by!r}")
    JOBS_CANCELLED.labels(by=by).inc()


def count_webhook_attempt(outcome: str) -> None:
    """Count one webhook delivery attempt by its outcome (``tracker.webhooks.OUTCOMES``); raises
    ValueError for any other."""
    if outcome not in webhooks.OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(webhooks.OUTCOMES)}, not {outcome!r}")
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
