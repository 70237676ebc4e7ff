"""Cancel requests in the database (SPEC §12): record them as events, and find what to tell workers.

A request is a ``cancel_requested`` event folded by the job store like any other (so it is in the
timeline and survives what every event survives); what workers are told comes from the rows:
every PENDING job with a ``cancel_requested_at``, and the message of that earliest request.
``pending_notices`` runs one consumer at a time on PostgreSQL (a transaction-level advisory lock
held while the caller publishes), so the repeat is not multiplied by the number of consumers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import sqlalchemy as sa

from tracker import cancels, listing, merge
from tracker.errors import JobFinished
from tracker.model import Job
from tracker.store.engine import unavailable_as_error
from tracker.store.jobs import JobStore, chunks
from tracker.store.list_statement import filter_conditions
from tracker.store.tables import async_status, async_status_event

# pg_try_advisory_xact_lock's key for the repeat of cancel messages ("trak12" and two zero bytes), not the
# lost-job check's.
_REPEAT_LOCK_KEY = 0x7472616B31320000
_APPLY_CHUNK = 1000

_job = async_status.c
_event = async_status_event.c
_PENDING = _job.status == sa.literal_column("'PENDING'")
_NOTICES = (
    sa.select(_job.id, _job.cancel_requested_at, _event.message)
    .select_from(
        async_status.outerjoin(
            async_status_event, sa.and_(_event.job_id == _job.id, _event.event_id == _job.cancel_event_id)
        )
    )
    .where(_PENDING, _job.cancel_requested_at.is_not(None))
)


def notices_query(most: int) -> sa.Select[int, dt.datetime, str | None]:
    """The repeat's read: the oldest ``most`` requests of PENDING jobs, ties by id, walking the
    partial index of them (migration 0014; its test EXPLAINs this)."""
    return _NOTICES.order_by(_job.cancel_requested_at, _job.id).limit(most)


class CancelRequests:
    """Records cancel requests through ``store`` and reads what workers are to be told."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def request(self, job_id: int, message: str, at: dt.datetime) -> tuple[Job, cancels.CancelNotice]:
        """Ask for ``job_id``'s cancellation at ``at``: its row now, and what to tell its worker.

        Asking again records nothing new (the first request stays). Raises JobNotFound,
        JobFinished (the job ended before the request was recorded), StoreUnavailable.
        """
        job = self._store.get_job(job_id)
        if job.status != merge.PENDING:
            raise JobFinished(job_id, job.status)
        if job.cancel_requested_at is None:
            self._store.apply([cancels.request_event(job_id, message, at)])
            job = self._store.get_job(job_id)
            if job.cancel_requested_at is None:
                # It ended before the request: the request came after its terminal event.
                raise JobFinished(job_id, job.status)
        notices = self.notices([job_id])
        notice = notices[0] if notices else cancels.CancelNotice(job_id, job.cancel_requested_at, message)
        return job, notice

    def request_many(
        self, where: listing.JobFilter, message: str, at: dt.datetime, most: int = cancels.MAX_BULK
    ) -> list[cancels.CancelNotice]:
        """Ask for the cancellation of every PENDING job ``where`` chooses (the list's filters),
        ``most`` of them at most (lowest ids first): what to tell their workers. Jobs already asked
        keep their first request. Raises StoreUnavailable."""
        if merge.PENDING not in where.kept_statuses:
            return []
        statement = (
            sa.select(_job.id, _job.cancel_requested_at)
            .where(_PENDING, *filter_conditions(where))
            .order_by(_job.id)
            .limit(most)
        )
        with unavailable_as_error(), self._store.engine.connect() as conn:
            rows = conn.execute(statement).all()  # its parameters carry their values
        new = [job_id for job_id, requested_at in rows if requested_at is None]
        for part in chunks(new, _APPLY_CHUNK):
            self._store.apply([cancels.request_event(job_id, message, at) for job_id in part])
        return self.notices([job_id for job_id, _ in rows])

    def notices(self, job_ids: Sequence[int]) -> list[cancels.CancelNotice]:
        """What to tell the workers of those of ``job_ids`` that are PENDING with a request; raises StoreUnavailable."""
        found: list[cancels.CancelNotice] = []
        with unavailable_as_error(), self._store.engine.connect() as conn:
            for part in chunks(job_ids, 500):
                rows = conn.execute(_NOTICES.where(_job.id.in_(part)).order_by(_job.id)).all()
                found.extend(cancels.CancelNotice(*row) for row in rows)
        return found

    def pending_notices(self, tell: Callable[[list[cancels.CancelNotice]], None], most: int) -> int | None:
        """Call ``tell`` with what to tell the workers of every PENDING job whose cancellation was
        asked (``most`` at most, oldest requests first); how many, or None when another consumer
        is doing it now (PostgreSQL). Raises StoreUnavailable, and what ``tell`` raises."""
        with unavailable_as_error(), self._store.engine.connect() as conn, conn.begin():
            if self._store.engine.dialect.name == "postgresql":
                locked = conn.execute(sa.text(f"SELECT pg_try_advisory_xact_lock({_REPEAT_LOCK_KEY})")).scalar_one()
                if not locked:
                    return None
            rows = conn.execute(notices_query(most)).all()
            notices = [cancels.CancelNotice(*row) for row in rows]
            if notices:
                # Under the lock, so that one consumer at a time tells them.
                tell(notices)
        return len(notices)
