"""The webhooks' side of the database (SPEC §13): due deliveries taken by one deliverer at a time, and settled.

The fold queues a delivery (a row of ``async_status_delivery``) in the transaction that ends its
job. ``Deliveries.claim`` takes the due ones: in one transaction it marks each as this attempt's
until ``lease_s`` from now (its ``due_at`` and ``claim``) and counts the attempt in the job's row
(``notify_attempts``), under a lock, so that no two deliverers take the same delivery: on
PostgreSQL the rows' own (``FOR UPDATE SKIP LOCKED``: another claimer passes them over rather than
wait), on SQLite the database's write lock (``BEGIN IMMEDIATE``). Then the attempt is made, outside
any transaction, and settled (``delivered``, ``retry``, ``given_up``) only while the claim is still
its own. A deliverer killed mid-attempt settles nothing: the claim lapses at its ``due_at`` and the
next deliverer takes the delivery over. Times are the database's clock on PostgreSQL, as the
fold's are.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import timefmt, webhooks
from tracker.model import Job
from tracker.store.engine import unavailable_as_error
from tracker.store.tables import PUBLIC_COLUMNS, UTCDateTime, async_status, async_status_delivery

_delivery = async_status_delivery.c
_job = async_status.c


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A delivery taken for one attempt: its job's row (``notify_attempts`` counting this attempt),
    the claim that holds it, when it was queued and when it was taken (the database's clock)."""

    job: Job
    claim: str
    queued_at: dt.datetime
    claimed_at: dt.datetime

    @property
    def since_queued_s(self) -> float:
        return (self.claimed_at - self.queued_at).total_seconds()


class Deliveries:
    """The queued webhook deliveries behind one engine; safe to share between threads.

    Every method raises StoreUnavailable when the database is away (nothing was committed).
    """

    def __init__(self, engine: Engine, lease_s: float) -> None:
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"
        self._lease = dt.timedelta(seconds=lease_s)

    def claim(self, most: int) -> tuple[list[Claimed], float | None]:
        """Take up to ``most`` due deliveries, oldest due first, for an attempt each; and the seconds
        until the next queued one is due, once these are taken (None: none is queued)."""
        token = str(uuid.uuid4())
        with unavailable_as_error(), self._engine.connect() as conn:
            if not self._postgresql:
                conn.execution_options(immediate=True)  # SQLite: the write lock, up front
            with conn.begin():
                now = self._now()
                due = (
                    sa.select(_delivery.job_id)
                    .where(_delivery.due_at <= now)
                    .order_by(_delivery.due_at)
                    .limit(most)
                    .with_for_update(skip_locked=True)
                )
                taken = conn.execute(
                    sa.update(async_status_delivery)
                    .where(_delivery.job_id.in_(due.scalar_subquery()))
                    .values(due_at=self._now(self._lease), claim=token)
                    .returning(_delivery.job_id, _delivery.queued_at, now.label("now"))
                ).all()
                claimed: list[Claimed] = []
                if taken:
                    queued = {row.job_id: (row.queued_at, row.now) for row in taken}
                    # Locked in id order, as the fold locks them: the two wait for each other, never deadlock.
                    ordered = sa.select(_job.id).where(_job.id.in_(list(queued))).order_by(_job.id).with_for_update()
                    conn.execute(
                        sa.update(async_status)
                        .where(_job.id.in_(ordered.scalar_subquery()))
                        .values(notify_attempts=sa.func.coalesce(_job.notify_attempts, 0) + 1)
                    )
                    # Read as GET reads it (SQLite's RETURNING gives a REAL column's whole numbers as integers).
                    rows = conn.execute(sa.select(*PUBLIC_COLUMNS).where(_job.id.in_(list(queued))).order_by(_job.id))
                    for row in rows:
                        job = Job(*row)
                        queued_at, claimed_at = queued[job.id]
                        claimed.append(Claimed(job, token, queued_at, claimed_at))
                next_due, now_again = conn.execute(sa.select(sa.func.min(_delivery.due_at), self._now())).one()
        return claimed, None if next_due is None else (next_due - now_again).total_seconds()

    def delivered(self, claimed: Claimed) -> bool:
        """The attempt succeeded: the delivery is done (``delivered``). False if the claim had lapsed
        and another took the delivery over (then nothing is changed: that one settles it)."""
        return self._settle(claimed, webhooks.DELIVERED)

    def given_up(self, claimed: Claimed) -> bool:
        """The attempt failed and there will be no other (``failed``). False as for ``delivered``."""
        return self._settle(claimed, webhooks.FAILED)

    def retry(self, claimed: Claimed, after_s: float) -> bool:
        """The attempt failed: the delivery is due again ``after_s`` seconds from now. False as for ``delivered``."""
        with unavailable_as_error(), self._engine.begin() as conn:
            mine = _delivery.job_id == claimed.job.id, _delivery.claim == claimed.claim
            statement = sa.update(async_status_delivery).where(*mine)
            changed = conn.execute(statement.values(due_at=self._now(dt.timedelta(seconds=after_s)), claim=None))
            return changed.rowcount == 1

    def _settle(self, claimed: Claimed, state: str) -> bool:
        with unavailable_as_error(), self._engine.begin() as conn:
            mine = _delivery.job_id == claimed.job.id, _delivery.claim == claimed.claim
            if conn.execute(sa.delete(async_status_delivery).where(*mine)).rowcount != 1:
                return False
            conn.execute(sa.update(async_status).where(_job.id == claimed.job.id).values(notify_state=state))
            return True

    def _now(self, later: dt.timedelta = dt.timedelta(0)) -> sa.ColumnElement[dt.datetime]:
        """Now (plus ``later``) as the statement should see it: the database's clock on PostgreSQL
        (the transaction's start), this process's on SQLite, which has no time type."""
        if self._postgresql:
            now: sa.ColumnElement[dt.datetime] = sa.func.now(type_=UTCDateTime())
            return now + sa.literal(later, sa.Interval()) if later else now
        return sa.literal(timefmt.now() + later, UTCDateTime())
