"""Jobs in the database: the one interface both dialects implement, and the factory that picks one.

``open_job_store(engine)`` gives a ``JobStore``: ``SQLiteJobStore`` folds batches with
``tracker.merge`` in Python (``sqlite.py``); ``PostgresJobStore`` folds a batch in two statements
whatever its size, the rule restated over sets in ``merge.sql`` (``postgresql.py``). The contract
tests run the same cases on both.

Errors: ``JobNotFound`` for a missing row; ``StoreUnavailable`` when the database cannot be
reached or fails mid-transaction (retry later: nothing was committed); ``StoreRefused`` when
``apply`` sends data the database will not take (nothing was committed; the same batch would be
refused again); anything else from the database is a bug or bad data and propagates.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tracker import listing, merge, timefmt
from tracker.errors import JobNotFound
from tracker.events import Event
from tracker.leases import JobLimits
from tracker.model import Applied, Job, JobPage, TimelineEvent
from tracker.store.engine import unavailable_as_error
from tracker.store.tables import async_status, async_status_event, async_status_lease

_IDS_PER_STATEMENT = 500  # well under SQLite's limit of bound parameters


PUBLIC_COLUMNS = (
    async_status.c.id,
    async_status.c.status,
    async_status.c.start_time,
    async_status.c.end_time,
    async_status.c.message,
)


class JobStore(abc.ABC):
    """The async_status table behind one engine. Safe to share between threads."""

    def __init__(self, engine: Engine, *, record_receipts: bool = True, keep_timeline: bool = True) -> None:
        """For the benchmark's A/Bs only: ``record_receipts=False`` folds without renewing heartbeat
        leases; ``keep_timeline=False`` keeps only the events the merge may need again (the message
        events inside R, ``merge.to_remember``), as the store did before the timeline."""
        self._engine = engine
        self._record_receipts = record_receipts
        self._keep_timeline = keep_timeline
        self._get = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id == sa.bindparam("job_id"))
        event = async_status_event.c
        # The job's row joined to its events: one statement, so one snapshot, and a job with no
        # events yet still answers (with one row of NULLs) where a missing job answers nothing.
        self._timeline = (
            sa.select(event.event_id, event.type, event.occurred_at, event.received_at, event.seq, event.message)
            .select_from(async_status.outerjoin(async_status_event, event.job_id == async_status.c.id))
            .where(async_status.c.id == sa.bindparam("job_id"))
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    def create_job(self, message: str | None = None, limits: JobLimits | None = None) -> Job:
        """Insert a PENDING job and return it; its id is new and never reused.

        With ``limits``, the job gets their deadline and, if they have one, its heartbeat lease
        (from now); without, it has no lease and the server's default deadline (SPEC §6).
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
        # One statement needs no transaction around it (as get_job): no BEGIN and ROLLBACK to wait on.
        with unavailable_as_error(), self._engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = conn.execute(_page_statement(_shape_of(query)), _window_of(query)).all()
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


def open_job_store(engine: Engine, *, record_receipts: bool = True, keep_timeline: bool = True) -> JobStore:
    """The JobStore for ``engine``'s dialect (PostgreSQL or SQLite); opens no connection.

    ``record_receipts=False`` and ``keep_timeline=False`` are for the benchmark's A/Bs of ingest
    with and without lease renewal, and with and without the timeline.
    """
    if engine.dialect.name == "postgresql":
        from tracker.store.postgresql import PostgresJobStore

        return PostgresJobStore(engine, record_receipts=record_receipts, keep_timeline=keep_timeline)
    if engine.dialect.name == "sqlite":
        from tracker.store.sqlite import SQLiteJobStore

        return SQLiteJobStore(engine, record_receipts=record_receipts, keep_timeline=keep_timeline)
    raise ValueError(f"unsupported database {engine.dialect.name!r}: use PostgreSQL or SQLite")


def _shape_of(query: listing.JobQuery) -> listing.JobQuery:
    """``query`` without the values that travel as parameters (``_window_of``): its statement's key."""
    return dataclasses.replace(
        query,
        limit=1,
        offset=0,
        id_below=None if query.id_below is None else 0,
        id_above=None if query.id_above is None else 0,
    )


def _window_of(query: listing.JobQuery) -> dict[str, int]:
    """The parameters of ``query``'s statement."""
    window = {"reach": query.reach, "limit": query.limit, "offset": query.offset, "count_cap": listing.COUNT_CAP + 1}
    if query.id_below is not None:
        window["id_below"] = query.id_below
    if query.id_above is not None:
        window["id_above"] = query.id_above
    return window


# Building the statement costs more than PostgreSQL takes to run it; there are a few hundred shapes.
@functools.lru_cache(maxsize=512)
def _page_statement(query: listing.JobQuery) -> sa.Select[Any]:
    """``matching`` (the rows matching ``query``'s filters, counted up to COUNT_CAP + 1 per status),
    then the public columns of the page's rows in order; a single row of ``matching`` and NULLs if none.

    The page: per kept status, the first ``reach`` rows in order, merged. NULL end times (PENDING
    jobs) count as later than any time: last ascending, first descending. Ties are broken by id,
    in the same direction.
    """

    def ordering(
        columns: sa.ColumnCollection[str, sa.ColumnElement[Any]], key: str = query.order_by
    ) -> list[sa.ColumnElement[Any]]:
        keys = [columns[key], columns["id"]] if key != "id" else [columns["id"]]
        ordered: list[sa.ColumnElement[Any]] = [column.desc() if query.descending else column.asc() for column in keys]
        if key == "end_time":
            first = ordered[0]
            ordered[0] = first.nulls_first() if query.descending else first.nulls_last()
        return ordered

    reach = sa.bindparam("reach", query.reach, type_=sa.BigInteger)
    ranges = []
    for status in query.kept_statuses:
        key = _range_key(status, query.order_by)
        if status == merge.PENDING:
            # Every running job, then sorted: through 0004's index of PENDING rows, never the primary
            # key, which the planner, taking PENDING rows to be spread evenly, would walk from the
            # oldest job to the running ones. A subquery with an OFFSET is planned on its own. Only
            # the ids and the key are sorted; the rows that make the cut are read by id.
            running = (
                sa.select(*dict.fromkeys((async_status.c.id, async_status.c[key])))
                .where(*_kept(status), *_id_bounds(query))
                .offset(0)
                .subquery()
            )
            first = sa.select(running.c.id).order_by(*ordering(running.c, key)).limit(reach)
            rows = sa.select(*PUBLIC_COLUMNS).where(async_status.c.id.in_(first))
        else:
            rows = (
                sa.select(*PUBLIC_COLUMNS)
                .where(*_kept(status), *_id_bounds(query))
                .order_by(*ordering(async_status.c, key))
                .limit(reach)
            )
        ranges.append(rows.subquery())
    merged = sa.union_all(*(sa.select(*r.c) for r in ranges)).subquery()
    page = (
        sa.select(*merged.c)
        .order_by(*ordering(merged.c))
        .limit(sa.bindparam("limit", query.limit, type_=sa.BigInteger))
        .offset(sa.bindparam("offset", query.offset, type_=sa.BigInteger))
        .subquery()
    )
    cap = sa.bindparam("count_cap", listing.COUNT_CAP + 1, type_=sa.BigInteger)
    capped = [
        sa.select(sa.literal(1)).select_from(async_status).where(*_kept(status), *_id_bounds(query)).limit(cap)
        for status in query.kept_statuses
    ]
    every = sa.union_all(*(sa.select(*c.subquery().c) for c in capped)).subquery()
    counted = sa.select(sa.func.count().label("matching")).select_from(every).subquery()
    return (
        sa.select(counted.c.matching, *page.c)
        .select_from(counted.outerjoin(page, sa.true()))
        .order_by(*ordering(page.c))
    )


def _kept(status: str) -> list[sa.ColumnElement[bool]]:
    """The conditions that keep the rows of one status, as migration 0006's partial indexes need them.

    The status is written into the statement (it is one of three constants), so that the planner
    knows which partial index holds its rows in every plan, generic ones too; a finished status
    also repeats the indexes' own condition, which SQLite needs word for word to use them.
    """
    kept = [async_status.c.status == sa.literal(status, literal_execute=True)]
    if status != merge.PENDING:
        kept.append(async_status.c.status != sa.literal(merge.PENDING, literal_execute=True))
    return kept


def _range_key(status: str, order_by: str) -> str:
    """The key one status's rows are read in for a list ordered by ``order_by``.

    Within one status, ordering by status is ordering by id; and a PENDING job's end_time is
    always NULL (the merge rule sets it with the terminal event), so its rows by end_time are its
    rows by id. PENDING rows are few (running jobs) and in no index of 0006: they are all read,
    through 0004's partial index of PENDING rows, and sorted.
    """
    if order_by == "status" or (status == merge.PENDING and order_by == "end_time"):
        return "id"
    return order_by


def matching_rows(query: listing.JobQuery) -> sa.Select[Any]:
    """A row for each job matching ``query``'s filters, whatever its page."""
    matching = sa.select(sa.literal(1)).select_from(async_status).where(*_id_bounds(query))
    if query.statuses:
        matching = matching.where(async_status.c.status.in_(query.statuses))
    return matching


def _id_bounds(query: listing.JobQuery) -> list[sa.ColumnElement[bool]]:
    """``query``'s conditions on the id: strictly below ``id_below``, strictly above ``id_above``."""
    bounds = []
    if query.id_below is not None:
        bounds.append(async_status.c.id < sa.bindparam("id_below", query.id_below, type_=sa.BigInteger))
    if query.id_above is not None:
        bounds.append(async_status.c.id > sa.bindparam("id_above", query.id_above, type_=sa.BigInteger))
    return bounds


def chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
