"""The stream's cursor (SPEC §13): reading the jobs changed since a position, in commit order.

Every statement that writes rows of async_status appends an entry per row to the change log
``async_status_change`` (migration 0015's triggers, for every writer: the fold, creation, the
webhooks' deliverer, an operator's SQL); its ``seq`` is the cursor. A stream remembers the highest
cursor it has sent and reads the jobs with an entry above it, each once, as they are now.

That is only sound if cursors become visible in the order they are given: a reader that has seen
cursor 101 must never later find a 100 committed after it. An identity column alone does not give
that: two transactions take 100 and 101, the one with 101 commits first, a reader moves past 101,
and 100 appears behind it. Two ways out were weighed:

- Read only below the oldest transaction still in flight (``pg_snapshot_xmin``, the outbox
  pattern): writers pay nothing, but a reader must map cursors to transaction ids, and any long
  write transaction (a purge, a migration, an operator's session) holds every stream back, so
  "within milliseconds of the commit" would depend on strangers.
- **Chosen**: give cursors in commit order. The log's trigger takes one transaction-scoped advisory
  lock (``STREAM_LOCK``) before it takes cursors, at the end of the writing statement, and the
  writer holds it until it commits; so cursors are given, and become visible, one transaction
  after the other (PostgreSQL releases a transaction's locks only once its commit is visible).
  The cost: the commits of concurrent writers take turns (docs/performance.md measures it). It
  cannot deadlock as long as the writing statement is the last of its transaction that takes a
  lock: every writer of async_status ends its transaction with it (the fold's merge, creation's
  insert before the lease of the same new job, the deliverer's update) — and the triggers are
  named to fire after the table's others.
- SQLite needs neither: a writer holds the database's one write lock from its first write to its
  commit (the folds begin IMMEDIATE), so writes already commit in the order they are made.

A log entry without a job (rows were deleted), or a cursor below the pruned part of the log, or
beyond its end (another database's), cannot be resumed: the stream says ``reset`` (the client
reloads). The log is pruned (``prune``) by the consumers' periodic check.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import util as sql_util

from tracker import listing
from tracker.model import Job
from tracker.store.engine import unavailable_as_error
from tracker.store.list_statement import filters_of
from tracker.store.tables import PUBLIC_COLUMNS, async_status, async_status_change, async_status_stream

STREAM_LOCK = 1953653099  # pg_advisory_xact_lock's key in migration 0015's trigger ('trak')
KEPT_ENTRIES = 1_000_000  # the log keeps about this many newest entries (some hours of a busy tracker)
_PRUNED_PER_STATEMENT = 50_000

_log = async_status_change.c


@dataclasses.dataclass(frozen=True)
class Changes:
    """What changed after a cursor: the rows, each with its cursor, in cursor order (at most the
    number asked for); or ``reset``, when the cursor cannot be resumed. ``position``: the cursor to
    go on from (the last row's; the stream's position when no row is given or on a reset)."""

    rows: tuple[tuple[int, Job], ...]
    position: int
    reset: bool = False


def position(conn: sa.Connection) -> int:
    """The stream's position now: every change at or below it is committed and visible, none
    above it is yet."""
    return int(conn.execute(sa.select(_position_of(conn.dialect.name))).scalar_one())


def _position_of(dialect: str) -> sa.ColumnElement[Any]:
    latest = sa.select(sa.func.coalesce(sa.func.max(_log.seq), 0)).scalar_subquery()
    larger = sa.func.greatest if dialect == "postgresql" else sa.func.max
    return larger(latest, async_status_stream.c.pruned_upto)


def changed_since(conn: sa.Connection, after: int, query: listing.JobQuery, most: int) -> Changes:
    """The rows matching ``query``'s filters (not its order or page) changed after cursor ``after``,
    each once, as they are now, at most ``most`` of them; or a reset, when ``after`` cannot be
    resumed (rows deleted since, pruned, or a cursor never given).

    The position goes on to the stream's position at the read when fewer than ``most`` rows match,
    whether any does or not: a stream whose filter matches few of the changes (one kind of many)
    would otherwise read every change since its last match at each notification, ever more of them."""
    found = conn.execute(_changed_statement(conn.dialect.name, query), {"after": after, "most": most}).all()
    now = int(found[0][0])  # the position in the same snapshot as the rows: nothing at or below it is missed
    # Read after the rows: whatever was deleted or pruned before they were read is seen here.
    pruned_upto, deleted = conn.execute(_resumable_statement(), {"after": after}).one()
    if after < pruned_upto or deleted or after > now:
        return Changes((), max(now, pruned_upto), reset=True)
    changes = tuple((int(row[1]), Job(*row[2:])) for row in found if row[1] is not None)
    return Changes(changes, changes[-1][0] if len(changes) >= most else now)


def prune(conn: sa.Connection, keep: int = KEPT_ENTRIES) -> int:
    """Delete the log's entries older than the newest ``keep`` (by cursor; at most
    _PRUNED_PER_STATEMENT at a time) and move ``pruned_upto``; how many were deleted."""
    newest = conn.execute(sa.select(sa.func.max(_log.seq))).scalar_one()
    oldest = conn.execute(sa.select(sa.func.min(_log.seq))).scalar_one()
    if newest is None or oldest is None or newest - oldest < keep:
        return 0
    upto = min(newest - keep, oldest + _PRUNED_PER_STATEMENT)
    deleted = conn.execute(sa.delete(async_status_change).where(_log.seq <= upto)).rowcount
    conn.execute(
        sa.update(async_status_stream).values(pruned_upto=upto).where(async_status_stream.c.pruned_upto < upto)
    )
    return int(deleted)


def prune_log(engine: sa.Engine, keep: int = KEPT_ENTRIES) -> int:
    """``prune`` in a transaction of its own (SQLite: its write lock up front); raises StoreUnavailable."""
    with unavailable_as_error(), engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn.execution_options(immediate=True)
        with conn.begin():
            return prune(conn, keep)


# A stream reads at each notification (every commit of a busy tracker): its statements are built
# once, not at each read (building and keying them cost more than PostgreSQL takes to run them).
# Their plans must not hang on the tables' statistics (a fresh or just-emptied table has none, and
# the log is only ever appended to): the deletions' check reads a partial index of deletions only
# (migration 0016), and each changed job's row is found by its key.
@functools.lru_cache(maxsize=1)
def _resumable_statement() -> sa.Select[Any]:
    """The log's pruned bound, and whether a change after ``after`` is of a deleted row: one round trip."""
    gone = sa.exists().where(_log.job_id.is_(None), _log.seq > sa.bindparam("after", type_=sa.BigInteger))
    return sa.select(async_status_stream.c.pruned_upto, gone)


@functools.lru_cache(maxsize=256)
def _changed_statement(dialect: str, query: listing.JobQuery) -> sa.Select[Any]:
    """The stream's position, then (seq, the row's public columns) of each job changed after
    ``after`` that matches ``query``, in seq order, at most ``most``; one row of the position alone
    (its other columns NULL) when none does. One statement: one snapshot for both."""
    latest = (
        sa.select(_log.job_id, sa.func.max(_log.seq).label("seq"))
        .where(_log.seq > sa.bindparam("after", type_=sa.BigInteger), _log.job_id.is_not(None))
        .group_by(_log.job_id)
        .subquery("latest")
    )
    if dialect == "postgresql":
        # LIMIT 1 keeps PostgreSQL from merging the lookup into a join it would plan from the
        # statistics (without them, a scan of every matching row for each changed job).
        job = sa.select(async_status).where(async_status.c.id == latest.c.job_id).limit(1).lateral("job")
        adapt = sql_util.ClauseAdapter(job).traverse
        page = (
            sa.select(latest.c.seq, *(adapt(column) for column in PUBLIC_COLUMNS))
            .select_from(latest)
            .join(job, sa.true())
            .where(*(adapt(condition) for condition in filters_of(query)))
        )
    else:  # SQLite looks each row up by its key anyway
        page = (
            sa.select(latest.c.seq, *PUBLIC_COLUMNS)
            .join_from(latest, async_status, async_status.c.id == latest.c.job_id)
            .where(*filters_of(query))
        )
    rows = page.order_by(latest.c.seq).limit(sa.bindparam("most", type_=sa.Integer)).subquery("page")
    now = sa.select(_position_of(dialect).label("now")).subquery("now")
    return sa.select(now.c.now, *rows.c).select_from(now.outerjoin(rows, sa.true())).order_by(rows.c.seq)
