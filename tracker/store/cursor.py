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
    resumed (rows deleted since, pruned, or a cursor never given)."""
    rows = conn.execute(_changed_statement(query), {"after": after, "most": most}).all()
    # Read after the rows: whatever was deleted or pruned before they were read is seen here.
    pruned_upto, deleted, now = conn.execute(_resumable_statement(conn.dialect.name), {"after": after}).one()
    if after < pruned_upto or deleted or after > now:
        return Changes((), now, reset=True)
    if not rows:
        return Changes((), after)
    changes = tuple((int(row[0]), Job(*row[1:])) for row in rows)
    return Changes(changes, changes[-1][0])


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
@functools.lru_cache(maxsize=2)
def _resumable_statement(dialect: str) -> sa.Select[Any]:
    """The log's pruned bound, whether a change after ``after`` is of a deleted row, the position
    now: one round trip."""
    gone = sa.exists().where(_log.seq > sa.bindparam("after", type_=sa.BigInteger), _log.job_id.is_(None))
    return sa.select(async_status_stream.c.pruned_upto, gone, _position_of(dialect))


@functools.lru_cache(maxsize=256)
def _changed_statement(query: listing.JobQuery) -> sa.Select[Any]:
    latest = (
        sa.select(_log.job_id, sa.func.max(_log.seq).label("seq"))
        .where(_log.seq > sa.bindparam("after", type_=sa.BigInteger), _log.job_id.is_not(None))
        .group_by(_log.job_id)
        .subquery()
    )
    return (
        sa.select(latest.c.seq, *PUBLIC_COLUMNS)
        .join_from(latest, async_status, async_status.c.id == latest.c.job_id)
        .where(*filters_of(query))
        .order_by(latest.c.seq)
        .limit(sa.bindparam("most", type_=sa.Integer))
    )
