"""The consumer's writer threads: each commits one batch, retrying while the database is away or broken.

No pika here: the connection's thread hands batches over (``write``) and takes them back written,
oldest first (``next_written``), to dead-letter and ack them itself.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Protocol

from consumers.status import Delivery, Outcome
from consumers.telemetry import BatchTelemetry
from tracker.backoff import Backoff
from tracker.errors import StoreBroken, StoreUnavailable
from tracker.outages import OutageLog
from tracker.store.engine import BROKEN, UNAVAILABLE

log = logging.getLogger(__name__)

_STOP_CHECK_S = 0.5  # how often a writer waiting to retry looks at the stop and abandon flags
# What readiness says while batches cannot be committed (no host, no error text: the log has those).
DATABASE_UNAVAILABLE = "database unavailable"
DATABASE_BROKEN = "database cannot apply events (its schema or grants)"


class Projector(Protocol):
    """What folds a batch into the store (``consumers.status.StatusProjector``, or a fake)."""

    def handle(self, deliveries: Sequence[Delivery]) -> Outcome:
        """Commit the batch's effect and say what to dead-letter; raises StoreUnavailable (StoreBroken included)."""
        ...


@dataclasses.dataclass
class Batch:
    """Deliveries handed to a writer; ``outcome`` resolves to None if the batch was abandoned."""

    deliveries: list[Delivery]
    outcome: concurrent.futures.Future[Outcome | None]
    abandon: threading.Event
    through: int = 0  # the consumer's count of deliveries received when its last one arrived


class Writers:
    """Up to ``count`` batches committed at once, each on a thread of its own, given back in the
    order they were handed over.

    A batch is retried with capped back-off while the database is unavailable or broken (its schema
    or grants not what the code needs: no event is dead-lettered for that), until it commits, or
    until it is abandoned (``abandon``) or ``stop`` is set: it then resolves to None. Either is
    logged once when it starts, again every minute while it lasts, and once when a batch commits
    again; ``problem`` says which, for readiness.

    A context manager: the threads (named ``tracker-writer-…``) exist inside the ``with``, and its
    end waits for them.
    """

    def __init__(
        self,
        projector: Projector,
        count: int,
        stop: threading.Event,
        telemetry: BatchTelemetry | None = None,
    ) -> None:
        self._projector = projector
        self._count = count
        self._stop = stop
        self._telemetry = telemetry
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._batches: collections.deque[Batch] = collections.deque()
        self._database = OutageLog(log, "database takes batches again")

    @property
    def problem(self) -> str | None:
        """Why the batches in hand cannot be committed (DATABASE_UNAVAILABLE or DATABASE_BROKEN); None
        when they can, or when none is in hand (whatever the last one met may be over). Any thread."""
        return self._database.problem if self._batches else None

    def __enter__(self) -> Writers:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self._count, thread_name_prefix="tracker-writer")
        return self

    def __exit__(
        self, _kind: type[BaseException] | None, _exc: BaseException | None, _tb: types.TracebackType | None
    ) -> None:
        assert self._pool is not None
        self._pool.shutdown(wait=True)
        self._pool = None

    def __len__(self) -> int:
        """Batches handed over and not taken back yet."""
        return len(self._batches)

    @property
    def deliveries(self) -> int:
        """Deliveries in the batches handed over and not taken back yet."""
        return sum(len(batch.deliveries) for batch in self._batches)

    def write(self, deliveries: list[Delivery], through: int, on_done: Callable[[], None]) -> Batch:
        """Hand ``deliveries`` to a writer; ``on_done`` runs on the writer's thread when it is done with them."""
        assert self._pool is not None, "outside the with"
        abandon = threading.Event()
        batch = Batch(deliveries, self._pool.submit(self._write, deliveries, abandon), abandon, through)
        batch.outcome.add_done_callback(lambda _done: on_done())
        self._batches.append(batch)
        return batch

    def next_written(self, wait: bool = False) -> Batch | None:
        """The oldest batch, taken back, once its writer is done with it; None if there is none,
        or if it is not done yet and not ``wait``."""
        if not self._batches or not (wait or self._batches[0].outcome.done()):
            return None
        batch = self._batches.popleft()
        concurrent.futures.wait([batch.outcome])
        return batch

    def abandon(self) -> None:
        """Abandon every batch handed over (their deliveries will be redelivered); return once
        their writers have ended the attempt in hand."""
        batches = list(self._batches)
        self._batches.clear()
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
                self._database.recovered()
                if self._telemetry is not None:
                    self._telemetry.written(outcome, len(deliveries), time.monotonic() - started)
                return outcome
            except StoreUnavailable as exc:
                broken = isinstance(exc, StoreBroken)
                if self._telemetry is not None:
                    self._telemetry.store_error(BROKEN if broken else UNAVAILABLE)
                if self._stop.is_set() or abandon.is_set():
                    why = "while stopping" if self._stop.is_set() else "and the broker connection is gone"
                    log.warning(
                        "database unavailable %s; abandoning %d deliveries (they will be redelivered)",
                        why,
                        len(deliveries),
                    )
                    return None
                delay = backoff.next()
                if broken:
                    self._database.failed(
                        DATABASE_BROKEN,
                        f"{exc}; nothing is acked or dead-lettered: batches are retried with back-off "
                        "until it is repaired",
                        level=logging.ERROR,
                    )
                else:
                    self._database.failed(
                        DATABASE_UNAVAILABLE, f"{exc}; nothing is acked: batches are retried with back-off"
                    )
                log.debug("retrying %d deliveries in %.1f s (%s)", len(deliveries), delay, exc)
                deadline = time.monotonic() + delay
                while not (self._stop.is_set() or abandon.is_set()) and (left := deadline - time.monotonic()) > 0:
                    abandon.wait(min(left, _STOP_CHECK_S))
