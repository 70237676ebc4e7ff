"""The lost-job check (SPEC §6) as a thread of ``tracker consume``: decide, record, publish, purge.

Every ``reap_interval_s`` the thread:
0. publishes the cancel message of every PENDING job whose cancellation was asked (SPEC §12), one
   consumer at a time (``CancelRequests.pending_notices``), whatever the backlog;
1. asks the broker how many messages the events queue holds ready (a passive declare), and goes
   no further unless none (nor if the queue is not there): a consumer outage or a backlog must
   never fail a live job;
2. waits until this process's own consumer has committed every delivery it had received by
   then (``Backlog``): those left the queue's ready count, but their receipts are not recorded yet;
3. runs ``LostJobs.check``, which decides under the one-at-a-time lock and asks the broker once
   more, just before committing the decisions, that nothing is ready;
4. publishes each decision's failed event through the workers' ``Publisher`` (confirmed, once:
   a failure ends the check); a decision not folded 30 s later (say, this process died between
   3 and 4) is published again, the same event;
5. with ``retention_days`` > 0, purges up to ``_PURGE_PER_CHECK`` finished jobs older than that.
First of all, whatever the queue holds, it prunes the stream's change log (SPEC §13) to its newest entries.

It has its own database engine and its own broker connection (counts and publishing on one
channel): pika connections are not thread-safe, and the consumer's must never wait on this.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from tracker import broker, cancels, leases, metrics, timefmt
from tracker.config import Settings
from tracker.errors import PublishFailed, StoreBroken, StoreUnavailable
from tracker.outages import OutageLog
from tracker.publisher import Publisher
from tracker.store import make_engine, open_job_store
from tracker.store.cancels import CancelRequests
from tracker.store.cursor import prune_log
from tracker.store.leases import LostJobs, purge

log = logging.getLogger(__name__)

_PURGE_PER_CHECK = 5000  # jobs; the rest wait for the next check, so no check takes long
_SETTLE_POLL_S = 0.01
_BROKER_ERRORS: tuple[type[Exception], ...] = (*broker.ERRORS, PublishFailed)


class Backlog(Protocol):
    """How far this process's consumer is: deliveries received, and those committed or given back.

    Both only grow; ``settled`` ≤ ``received``. Read from another thread (plain ints: atomic).
    """

    @property
    def received(self) -> int: ...

    @property
    def settled(self) -> int: ...


class Reaper:
    """The periodic check, on a thread of its own; ``start`` it, ``stop`` it (joins)."""

    def __init__(self, settings: Settings, backlog: Backlog | None = None) -> None:
        self._settings = settings
        self._backlog = backlog
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tracker-reaper", daemon=True)
        self._engine = make_engine(settings.database_url, pool_size=1, max_overflow=1)
        self._lost = LostJobs(self._engine, settings.job_timeout_s, cancel_grace_s=settings.cancel_grace_s)
        self._cancels = CancelRequests(open_job_store(self._engine))
        # Declares nothing (the consumer does). One attempt per event (timeout 0): a failed check
        # is tried again at the next, and what it decided is published again (step 4).
        self._channel = broker.ConfirmingChannel(settings, "tracker-reaper")
        self._publisher = Publisher(settings, timeout_s=0.0, channel=self._channel)
        self.published = 0
        # Said once when a service goes, then every minute while it stays away: not every interval.
        self._database = OutageLog(log, "lost-job check: the database answers again")
        self._broker = OutageLog(log, "lost-job check: RabbitMQ answers again")

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop, wait for it, and close what it opened."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close()
        self._engine.dispose()

    def _run(self) -> None:
        interval = self._settings.reap_interval_s
        while not self._stop.wait(interval):
            try:
                self.check()
            except StoreUnavailable as exc:
                broken = isinstance(exc, StoreBroken)
                problem = "database cannot run it (its schema or grants)" if broken else "database unavailable"
                self._database.failed(
                    f"lost-job check skipped: {problem}",
                    f"{exc}; tried again every {interval:g} s",
                    level=logging.ERROR if broken else logging.WARNING,
                )
            except _BROKER_ERRORS as exc:
                self._broker.failed(
                    "lost-job check skipped: broker unavailable",
                    f"{type(exc).__name__}: {exc}; tried again every {interval:g} s",
                )
                self._close()
            except Exception:
                # A bug here must not take the consumer down with it: say so, and try again later.
                log.exception("lost-job check failed")
                self._close()

    def check(self) -> int:
        """One check (the steps of the module's docstring); how many failed events it published."""
        # SPEC §13: the stream's change log keeps its newest entries, under load too
        prune_log(self._engine)
        self.repeat_cancels()
        caught_up = self._caught_up()
        self._broker.recovered()
        if not caught_up or not self._settled():
            return 0
        checked = self._lost.check(self._caught_up)
        self._database.recovered()
        published = 0
        if checked is not None:
            for lost in checked.new:
                log.warning("job %d is lost: %s; failing it", lost.job_id, lost.message, extra={"job_id": lost.job_id})
                self._publisher.publish(lost.failed_event())
                if lost.reason != "cancelled":  # counted as cancelled by the consumer that folds it
                    metrics.count_lost_jobs(lost.reason)
                published += 1
            for lost in checked.again:
                log.info("job %d: its failed event is not folded yet; publishing it again", lost.job_id)
                self._publisher.publish(lost.failed_event())
                published += 1
        if self._settings.retention_days > 0:
            cutoff = leases.purge_cutoff(timefmt.now(), self._settings.retention_days)
            deleted = purge(self._engine, cutoff, most=_PURGE_PER_CHECK)
            if deleted:
                log.info("purged %d jobs finished before %s", deleted, timefmt.format_time(cutoff))
        self.published += published
        return published

    def repeat_cancels(self) -> int | None:
        """Tell the workers of every PENDING job whose cancellation was asked, once more (SPEC §12);
        how many, or None when another consumer does it now. Step 0 of the check: not held back
        by a backlog, which delays no worker's hearing of its cancel."""
        told = self._cancels.pending_notices(self._tell, most=cancels.MAX_BULK)
        self._broker.recovered()
        return told

    def _tell(self, notices: list[cancels.CancelNotice]) -> None:
        channel = self._channel.open()
        for notice in notices:
            broker.publish_control(channel, self._settings, notice)

    def _settled(self) -> bool:
        """Whether this process's consumer commits, within one interval, all it has received so far."""
        if self._backlog is None:
            return True
        mark = self._backlog.received
        deadline = time.monotonic() + self._settings.reap_interval_s
        while self._backlog.settled < mark:
            if time.monotonic() > deadline or self._stop.wait(_SETTLE_POLL_S):
                return False
        return True

    def _caught_up(self) -> bool:
        """Whether the events queue holds no ready message (SPEC §6); False while it does not exist.

        Asked once more on a new connection if the one kept since the last check has gone
        (between checks nobody answers the broker's heartbeats on it, so long intervals outlive it).
        """
        try:
            ready = broker.count_messages(self._channel.open(), self._settings.queue)
        except broker.ERRORS:
            self._close()
            ready = broker.count_messages(self._channel.open(), self._settings.queue)
        if ready is None:
            log.warning("lost-job check skipped: the events queue %s does not exist", self._settings.queue)
            return False
        return leases.caught_up(ready)

    def _close(self) -> None:
        self._publisher.close()
