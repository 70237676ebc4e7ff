"""The lost-job check's and retention's side of the database (SPEC §6), on PostgreSQL and SQLite.

``LostJobs.check`` finds the PENDING jobs whose deadline or lease has run out, by the partial
indexes of migration 0004 (so its cost follows the number of running jobs, not of rows), takes
one decision per job (``tracker.leases.decide``), and records it before anyone publishes it.
One check runs at a time across every consumer: on PostgreSQL under a transaction-level advisory
lock that a second checker does not wait for; on SQLite under the database's write lock
(``BEGIN IMMEDIATE``). ``purge`` deletes finished jobs in small transactions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import leases, timefmt
from tracker.store.engine import unavailable_as_error
from tracker.store.tables import UTCDateTime, async_status, async_status_lease, async_status_lost

# pg_try_advisory_xact_lock's key: any fixed bigint no other part of the schema uses ("tracker6").
_CHECK_LOCK_KEY = 0x747261636B657236
_LOCK_AND_NOW = sa.text(f"SELECT pg_try_advisory_xact_lock({_CHECK_LOCK_KEY}), now()")
_RECORD = sa.text(
    "INSERT INTO async_status_lost (job_id, reason, limit_s, decided_at) "
    "SELECT unnest(CAST(:ids AS bigint[])), unnest(CAST(:reasons AS text[])), unnest(CAST(:limits AS int[])), "
    ":decided_at"
).bindparams(sa.bindparam("decided_at", type_=UTCDateTime()))
_PURGE_PAUSE_S = 0.01  # between purge batches: lets the consumers' and the API's writes in

_job = async_status.c
_lease = async_status_lease.c
_RENEW_SLACK = dt.timedelta(seconds=leases.RENEW_SLACK_S)
_lost = async_status_lost.c
# Written as literals, not parameters: only then can the planners (PostgreSQL's generic plans,
# SQLite's always) see that a query's rows are those of a partial index.
_PENDING = _job.status == sa.literal_column("'PENDING'")
_FINISHED = _job.status != sa.literal_column("'PENDING'")


def overdue_cancels_query(asked_before: dt.datetime, most: int) -> sa.Select[int, dt.datetime]:
    """The grace's read: PENDING jobs, not yet decided lost, whose cancellation was asked before
    ``asked_before``, oldest first; it walks the partial index of requests (migration 0014)."""
    undecided = ~sa.exists().where(_lost.job_id == _job.id)
    return (
        sa.select(_job.id, _job.cancel_requested_at)
        .where(_PENDING, _job.cancel_requested_at <= asked_before, undecided)
        .order_by(_job.cancel_requested_at)
        .limit(most)
    )


@dataclasses.dataclass(frozen=True)
class Checked:
    """What one check decided: ``new`` decisions, and older ones whose job is still PENDING (``again``).

    Both are to be published; an ``again`` decision gives the very event it gave the first time.
    """

    new: tuple[leases.Lost, ...]
    again: tuple[leases.Lost, ...]


class LostJobs:
    """Finds lost jobs and keeps the decisions until their failed events are folded.

    ``default_timeout_s`` is the deadline of rows made before migration 0004 (``deadline_at``
    NULL). A job whose cancellation was asked ``cancel_grace_s`` ago and is still PENDING is
    failed too (SPEC §12: reason ``cancelled``). A decision still PENDING ``republish_after_s``
    after it was taken is given again (its event was lost, say, with a consumer that crashed
    between recording and publishing it).
    """

    def __init__(
        self,
        engine: Engine,
        default_timeout_s: int,
        *,
        most: int = 1000,
        republish_after_s: float = 30.0,
        cancel_grace_s: int = 60,
    ) -> None:
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"
        self._default_timeout = dt.timedelta(seconds=default_timeout_s)
        self._default_timeout_s = default_timeout_s
        self._most = most
        self._republish_after = dt.timedelta(seconds=republish_after_s)
        self._cancel_grace_s = cancel_grace_s
        self._cancel_grace = dt.timedelta(seconds=cancel_grace_s)

    def check(self, caught_up: Callable[[], bool]) -> Checked | None:
        """Decide which jobs are lost now, and record the decisions; None if another check runs.

        ``caught_up`` is asked last, just before the decisions are committed: if it answers
        False (the events queue holds ready messages), nothing is recorded and None returned.
        Raises StoreUnavailable.
        """
        with unavailable_as_error(), self._engine.connect() as conn:
            if not self._postgresql:
                conn.execution_options(immediate=True)  # SQLite: the write lock, up front
            with conn.begin() as transaction:
                if self._postgresql:
                    locked, now = conn.execute(_LOCK_AND_NOW).one()
                    if not locked:
                        return None
                else:
                    now = timefmt.now()
                self._forget_finished(conn)
                decided = leases.decide(self._expired(conn, now), now)[: self._most]
                again = self._undelivered(conn, now)
                if not caught_up():
                    transaction.rollback()
                    return None
                if decided:
                    self._record(conn, decided, now)
        return Checked(tuple(decided), again)

    def _record(self, conn: sa.Connection, decided: list[leases.Lost], now: dt.datetime) -> None:
        if self._postgresql:
            # One statement of three arrays: a row of parameters per decision cost ~0.1 ms each.
            conn.execute(
                _RECORD,
                {
                    "ids": "{" + ",".join(str(d.job_id) for d in decided) + "}",
                    "reasons": "{" + ",".join(d.reason for d in decided) + "}",
                    "limits": "{" + ",".join(str(d.limit_s) for d in decided) + "}",
                    "decided_at": now,
                },
            )
            return
        conn.execute(
            sa.insert(async_status_lost),
            [{"job_id": d.job_id, "reason": d.reason, "limit_s": d.limit_s, "decided_at": now} for d in decided],
        )

    def _forget_finished(self, conn: sa.Connection) -> None:
        """Drop the decisions whose job is no longer PENDING: their event (or an earlier one) was folded."""
        # As an anti-join with the PENDING rows: its cost follows the number of running jobs or of
        # decisions, never the table's (an IN over finished rows was planned as a scan of them).
        conn.execute(sa.delete(async_status_lost).where(~sa.exists().where(_job.id == _lost.job_id, _PENDING)))

    def _expired(self, conn: sa.Connection, now: dt.datetime) -> list[leases.Expired]:
        undecided = ~sa.exists().where(_lost.job_id == _job.id)
        pending = _PENDING
        expired: list[leases.Expired] = []
        # Each query walks one partial index over PENDING rows, from the oldest expiry, and stops.
        dated = conn.execute(
            sa.select(_job.id, _job.start_time, _job.deadline_at)
            .where(pending, _job.deadline_at <= now, undecided)
            .order_by(_job.deadline_at)
            .limit(self._most)
        ).all()
        for job_id, start_time, deadline_at in dated:
            limit_s = round((deadline_at - start_time).total_seconds())
            expired.append(leases.Expired(job_id, "timeout", limit_s, deadline_at))
        undated = conn.execute(
            sa.select(_job.id, _job.start_time)
            .where(pending, _job.deadline_at.is_(None), _job.start_time <= now - self._default_timeout, undecided)
            .order_by(_job.start_time)
            .limit(self._most)
        ).all()
        for job_id, start_time in undated:
            expired.append(
                leases.Expired(job_id, "timeout", self._default_timeout_s, start_time + self._default_timeout)
            )
        # A lease exists only while its job is PENDING: the fold deletes it in the transaction that
        # finishes the job. So no join with async_status (which the planner made a hash join over
        # every PENDING row). The table holds only running jobs with a lease, and is read whole:
        # an index on expires_at would make every renewal by the fold a non-HOT update.
        leased = conn.execute(
            sa.select(_lease.job_id, _lease.heartbeat_timeout_s, _lease.expires_at)
            .where(_lease.expires_at <= now - _RENEW_SLACK, ~sa.exists().where(_lost.job_id == _lease.job_id))
            .order_by(_lease.expires_at)
            .limit(self._most)
        ).all()
        for job_id, timeout_s, expires_at in leased:
            expired.append(leases.Expired(job_id, "heartbeat", timeout_s, expires_at))
        # Cancelled jobs whose worker did not stop in time: few at any moment, among the PENDING rows.
        ignored = conn.execute(overdue_cancels_query(now - self._cancel_grace, self._most)).all()
        for job_id, requested_at in ignored:
            expired.append(leases.Expired(job_id, "cancelled", self._cancel_grace_s, requested_at + self._cancel_grace))
        return expired

    def _undelivered(self, conn: sa.Connection, now: dt.datetime) -> tuple[leases.Lost, ...]:
        rows = conn.execute(
            sa.select(_lost.job_id, _lost.reason, _lost.limit_s, _lost.decided_at)
            .join(async_status, _job.id == _lost.job_id)
            .where(_PENDING, _lost.decided_at <= now - self._republish_after)
            .order_by(_lost.job_id)
            .limit(self._most)
        ).all()
        return tuple(leases.Lost(job_id, reason, limit_s, decided_at) for job_id, reason, limit_s, decided_at in rows)


def purge(engine: Engine, finished_before: dt.datetime, *, batch: int = 500, most: int | None = None) -> int:
    """Delete finished jobs whose end_time is before ``finished_before``, with all they keep; how many.

    In transactions of at most ``batch`` jobs, with a pause between them, so that no lock is held
    long and the writers of the API and the consumers get their turns. Stops after ``most`` jobs
    (None: when none are left). PENDING jobs are never deleted. Raises StoreUnavailable.
    """
    oldest = (
        sa.select(_job.id)
        .where(_FINISHED, _job.end_time < finished_before)
        .order_by(_job.end_time)
        .limit(sa.bindparam("batch"))
    )
    statement = sa.delete(async_status).where(_job.id.in_(oldest))
    deleted = 0
    while most is None or deleted < most:
        size = batch if most is None else min(batch, most - deleted)
        with unavailable_as_error(), engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.execution_options(immediate=True)
            with conn.begin():
                count = conn.execute(statement, {"batch": size}).rowcount
        deleted += count
        if count < size:
            break
        time.sleep(_PURGE_PAUSE_S)
    return deleted
