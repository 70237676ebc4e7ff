"""Jobs in the database: the one interface both dialects implement, and what they share.

``SQLiteJobStore`` folds batches with ``tracker.merge`` in Python (``sqlite.py``);
``PostgresJobStore`` folds a batch in two statements whatever its size, the rule restated over
sets in ``merge.sql`` (``postgresql.py``); ``tracker.store.open_job_store`` picks one for an
engine. The contract tests run the same cases on both.

Errors: ``JobNotFound`` for a missing row; ``StoreUnavailable`` when the database cannot be
reached or fails mid-transaction (retry later: nothing was committed); ``StoreRefused`` when
``apply`` sends data the database will not take (nothing was committed; the same batch would be
refused again); anything else from the database is a bug or bad data and propagates.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import listing, merge, timefmt, webhooks
from tracker.errors import JobNotFound
from tracker.events import Event
from tracker.labels import Labels
from tracker.leases import JobLimits
from tracker.model import Applied, Job, JobPage, TimelineEvent
from tracker.store import cursor
from tracker.store.engine import unavailable_as_error
from tracker.store.list_statement import matching_rows, page_of
from tracker.store.tables import PUBLIC_COLUMNS, async_status, async_status_event, async_status_lease

_IDS_PER_STATEMENT = 500  # well under SQLite's limit of bound parameters


class JobStore(abc.ABC):
    """The async_status table behind one engine. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._get = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id == sa.bindparam("job_id"))
        event = async_status_event.c
        # The job's row joined to its events: one statement, so one snapshot, and a job with no
        # events yet still answers (with one row of NULLs) where a missing job answers nothing.
        self._timeline = (
            sa.select(
                event.event_id,
                event.type,
                event.occurred_at,
                event.received_at,
                event.seq,
                event.message,
                event.progress,
                sa.cast(event.result, sa.Text),
                event.error_code,
                sa.cast(event.error_details, sa.Text),
            )
            .select_from(async_status.outerjoin(async_status_event, event.job_id == async_status.c.id))
            .where(async_status.c.id == sa.bindparam("job_id"))
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_job(
        self,
        message: str | None = None,
        limits: JobLimits | None = None,
        *,
        kind: str | None = None,
        labels: Labels = (),
        notify_url: str | None = None,
    ) -> Job:
        """Insert a PENDING job and return it; its id is new and never reused.

        With ``limits``, the job gets their deadline and, if they have one, its heartbeat lease
        (from now); without, it has no lease and the server's default deadline (SPEC §6).
        ``kind`` and ``labels`` (SPEC §11), checked by ``tracker.labels``, are kept for its life;
        so is ``notify_url`` (SPEC §13, checked by ``tracker.webhooks``), whose delivery is then
        pending until the job ends and it is made.
        """
        text = merge.DEFAULT_MESSAGE if message is None else message
        started = timefmt.now()
        statement = (
            sa.insert(async_status)
            .values(
                status=merge.PENDING,
                message=text,
                initial_message=text,
                start_time=started,
                deadline_at=None if limits is None else limits.deadline(started),
                kind=kind,
                labels=labels,
                notify_url=notify_url,
                notify_state=None if notify_url is None else webhooks.PENDING,
                notify_attempts=None if notify_url is None else 0,
            )
            .returning(*PUBLIC_COLUMNS)
        )
        expires_at = None if limits is None else limits.lease_expiry(started)
        with unavailable_as_error(), self._engine.begin() as conn:
            job = Job(*conn.execute(statement).one())
            if limits is not None and expires_at is not None:
                conn.execute(
                    sa.insert(async_status_lease).values(
                        job_id=job.id, heartbeat_timeout_s=limits.heartbeat_timeout_s, expires_at=expires_at
                    )
                )
        return job

    def get_job(self, job_id: int) -> Job:
        """The job's public row; raises JobNotFound."""
        # One statement needs no transaction around it: in autocommit the driver sends no BEGIN
        # before it and no ROLLBACK after, two round trips a GET would otherwise wait on.
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(self._get, {"job_id": job_id}).first()
        if row is None:
            raise JobNotFound(job_id)
        return Job(*row)

    def statuses(self, job_ids: Sequence[int]) -> dict[int, str]:
        """The status of each of ``job_ids`` that has a row (for waits on SQLite); raises StoreUnavailable."""
        found: dict[int, str] = {}
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            for part in chunks(job_ids, _IDS_PER_STATEMENT):
                query = sa.select(async_status.c.id, async_status.c.status).where(async_status.c.id.in_(part))
                found.update((job_id, status) for job_id, status in conn.execute(query))
        return found

    def change_counter(self) -> Callable[[], int] | None:
        """A function giving a number that moves whenever another connection has committed to the
        database, or None where there is none (PostgreSQL: its notifications serve instead).

        The function keeps a connection of its own: call it from one thread only. It raises
        StoreUnavailable when the database is away.
        """
        return None

    def timeline(self, job_id: int) -> list[TimelineEvent]:
        """Every accepted event of the job once, in merge-key order; raises JobNotFound.

        Sorted here, by ``merge.Key``: the database's collation of text need not be Python's.
        """
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")  # one statement: see get_job
            rows = conn.execute(self._timeline, {"job_id": job_id}).all()
        if not rows:
            raise JobNotFound(job_id)
        found = [TimelineEvent(*row) for row in rows if row.event_id is not None]
        return sorted(found, key=lambda event: event.key)

    def list_jobs(self, query: listing.JobQuery) -> JobPage:
        """The page of public rows ``query`` asks for, and their count (``listing.summary_count``).

        Each kept status is read on its own, in the order asked, as far as the page reaches, and
        the ranges merged: a finished status costs the page's offset plus its limit (an index
        range of migration 0006), PENDING as many rows as are running; neither grows with the
        table. The page and its count up to COUNT_CAP come from one statement, so from one
        snapshot. Raises StoreUnavailable.
        """
        if not query.kept_statuses:  # e.g. status=PENDING&errorCode=lost: no job can match
            return JobPage([], listing.Count(0))
        # One statement needs no transaction around it (as get_job): no BEGIN and ROLLBACK to wait on.
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            statement, parameters = page_of(query)
            rows = conn.execute(statement, parameters).all()
            counted = rows[0].matching if rows else 0
            jobs = [Job(*row[1:]) for row in rows if row.id is not None]
            if counted <= listing.COUNT_CAP:
                return JobPage(jobs, listing.Count(counted))
            return JobPage(jobs, self._count_beyond_cap(conn, query))

    def _count_beyond_cap(self, conn: sa.Connection, query: listing.JobQuery) -> listing.Count:
        """``summary.count`` when more than COUNT_CAP rows match ``query``'s filters: here exact,
        which costs a scan of an index (SQLite keeps no statistics to estimate from)."""
        counting = sa.select(sa.func.count()).select_from(matching_rows(query).subquery())
        return listing.Count(conn.execute(counting).scalar_one())

    def stream_position(self) -> int:
        """The stream's cursor now (SPEC §13, ``tracker.store.cursor``); raises StoreUnavailable."""
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            return cursor.position(conn)

    def changed_since(self, after: int, query: listing.JobQuery, most: int) -> cursor.Changes:
        """The rows matching ``query``'s filters changed after cursor ``after``, in commit order
        (``tracker.store.cursor.changed_since``); raises StoreUnavailable."""
        with unavailable_as_error(), self._engine.connect() as conn:
            if self._engine.dialect.name == "postgresql":
                # Each statement sees what committed before it, in a transaction or not: save its
                # BEGIN and COMMIT, two round trips a read (SQLite's reads share one snapshot).
                conn.execution_options(isolation_level="AUTOCOMMIT")
            with conn.begin():
                return cursor.changed_since(conn, after, query, most)

    @abc.abstractmethod
    def apply(self, events: Sequence[Event]) -> Applied:
        """Fold a batch of events into their jobs in one transaction, committed before returning.

        Rows are locked in id order, so concurrent batches over the same jobs serialise instead
        of losing updates or deadlocking. In the same transaction, the heartbeat lease of each
        job of the batch that has one is renewed from now (the receipt), or deleted if the job is
        no longer PENDING. Raises StoreUnavailable when the database is away, and StoreRefused
        when it refuses the batch (a value it cannot store, a constraint); either way nothing was
        committed.
        """


def chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
