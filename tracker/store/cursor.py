"""The stream's cursor (SPEC §13): reading the rows changed since a position, in commit order.

Every write of a row of async_status stamps it (``change_seq``) with the next value of one
counter: PostgreSQL's sequence ``async_status_change_seq``, SQLite's ``async_status_stream.last_change``
(migration 0015). A stream remembers the highest cursor it has sent and reads ``change_seq >`` it.

That is only sound if cursors become visible in the order they are given: a reader that has seen
cursor 101 must never later find a 100 that committed after it. A sequence alone does not give
that: two transactions take 100 and 101, the one with 101 commits first, a reader moves past 101,
and 100 appears behind it. Two ways out were weighed:

- Read only below the oldest transaction still in flight (``pg_snapshot_xmin``, the outbox
  pattern): writers pay nothing, but a reader must map cursors to transaction ids, and any long
  write transaction (a purge, a migration, an operator's session) holds every stream back, so
  "within milliseconds of the commit" would depend on strangers.
- **Chosen**: give cursors in commit order. Each writer takes one transaction-scoped advisory lock
  (``STREAM_LOCK``) right before it takes its first cursor, as the last lock of its transaction,
  and holds it until it commits; so cursors are given, and become visible, one transaction after
  the other (PostgreSQL releases a transaction's locks only once its commit is visible). The cost
  is that the tail of concurrent folds — the merge's update and the commit — runs one at a time
  (docs/performance.md measures it); a fold that changes no row takes no cursor and, when its
  batch has no job, no lock. It cannot deadlock: a writer takes the lock only once it holds every
  row lock it will need, and after it takes nothing another writer could hold while waiting for it.
  The fold takes it in merge.sql; creation, the webhooks' deliverer and an operator's SQL through
  the triggers of migration 0015.
- SQLite needs neither: a writer holds the database's one write lock from its first write to its
  commit (the folds begin IMMEDIATE), so writes already commit in the order they are made.

A deletion moves ``reset_before`` past every cursor given so far: a stream behind it cannot be
resumed (its client would keep rows that are gone) and is told to reload (``event: reset``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from tracker import listing
from tracker.model import Job
from tracker.store.list_statement import filters_of
from tracker.store.tables import PUBLIC_COLUMNS, async_status, async_status_stream

STREAM_LOCK = 1953653099  # pg_advisory_xact_lock's key in merge.sql and migration 0015 ('trak')


@dataclasses.dataclass(frozen=True)
class Changes:
    """What changed after a cursor: the rows, each with its cursor, in cursor order (at most the
    number asked for); or ``reset``, when the cursor cannot be resumed. ``position``: the cursor to
    go on from (the last row's, or the stream's position when no row is given)."""

    rows: tuple[tuple[int, Job], ...]
    position: int
    reset: bool = False


def position(conn: sa.Connection) -> int:
    """The stream's position now: every change at or below it is committed and visible, none
    above it is yet."""
    latest = sa.select(sa.func.coalesce(sa.func.max(async_status.c.change_seq), 0)).scalar_subquery()
    statement = sa.select(sa.func.max(latest, async_status_stream.c.reset_before))
    if conn.dialect.name == "postgresql":
        statement = sa.select(sa.func.greatest(latest, async_status_stream.c.reset_before))
    return int(conn.execute(statement).scalar_one())


def changed_since(conn: sa.Connection, after: int, query: listing.JobQuery, most: int) -> Changes:
    """The rows matching ``query``'s filters (not its order or page) changed after cursor ``after``,
    as they are now, at most ``most`` of them; or a reset, when ``after`` is below the stream's
    ``reset_before`` or beyond its position (a cursor of another database)."""
    rows = conn.execute(_changed_statement(query), {"after": after, "most": most}).all()
    # Read after the rows: a deletion committed before they were read is seen here.
    reset_before = conn.execute(sa.select(async_status_stream.c.reset_before)).scalar_one()
    if after < reset_before:
        return Changes((), position(conn), reset=True)
    if not rows:
        now = position(conn)
        return Changes((), now, reset=True) if after > now else Changes((), after)
    changes = tuple((int(row[0]), Job(*row[1:])) for row in rows)
    return Changes(changes, changes[-1][0])


def _changed_statement(query: listing.JobQuery) -> sa.Select[Any]:
    return (
        sa.select(async_status.c.change_seq, *PUBLIC_COLUMNS)
        .where(async_status.c.change_seq > sa.bindparam("after", type_=sa.BigInteger), *filters_of(query))
        .order_by(async_status.c.change_seq)
        .limit(sa.bindparam("most", type_=sa.Integer))
    )
